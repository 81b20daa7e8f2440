//! Consent endpoints: `GET /oauth/start?mailbox=` (the link shown to humans), `GET /oauth/callback`,
//! `GET /v1/mailboxes/{address}/consent` and `POST /v1/mailboxes/{address}/refresh-token` (import).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, error};
use crate::auth::callback::{Callback, Completion, ConsentTarget};
use crate::auth::consent::{self, ConsentError};
use crate::auth::seal::Sealer;
use crate::auth::{AccessToken, DelegatedTokens, TokenSource};
use crate::domain::MailboxAddress;
use crate::graph::{Graph, MailboxGraph};
use crate::mailbox::MailboxCtx;

/// A delegated mailbox's context, tokens and the sealer.
struct Delegated {
    ctx: Arc<MailboxCtx>,
    tokens: Arc<DelegatedTokens>,
    sealer: Arc<Sealer>,
}

/// The mailbox's context and delegated tokens, or the error to answer.
fn delegated(s: &ApiState, address: &str) -> Result<Delegated, ApiError> {
    let mailbox =
        MailboxAddress::parse(address).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_address", e))?;
    let ctx = s.mailboxes.load().get(&mailbox).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_mailbox",
            format!("{mailbox} is not configured or disabled"),
        )
    })?;
    let TokenSource::Delegated(tokens) = &ctx.tokens else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_delegated",
            format!("{mailbox} uses app-only access; there is nothing to consent to"),
        ));
    };
    let sealer = s.sealer.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_store_key",
            "store.encryption_key is not configured",
        )
    })?;
    Ok(Delegated {
        tokens: tokens.clone(),
        ctx,
        sealer,
    })
}

/// `GET /v1/mailboxes/{address}/consent`: `{"url"}`, a fresh authorization URL. Asked for with
/// an API token, so it may say precisely what is wrong; its flow is not bound to a browser.
pub async fn url(State(s): State<ApiState>, Path(address): Path<String>) -> Response {
    let d = match delegated(&s, &address) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let started = consent::start(
        &d.sealer,
        &d.tokens,
        d.ctx.config.address.as_str(),
        &s.redirect_uri,
        false,
        true,
    );
    Json(json!({"url": started.url.to_string()})).into_response()
}

/// The cookie that binds a browser's consent flow to that browser.
const COOKIE: &str = "inboxd_consent";

/// The app a consent link for `mailbox` goes through, and whether it can complete: the
/// mailbox's own for a delegated mailbox; for any other name (unknown, app-only, not an
/// address) one of the delegated mailboxes' apps, in a flow that looks the same from outside
/// but never completes. `None` when no mailbox is delegated at all (the same for every name).
fn target(s: &ApiState, mailbox: &str) -> Option<(Arc<DelegatedTokens>, bool)> {
    let registry = s.mailboxes.load();
    if let Ok(address) = MailboxAddress::parse(mailbox)
        && let Some(ctx) = registry.get(&address)
        && let TokenSource::Delegated(tokens) = &ctx.tokens
    {
        return Some((tokens.clone(), true));
    }
    registry
        .iter()
        .filter_map(|(address, ctx)| match &ctx.tokens {
            TokenSource::Delegated(tokens) => Some((address, tokens)),
            TokenSource::App(_) => None,
        })
        .min_by(|a, b| a.0.as_str().cmp(b.0.as_str()))
        .map(|(_, tokens)| (tokens.clone(), false))
}

/// `GET /oauth/start?mailbox=`: redirects to a fresh authorization URL and sets the cookie that
/// binds the flow to this browser. Writes nothing, is rate limited per client address, and
/// answers alike whether the mailbox is delegated, app-only or unknown.
pub async fn start(State(s): State<ApiState>, parts: Parts, Query(q): Query<HashMap<String, String>>) -> Response {
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if !s.consent_limiter.allow(client) {
        let mut resp = page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many consent requests from your address; try again in a minute.",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
        return resp;
    }
    let Some(mailbox) = q
        .get("mailbox")
        .map(|m| m.trim())
        .filter(|m| !m.is_empty() && m.len() <= 320)
    else {
        return page(StatusCode::BAD_REQUEST, "The link is missing its mailbox.");
    };
    let (Some(sealer), Some((tokens, consentable))) = (s.sealer.clone(), target(&s, mailbox)) else {
        return page(StatusCode::NOT_FOUND, "Consent is not available on this server.");
    };
    let mailbox = MailboxAddress::parse(mailbox)
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|_| mailbox.to_string());
    let started = consent::start(&sealer, &tokens, &mailbox, &s.redirect_uri, true, consentable);
    let secure = if s.redirect_uri.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/oauth; HttpOnly; SameSite=Lax; Max-Age=1800{secure}",
        started.cookie.unwrap_or_default()
    );
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, started.url.to_string()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// The consent cookie the browser presented, if any.
fn presented_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn page(status: StatusCode, message: &str) -> Response {
    let escaped = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    (
        status,
        Html(format!(
            "<!doctype html><html><head><title>inboxd consent</title></head><body><p>{escaped}</p></body></html>"
        )),
    )
        .into_response()
}

/// `GET /oauth/callback`: completes the consent, stores the refresh token, resumes the mailbox.
pub async fn callback(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(sealer) = s.sealer.clone() else {
        return page(
            StatusCode::CONFLICT,
            "store.encryption_key is not configured; delegated mailboxes are disabled.",
        );
    };
    let Some(state) = q.get("state") else {
        return page(StatusCode::BAD_REQUEST, "The callback has no state.");
    };
    let cookie = presented_cookie(&headers);
    let callback = Callback {
        state,
        code: q.get("code").map(String::as_str),
        error: q.get("error").map(String::as_str),
        error_description: q.get("error_description").map(String::as_str),
        cookie: cookie.as_deref(),
    };
    let completion = Completion {
        sealer: &sealer,
        store: s.store.as_ref(),
        redirect_uri: &s.redirect_uri,
    };
    let result = completion
        .complete(&callback, |mailbox| {
            let ctx = s.mailboxes.load().get(mailbox).cloned()?;
            Some(Configured { ctx, graph: &s.graph })
        })
        .await;
    let mut resp = match result {
        Ok(mailbox) => {
            tracing::info!(mailbox = %mailbox, "Consent completed; the mailbox resumes.");
            page(
                StatusCode::OK,
                &format!(
                    "Consent recorded for {mailbox}. inboxd resumes it within seconds; you can close this window."
                ),
            )
        }
        Err(ConsentError::Store(e)) => {
            tracing::error!(error = %e, "The store failed while completing a consent.");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "inboxd could not record the consent right now; please try the link again later.",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "Consent callback refused.");
            page(StatusCode::BAD_REQUEST, &e.to_string())
        }
    };
    if cookie.is_some() {
        let clear = format!("{COOKIE}=; Path=/oauth; HttpOnly; SameSite=Lax; Max-Age=0");
        if let Ok(value) = header::HeaderValue::from_str(&clear) {
            resp.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    resp
}

/// A configured mailbox, as the consent flow sees it.
struct Configured<'a> {
    ctx: Arc<MailboxCtx>,
    graph: &'a Graph,
}

impl ConsentTarget for Configured<'_> {
    fn delegated(&self) -> Option<&DelegatedTokens> {
        match &self.ctx.tokens {
            TokenSource::Delegated(tokens) => Some(tokens),
            TokenSource::App(_) => None,
        }
    }

    async fn opens_with(&self, token: &AccessToken) -> bool {
        let graph = MailboxGraph::with_token(self.graph, &self.ctx.gate, token, self.ctx.config.address.as_str());
        graph.folder("inbox").await.is_ok()
    }

    fn resume(&self) {
        self.ctx.wake.notify_one();
    }
}

/// Body of the import endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// A refresh token obtained elsewhere (migration from another connector).
    refresh_token: String,
}

/// `POST /v1/mailboxes/{address}/refresh-token`: imports a refresh token and tries it at once.
pub async fn import(State(s): State<ApiState>, Path(address): Path<String>, body: axum::body::Bytes) -> Response {
    let Delegated { ctx, tokens, .. } = match delegated(&s, &address) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let import: Import = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}")),
    };
    // Tried before it is stored: a token the endpoint refuses never replaces a working one.
    let candidate = SecretString::from(import.refresh_token);
    let grant = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", candidate.expose_secret().to_string()),
        ("scope", crate::auth::DELEGATED_SCOPES.to_string()),
    ];
    let granted = match tokens.endpoint().request(grant, true).await {
        Ok(granted) => granted,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refresh_token_refused",
                format!(
                    "the token endpoint refused the imported token; nothing was stored: {}",
                    crate::mailbox::reason_for(&e)
                ),
            );
        }
    };
    // Delegated grants rotate the refresh token on use: the new one is the one to keep.
    let keep = granted.refresh_token.unwrap_or(candidate);
    let scopes = granted.scope.as_deref().unwrap_or(crate::auth::DELEGATED_SCOPES);
    if let Err(e) = tokens.save(&keep, scopes).await {
        return super::store_unavailable(&e);
    }
    tokens.reset().await;
    ctx.wake.notify_one();
    Json(json!({"mailbox": ctx.config.address.as_str(), "imported": true})).into_response()
}
