//! One access token per app registration, shared by all its mailboxes: read lock-free
//! (arc-swap), refreshed by one request at a time (single flight), ahead of expiry;
//! a failing token endpoint does not stop a still-valid cached token from being used.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::assertion::CertificateCredential;
use super::classify::{Verdict, classify_token_error};
use crate::config::{AppConfig, AppCredential};
use crate::domain::AppName;
use crate::metrics::Metrics;

/// Refresh this long before expiry at the latest (MSAL's rule), or half the lifetime for short tokens.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// After a failed refresh while the old token is still valid, wait this long before trying again.
const RETRY_FLOOR: Duration = Duration::from_secs(2);
/// ... doubling up to this.
const RETRY_CEILING: Duration = Duration::from_secs(60);

/// A bearer token and when to refresh it.
pub struct AccessToken {
    secret: SecretString,
    /// Not usable from here on.
    pub expires_at: Instant,
    /// Refresh from here on.
    pub refresh_at: Instant,
}

impl AccessToken {
    /// The bearer value (for the `Authorization` header only).
    pub fn bearer(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token request for app '{app}' failed: {reason}")]
pub struct TokenError {
    /// The app.
    pub app: String,
    /// What to do about it.
    pub verdict: Verdict,
    /// AADSTS code, when the endpoint gave one.
    pub aadsts: Option<u32>,
    /// OAuth `error`, when given.
    pub error: Option<String>,
    /// Human-readable reason (never contains secrets).
    pub reason: String,
}

/// The token endpoint's answer (success or error: both shapes in one).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// Seconds as Entra sends them: a number, or a string holding one.
fn seconds(v: &Option<serde_json::Value>) -> Option<u64> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Client-credentials tokens of one app registration.
pub struct AppTokens {
    name: AppName,
    client_id: String,
    token_url: Url,
    credential: Credential,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    current: ArcSwapOption<AccessToken>,
    /// Single flight: held while a token request is in flight; also guards the retry pacing.
    refresh: Mutex<Pacing>,
}

enum Credential {
    Secret(SecretString),
    Certificate(CertificateCredential),
}

#[derive(Default)]
struct Pacing {
    not_before: Option<Instant>,
    delay: Duration,
    /// The last failure, answered to every caller until `not_before` (one request per
    /// app per backoff step, however many mailboxes ask: Entra punishes loops, AADSTS50196).
    last_error: Option<TokenError>,
}

impl AppTokens {
    /// Builds the cache for an app; fails only on an unusable certificate.
    pub fn new(
        app: &AppConfig,
        authority: &Url,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<AppTokens, String> {
        let credential = match &app.credential {
            AppCredential::Secret(s) => Credential::Secret(s.clone()),
            AppCredential::Certificate(pem) => Credential::Certificate(
                CertificateCredential::from_pem(pem.expose_secret())
                    .map_err(|e| format!("apps '{}': {e}", app.name))?,
            ),
        };
        let token_url = authority
            .join(&format!("{}/oauth2/v2.0/token", app.tenant_id))
            .map_err(|e| format!("apps '{}': token URL: {e}", app.name))?;
        Ok(AppTokens {
            name: app.name.clone(),
            client_id: app.client_id.clone(),
            token_url,
            credential,
            http,
            metrics,
            current: ArcSwapOption::empty(),
            refresh: Mutex::new(Pacing::default()),
        })
    }

    /// The app's name.
    pub fn name(&self) -> &AppName {
        &self.name
    }

    /// A token valid now: the cached one, or a fresh one when it is due for refresh.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        if let Some(t) = self.current.load_full()
            && Instant::now() < t.refresh_at
        {
            return Ok(t);
        }
        let mut pacing = self.refresh.lock().await;
        let cached = self.current.load_full();
        let now = Instant::now();
        if let Some(t) = &cached {
            if now < t.refresh_at {
                return Ok(t.clone()); // someone else refreshed while we waited
            }
            if now < t.expires_at && pacing.not_before.is_some_and(|nb| now < nb) {
                return Ok(t.clone()); // endpoint failing: keep using the valid token
            }
        }
        if let (Some(not_before), Some(err)) = (pacing.not_before, &pacing.last_error)
            && now < not_before
        {
            return Err(err.clone());
        }
        match self.request().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.current.store(Some(fresh.clone()));
                *pacing = Pacing::default();
                Ok(fresh)
            }
            Err(err) => {
                pacing.delay = (pacing.delay * 2).clamp(RETRY_FLOOR, RETRY_CEILING);
                pacing.not_before = Some(Instant::now() + pacing.delay);
                pacing.last_error = Some(err.clone());
                match cached {
                    Some(t) if Instant::now() < t.expires_at && err.verdict == Verdict::Transient => {
                        tracing::warn!(app = %self.name, error = %err, "Token refresh failed; using the cached token until it expires.");
                        Ok(t)
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// Graph said the token is invalid: drop it (if it is still the cached one) so the next
    /// `token()` fetches a new one.
    pub fn invalidate(&self, stale: &Arc<AccessToken>) {
        self.current.rcu(|c| {
            if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, stale)) {
                None
            } else {
                c.clone()
            }
        });
    }

    /// One token request.
    async fn request(&self) -> Result<AccessToken, TokenError> {
        let scope = "https://graph.microsoft.com/.default";
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", scope.into()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.expose_secret().to_string())),
            Credential::Certificate(c) => {
                let assertion = c
                    .assertion(&self.client_id, self.token_url.as_str())
                    .map_err(|reason| self.fail(Verdict::CredentialInvalid, None, None, reason))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let started = Instant::now();
        let resp = self.http.post(self.token_url.clone()).form(&form).send().await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Err(self.fail(
                    Verdict::Transient,
                    None,
                    None,
                    format!("token endpoint unreachable: {}", describe(&e)),
                ));
            }
        };
        let status = resp.status().as_u16();
        let body: Option<TokenResponse> = resp.json().await.ok();
        let Some(body) = body else {
            let verdict = classify_token_error(Some(status), None, None, false);
            return Err(self.fail(
                verdict,
                None,
                None,
                format!("token endpoint answered {status} with an unreadable body"),
            ));
        };
        if (200..300).contains(&status)
            && let (Some(token), Some(expires_in)) = (body.access_token, seconds(&body.expires_in))
        {
            self.metrics.token_request(&self.name.0, "success");
            let lifetime = Duration::from_secs(expires_in);
            let margin = REFRESH_MARGIN.min(lifetime / 2);
            let mut refresh_after = lifetime - margin;
            if let Some(refresh_in) = seconds(&body.refresh_in) {
                refresh_after = refresh_after.min(Duration::from_secs(refresh_in));
            }
            // Measured from when the request left: the token may be older than its answer.
            return Ok(AccessToken {
                secret: SecretString::from(token),
                expires_at: started + lifetime,
                refresh_at: started + refresh_after,
            });
        }
        let aadsts = body.error_codes.first().copied();
        let verdict = classify_token_error(Some(status), body.error.as_deref(), aadsts, false);
        let first_line = body
            .error_description
            .as_deref()
            .and_then(|d| d.lines().next())
            .unwrap_or("no description")
            .to_string();
        Err(self.fail(verdict, aadsts, body.error, format!("{status} {first_line}")))
    }

    fn fail(&self, verdict: Verdict, aadsts: Option<u32>, error: Option<String>, reason: String) -> TokenError {
        let outcome = match verdict {
            Verdict::Transient => "transient",
            Verdict::CredentialInvalid => "credential_invalid",
            Verdict::NeedsReconsent => "needs_reconsent",
        };
        self.metrics.token_request(&self.name.0, outcome);
        TokenError {
            app: self.name.0.clone(),
            verdict,
            aadsts,
            error,
            reason,
        }
    }
}

/// A reqwest error's text without its URL (URLs can carry query secrets in other contexts).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body unreadable"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
