//! `POST /graph/notifications` and `POST /graph/lifecycle`: open (Graph sends no bearer
//! token), with their own body limit and rate limit. They answer the validation handshake,
//! check clientState in constant time, and only record a wake-up: the answer never waits for
//! Graph, the store or the sink, so it stays far under Graph's 3 seconds.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{Lifecycle, Notifications};

/// Largest notification body: Graph batches notifications without resource data, each well
/// under 1 KB.
const MAX_BODY: usize = 1024 * 1024;
/// Longest validation token echoed back.
const MAX_TOKEN: usize = 4096;

/// The notification routes, with their own state and body limit.
pub fn router(hub: Arc<Notifications>) -> Router {
    Router::new()
        .route("/graph/notifications", post(notification))
        .route("/graph/lifecycle", post(notification))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(hub)
}

/// A notification request as Graph posts it. Items are read one by one: an odd item counts
/// as unknown and does not make Graph drop (or retry) the genuine ones beside it.
#[derive(Deserialize)]
struct Batch {
    value: Vec<serde_json::Value>,
}

/// One notification: a change, or a lifecycle event. Fields Graph left out read as empty,
/// which matches no subscription.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Item {
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    client_state: String,
    #[serde(default)]
    lifecycle_event: Option<String>,
}

/// What one request carried.
#[derive(Default)]
struct Tally {
    accepted: u64,
    lifecycle: u64,
    unknown: u64,
    forged: u64,
}

async fn notification(
    State(hub): State<Arc<Notifications>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        if token.len() > MAX_TOKEN {
            hub.count("invalid", 1);
            return (StatusCode::BAD_REQUEST, "validation token too long").into_response();
        }
        hub.count("validation", 1);
        // The decoded token, as plain text, is the whole answer Graph checks.
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            token.clone(),
        )
            .into_response();
    }
    // Handshakes are not counted against the limit: they only echo, and subscribing many
    // mailboxes at start brings one per subscription at once.
    if !hub.admit() {
        hub.count("rate_limited", 1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "too many notification requests",
        )
            .into_response();
    }
    let Ok(Batch { value: items }) = serde_json::from_slice::<Batch>(&body) else {
        hub.count("invalid", 1);
        return (StatusCode::BAD_REQUEST, "expected {\"value\": [...]}").into_response();
    };
    let items: Vec<Item> = items
        .into_iter()
        .map(|v| Item::deserialize(v).unwrap_or_default())
        .collect();
    let tally = dispatch(&hub, &items);
    hub.count("accepted", tally.accepted);
    hub.count("lifecycle", tally.lifecycle);
    hub.count("unknown", tally.unknown);
    hub.count("forged", tally.forged);
    if tally.forged > 0 && tally.accepted + tally.lifecycle == 0 {
        return (StatusCode::FORBIDDEN, "clientState does not match").into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

/// Wakes the mailboxes of genuine notifications; a burst for one mailbox is one wake-up, since
/// the mailbox's `Notify` keeps at most one pending permit.
fn dispatch(hub: &Notifications, items: &[Item]) -> Tally {
    let mut tally = Tally::default();
    let routes = hub.routes.read().unwrap_or_else(|p| p.into_inner());
    for item in items {
        let id = item.subscription_id.as_str();
        let Some(route) = routes.get(id) else {
            tally.unknown += 1;
            continue;
        };
        let presented = item.client_state.as_bytes();
        let genuine =
            aws_lc_rs::constant_time::verify_slices_are_equal(route.client_state.expose_secret().as_bytes(), presented)
                .is_ok();
        let mailbox = &route.ctx.config.address;
        if !genuine {
            tally.forged += 1;
            tracing::warn!(mailbox = %mailbox, subscription = id, "Refused a change notification whose clientState does not match; someone other than Graph may be posting to the endpoint.");
            continue;
        }
        match item.lifecycle_event.as_deref() {
            None => {
                tally.accepted += 1;
                route.ctx.wake.notify_one();
            }
            Some(event) => {
                tally.lifecycle += 1;
                tracing::info!(mailbox = %mailbox, subscription = id, event, "Lifecycle notification received.");
                let message = match event {
                    "reauthorizationRequired" => Some(Lifecycle::Reauthorize(id.to_string())),
                    "subscriptionRemoved" => Some(Lifecycle::Removed(id.to_string())),
                    // `missed` and anything unknown: catch up with delta.
                    _ => None,
                };
                if let Some(m) = message {
                    // A full queue means the keeper is already busy with this mailbox.
                    let _ = route.events.try_send(m);
                }
                route.ctx.wake.notify_one();
            }
        }
    }
    tally
}
