//! Consent endpoints: `GET /oauth/start?mailbox=` (the link shown to humans), `GET /oauth/callback`,
//! `GET /v1/mailboxes/{address}/consent` and `POST /v1/mailboxes/{address}/refresh-token` (import).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, error};
use crate::auth::consent::{self, ConsentError};
use crate::auth::seal::Sealer;
use crate::auth::{DelegatedTokens, TokenSource};
use crate::domain::MailboxAddress;
use crate::graph::Call;
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

async fn fresh_url(s: &ApiState, address: &str) -> Result<String, ApiError> {
    let d = delegated(s, address)?;
    consent::start(
        s.store.as_ref(),
        &d.sealer,
        &d.tokens,
        &d.ctx.config.address,
        &s.redirect_uri,
    )
    .await
    .map(|u| u.to_string())
    .map_err(|e| {
        tracing::error!(error = %e, "The store failed while starting a consent.");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is not answering; try again later",
        )
    })
}

/// `GET /v1/mailboxes/{address}/consent`: `{"url"}`.
pub async fn url(State(s): State<ApiState>, Path(address): Path<String>) -> Response {
    match fresh_url(&s, &address).await {
        Ok(url) => Json(json!({"url": url})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /oauth/start?mailbox=`: redirects to a fresh authorization URL.
pub async fn start(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(mailbox) = q.get("mailbox") else {
        return page(StatusCode::BAD_REQUEST, "The link is missing its mailbox.");
    };
    match fresh_url(&s, mailbox).await {
        Ok(url) => (StatusCode::FOUND, [(header::LOCATION, url)]).into_response(),
        Err(e) => e.into_response(),
    }
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
pub async fn callback(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(sealer) = s.sealer.clone() else {
        return page(
            StatusCode::CONFLICT,
            "store.encryption_key is not configured; delegated mailboxes are disabled.",
        );
    };
    let Some(state) = q.get("state") else {
        return page(StatusCode::BAD_REQUEST, "The callback has no state.");
    };
    let result = async {
        let (mailbox, verifier) = consent::take_state(s.store.as_ref(), &sealer, state).await?;
        if let Some(err) = q.get("error") {
            let description = q.get("error_description").map(String::as_str).unwrap_or("");
            return Err(ConsentError::Refused(format!("{err}: {description}")));
        }
        let code = q
            .get("code")
            .ok_or_else(|| ConsentError::Refused("no code in the callback".into()))?;
        let ctx = s
            .mailboxes
            .load()
            .get(&mailbox)
            .cloned()
            .ok_or(ConsentError::BadState)?;
        let TokenSource::Delegated(tokens) = &ctx.tokens else {
            return Err(ConsentError::BadState);
        };
        let granted = consent::redeem(tokens, code, &verifier, &s.redirect_uri).await?;
        let probe = Call::get(
            "consent_check",
            format!(
                "users/{}/mailFolders/inbox?$select=id",
                crate::graph::segment(mailbox.as_str())
            ),
        );
        if s.graph.probe(&ctx.gate, &granted.access, &probe).await.is_err() {
            return Err(ConsentError::WrongUser(mailbox.to_string()));
        }
        let refresh = granted.refresh_token.clone().ok_or(ConsentError::NoRefreshToken)?;
        tokens
            .save(
                &refresh,
                granted.scope.as_deref().unwrap_or(crate::auth::DELEGATED_SCOPES),
            )
            .await?;
        tokens.reset().await;
        ctx.wake.notify_one();
        Ok(mailbox)
    }
    .await;
    match result {
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
    if let Err(e) = tokens
        .save(&SecretString::from(import.refresh_token), crate::auth::DELEGATED_SCOPES)
        .await
    {
        return super::store_unavailable(&e);
    }
    tokens.reset().await;
    let outcome = tokens.token().await;
    ctx.wake.notify_one();
    match outcome {
        Ok(_) => Json(json!({"mailbox": ctx.config.address.as_str(), "imported": true})).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refresh_token_refused",
            format!(
                "the imported token was stored but the token endpoint refused it: {}",
                crate::mailbox::reason_for(&e)
            ),
        ),
    }
}
