//! The control API of subscriptions: list them, change their knobs, make one vanish, send a
//! lifecycle event on demand, read the delivery log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SubscriptionSettings;
use crate::emulator::Shared;

/// `/_emulator/subscriptions…`.
pub(crate) fn control_routes() -> Router<Shared> {
    Router::new()
        .route("/_emulator/subscriptions", get(list))
        .route(
            "/_emulator/subscriptions/settings",
            get(get_settings).post(set_settings),
        )
        .route("/_emulator/subscriptions/{id}", delete(vanish))
        .route("/_emulator/subscriptions/{id}/lifecycle", post(lifecycle))
        .route("/_emulator/notifications", get(deliveries))
}

fn control_error(status: StatusCode, message: impl Into<String>) -> Response {
    crate::emulator::control::error(status, message)
}

async fn list(State(emu): State<Shared>) -> Response {
    let world = emu.world();
    let now = emu.clock.now();
    let items: Vec<Value> = world
        .subscriptions
        .items
        .values()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            v["expired"] = json!(s.expiration <= now);
            v
        })
        .collect();
    Json(json!({"subscriptions": items})).into_response()
}

async fn get_settings(State(emu): State<Shared>) -> Response {
    Json(emu.world().subscriptions.settings.clone()).into_response()
}

async fn set_settings(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")),
    };
    let mut world = emu.world();
    let mut current = serde_json::to_value(&world.subscriptions.settings).unwrap_or(Value::Null);
    let (Some(target), Some(changes)) = (current.as_object_mut(), patch.as_object()) else {
        return control_error(StatusCode::BAD_REQUEST, "settings must be a JSON object");
    };
    for (k, v) in changes {
        if !target.contains_key(k) {
            return control_error(StatusCode::BAD_REQUEST, format!("unknown setting `{k}`"));
        }
        target.insert(k.clone(), v.clone());
    }
    match serde_json::from_value::<SubscriptionSettings>(current) {
        Ok(s) if s.max_minutes > 0 && s.min_minutes >= 0 => {
            world.subscriptions.settings = s.clone();
            Json(s).into_response()
        }
        Ok(_) => control_error(
            StatusCode::BAD_REQUEST,
            "max_minutes must be positive, min_minutes not negative",
        ),
        Err(e) => control_error(StatusCode::BAD_REQUEST, format!("invalid settings: {e}")),
    }
}

/// The subscription disappears without any lifecycle event.
async fn vanish(State(emu): State<Shared>, Path(id): Path<String>) -> Response {
    match emu.world().subscriptions.items.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => control_error(StatusCode::NOT_FOUND, format!("no subscription '{id}'")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleRequest {
    event: String,
}

/// `{"event": "reauthorizationRequired" | "subscriptionRemoved" | "missed"}`.
async fn lifecycle(State(emu): State<Shared>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let request: LifecycleRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")),
    };
    if !matches!(
        request.event.as_str(),
        "reauthorizationRequired" | "subscriptionRemoved" | "missed"
    ) {
        return control_error(
            StatusCode::BAD_REQUEST,
            "event must be reauthorizationRequired, subscriptionRemoved or missed",
        );
    }
    match emu.world().subscriptions.lifecycle(&id, &request.event) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"queued": request.event}))).into_response(),
        Err(e) if e.starts_with("no subscription") => control_error(StatusCode::NOT_FOUND, e),
        Err(e) => control_error(StatusCode::CONFLICT, e),
    }
}

async fn deliveries(State(emu): State<Shared>) -> Response {
    Json(json!({"notifications": emu.world().subscriptions.log})).into_response()
}
