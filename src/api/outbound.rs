//! `POST …/reply`, `…/forward`, `…/send` and `GET /v1/outbound/{id}`: stored before 202,
//! idempotent per `Idempotency-Key`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ApiState, error};
use crate::domain::MailboxAddress;
use crate::outbound::{ApiRequest, Kind};
use crate::store::OutboundRecord;

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// `POST /v1/mailboxes/{address}/messages/{graph_id}/reply`.
pub async fn reply(
    s: State<ApiState>,
    Path((address, id)): Path<(String, String)>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    enqueue(s, address, Kind::Reply, Some(id), q, h, body).await
}

/// `POST /v1/mailboxes/{address}/messages/{graph_id}/forward`.
pub async fn forward(
    s: State<ApiState>,
    Path((address, id)): Path<(String, String)>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    enqueue(s, address, Kind::Forward, Some(id), q, h, body).await
}

/// `POST /v1/mailboxes/{address}/send`.
pub async fn send(
    s: State<ApiState>,
    Path(address): Path<String>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    enqueue(s, address, Kind::Send, None, q, h, body).await
}

async fn enqueue(
    State(s): State<ApiState>,
    address: String,
    kind: Kind,
    original: Option<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(mailbox) = MailboxAddress::parse(&address) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            format!("'{address}' is not an email address"),
        );
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str().map(str::trim)) {
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_missing",
                "the Idempotency-Key header is required",
            );
        }
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_string(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_invalid",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible characters"),
            );
        }
    };
    let parsed: ApiRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}")),
    };
    drop(body);
    let request = match parsed.validate(kind, original) {
        Ok(r) => r,
        Err(invalid) => {
            let status = StatusCode::from_u16(invalid.status).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, invalid.code, invalid.message);
        }
    };
    let hash = request.hash(&mailbox);
    // A key already used answers first, whatever the mailbox's state now (flagged, removed
    // from the configuration, restarting): the same request gets the same id and status.
    match s.outbox.store().outbound_by_key(&mailbox, &key).await {
        Ok(Some(stored)) => return accepted_or_conflict(&stored, &hash),
        Ok(None) => {}
        Err(e) => return store_unavailable(&e),
    }
    let Some(view) = super::view(&s, &mailbox).await else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_mailbox",
            format!("{mailbox} is not configured"),
        );
    };
    if view.state.is_flagged() && query.get("queue").map(String::as_str) != Some("true") {
        return error(
            StatusCode::CONFLICT,
            "mailbox_flagged",
            format!(
                "{mailbox} is {}: {}; add ?queue=true to queue the message until it is fixed",
                view.state.as_str(),
                view.reason.unwrap_or_default()
            ),
        );
    }
    let now = OffsetDateTime::now_utc();
    let record = OutboundRecord::queued(
        &mailbox,
        key,
        hash.clone(),
        serde_json::to_string(&request).unwrap_or_default(),
        request.kind.as_str(),
        now,
    );
    drop(request);
    let stored = match s.outbox.store().enqueue_outbound(&record).await {
        Ok(stored) => stored,
        Err(e) => return store_unavailable(&e),
    };
    if stored.id == record.id {
        tracing::info!(mailbox = %mailbox, outbound_id = %stored.id, kind = kind.as_str(), "Outbound message queued.");
        s.outbox.wake();
    }
    accepted_or_conflict(&stored, &hash)
}

/// 202 with the stored id and status, or 422 when the key was used for another request.
fn accepted_or_conflict(stored: &OutboundRecord, hash: &str) -> Response {
    if stored.request_hash != hash {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request to this mailbox",
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": stored.id, "status": stored.status.as_str()})),
    )
        .into_response()
}

/// 503 with a short reason; the store's own words stay in the log.
fn store_unavailable(e: &crate::store::StoreError) -> Response {
    super::store_unavailable(e)
}

/// `GET /v1/outbound/{id}`.
pub async fn status(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.outbox.store().outbound(&id).await {
        Ok(Some(r)) => Json(json!({
            "id": r.id,
            "mailbox": r.mailbox.as_str(),
            "status": r.status.as_str(),
            "error": r.error,
            "attempts": r.attempts,
            "created_at": r.created_at.format(&Rfc3339).unwrap_or_default(),
            "updated_at": r.updated_at.format(&Rfc3339).unwrap_or_default(),
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_outbound",
            format!("no outbound message {id}"),
        ),
        Err(e) => store_unavailable(&e),
    }
}
