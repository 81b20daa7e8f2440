//! The token endpoint of one app registration: client authentication (secret or
//! certificate assertion), the request, and the answer read into a token or a classified error.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::assertion::CertificateCredential;
use super::classify::{Verdict, classify_token_error};
use crate::config::{AppConfig, AppCredential};
use crate::domain::AppName;
use crate::metrics::Metrics;

/// Refresh this long before expiry at the latest (MSAL's rule), or half the lifetime for short tokens.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest token lifetime believed (Entra issues 60–90 minutes; 24 h is far beyond any).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A bearer token and when to refresh it.
pub struct AccessToken {
    secret: SecretString,
    /// Not usable from here on.
    pub expires_at: Instant,
    /// Refresh from here on.
    pub refresh_at: Instant,
}

impl AccessToken {
    /// A token with its lifetime marks (what a grant gives; tests build them directly).
    pub fn new(secret: SecretString, expires_at: Instant, refresh_at: Instant) -> AccessToken {
        AccessToken {
            secret,
            expires_at,
            refresh_at,
        }
    }

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
    /// Entra's trace id (for a support case).
    pub trace_id: Option<String>,
    /// Entra's correlation id.
    pub correlation_id: Option<String>,
    /// Human-readable reason (never contains secrets).
    pub reason: String,
}

/// What a successful grant gave.
pub struct Granted {
    /// The access token.
    pub access: AccessToken,
    /// A new refresh token (delegated grants rotate it on every use).
    pub refresh_token: Option<SecretString>,
    /// Scopes granted.
    pub scope: Option<String>,
}

/// The token endpoint's answer (success or error: both shapes in one).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u32>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// Seconds as Entra sends them: a number, or a string holding one.
/// A token's lifetime and when to refresh it, from the endpoint's `expires_in` and optional
/// `refresh_in` (seconds). Capped: a huge `expires_in` must not overflow the clock or keep a
/// token for ever; the refresh comes before expiry, by a margin of up to half the lifetime.
fn lifetimes(expires_in: u64, refresh_in: Option<u64>) -> (Duration, Duration) {
    let lifetime = Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME);
    let mut refresh_after = lifetime - REFRESH_MARGIN.min(lifetime / 2);
    if let Some(refresh_in) = refresh_in {
        refresh_after = refresh_after.min(Duration::from_secs(refresh_in));
    }
    (lifetime, refresh_after)
}

fn seconds(v: &Option<serde_json::Value>) -> Option<u64> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

enum Credential {
    Secret(SecretString),
    Certificate(CertificateCredential),
}

/// One app registration's view of the identity platform.
pub struct TokenEndpoint {
    name: AppName,
    client_id: String,
    tenant: String,
    authority: Url,
    token_url: Url,
    credential: Credential,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl TokenEndpoint {
    /// Builds it; fails only on an unusable certificate or URL.
    pub fn new(
        app: &AppConfig,
        authority: &Url,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<TokenEndpoint, String> {
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
        Ok(TokenEndpoint {
            name: app.name.clone(),
            client_id: app.client_id.clone(),
            tenant: app.tenant_id.clone(),
            authority: authority.clone(),
            token_url,
            credential,
            http,
            metrics,
        })
    }

    /// The app's name.
    pub fn app(&self) -> &AppName {
        &self.name
    }

    /// The application (client) id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The certificate's notAfter, for a certificate credential.
    pub fn certificate_not_after(&self) -> Option<time::OffsetDateTime> {
        match &self.credential {
            Credential::Certificate(c) => c.not_after,
            Credential::Secret(_) => None,
        }
    }

    /// `{authority}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self) -> Url {
        self.authority
            .join(&format!("{}/oauth2/v2.0/authorize", self.tenant))
            .unwrap_or_else(|_| self.authority.clone())
    }

    /// One grant request (`grant` holds grant_type and its parameters); client
    /// authentication is added here. `delegated` decides how dead grants are classified.
    pub async fn request(&self, grant: Vec<(&'static str, String)>, delegated: bool) -> Result<Granted, TokenError> {
        let mut form = grant;
        form.push(("client_id", self.client_id.clone()));
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.expose_secret().to_string())),
            Credential::Certificate(c) => {
                let assertion = c
                    .assertion(&self.client_id, self.token_url.as_str())
                    .map_err(|reason| self.fail(Verdict::CredentialInvalid, None, reason))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let started = Instant::now();
        let resp = match self.http.post(self.token_url.clone()).form(&form).send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(self.fail(
                    Verdict::Transient,
                    None,
                    format!("token endpoint unreachable: {}", describe(&e)),
                ));
            }
        };
        let status = resp.status().as_u16();
        let Some(body) = resp.json::<TokenResponse>().await.ok() else {
            let verdict = classify_token_error(Some(status), None, None, delegated);
            return Err(self.fail(
                verdict,
                None,
                format!("token endpoint answered {status} with an unreadable body"),
            ));
        };
        if (200..300).contains(&status)
            && let (Some(token), Some(expires_in)) = (body.access_token, seconds(&body.expires_in))
        {
            self.metrics.token_request(&self.name.0, "success");
            let (lifetime, refresh_after) = lifetimes(expires_in, seconds(&body.refresh_in));
            // Measured from when the request left: the token may be older than its answer.
            let access = AccessToken {
                secret: SecretString::from(token),
                expires_at: started + lifetime,
                refresh_at: started + refresh_after,
            };
            return Ok(Granted {
                access,
                refresh_token: body.refresh_token.map(SecretString::from),
                scope: body.scope,
            });
        }
        let aadsts = body.error_codes.first().copied();
        let verdict = classify_token_error(Some(status), body.error.as_deref(), aadsts, delegated);
        let first_line = body
            .error_description
            .as_deref()
            .and_then(|d| d.lines().next())
            .unwrap_or("no description")
            .to_string();
        let mut err = self.fail(verdict, aadsts, format!("{status} {first_line}"));
        err.error = body.error;
        err.trace_id = body.trace_id;
        err.correlation_id = body.correlation_id;
        Err(err)
    }

    fn fail(&self, verdict: Verdict, aadsts: Option<u32>, reason: String) -> TokenError {
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
            error: None,
            trace_id: None,
            correlation_id: None,
            reason,
        }
    }
}

/// A reqwest error's text without its URL.
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

#[cfg(test)]
mod lifetime_tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_expires_in_gives_a_bounded_lifetime_refreshed_before_expiry(
            expires_in in proptest::num::u64::ANY,
            refresh_in in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let (lifetime, refresh_after) = lifetimes(expires_in, refresh_in);
            proptest::prop_assert!(lifetime <= MAX_TOKEN_LIFETIME);
            proptest::prop_assert!(refresh_after <= lifetime);
            // Adding them to the clock cannot overflow.
            let _ = tokio::time::Instant::now() + lifetime;
        }
    }
}
