//! Replaying quarantined messages: the API only records the request and wakes the mailbox;
//! the mailbox task fetches the message again and delivers it with its original `dedup_key`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiState, error};
use crate::domain::MailboxAddress;

/// `POST /v1/quarantine/{id}/replay`.
pub async fn one(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.store.request_replay(&id).await {
        Ok(Some(entry)) => {
            wake(&s, &entry.mailbox);
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": entry.id, "mailbox": entry.mailbox.as_str(), "graph_id": entry.graph_id,
                    "status": "replay_requested",
                })),
            )
                .into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_quarantine_entry",
            format!("no quarantined message with id '{id}'"),
        ),
        Err(e) => store_unavailable(e),
    }
}

/// `POST /v1/mailboxes/{address}/quarantine/replay`: every quarantined message of the mailbox.
pub async fn mailbox(State(s): State<ApiState>, Path(address): Path<String>) -> Response {
    let Ok(address) = MailboxAddress::parse(&address) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            format!("'{address}' is not an email address"),
        );
    };
    if super::view(&s, &address).await.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_mailbox",
            format!("{address} is not configured"),
        );
    }
    match s.store.request_replays(&address).await {
        Ok(requested) => {
            wake(&s, &address);
            (
                StatusCode::ACCEPTED,
                Json(json!({"mailbox": address.as_str(), "requested": requested})),
            )
                .into_response()
        }
        Err(e) => store_unavailable(e),
    }
}

/// The mailbox acts on the request now rather than after its poll interval.
pub(super) fn wake(s: &ApiState, mailbox: &MailboxAddress) {
    if let Some(ctx) = s.mailboxes.load().get(mailbox) {
        ctx.replay_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        ctx.wake.notify_one();
    }
}

/// The store's own words stay in the log; the client learns only that it failed.
fn store_unavailable(e: crate::store::StoreError) -> Response {
    super::store_unavailable(&e)
}
