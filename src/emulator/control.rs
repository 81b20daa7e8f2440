//! The control API under `/_emulator/`: tests and users set up and inspect the world.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::FaultRule;
use super::model::{RefreshGrant, Secret};
use super::seed::{self, AppSpec, MailboxSpec, MessageSpec};
use super::util::{b64, graph_time, key, log_time, opaque, string_list};
use super::{Shared, load};

/// Routes under `/_emulator`.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/_emulator/apps", post(add_app))
        .route("/_emulator/apps/{client_id}/secret", post(secret))
        .route("/_emulator/apps/{client_id}/roles", post(roles))
        .route("/_emulator/mailboxes", post(add_mailbox))
        .route("/_emulator/mailboxes/{address}/messages", post(deliver))
        .route("/_emulator/mailboxes/{address}/messages/{id}", patch(update_message))
        .route(
            "/_emulator/mailboxes/{address}/folders/{folder}/messages",
            get(folder_messages),
        )
        .route("/_emulator/mailboxes/{address}/access", post(access))
        .route("/_emulator/mailboxes/{address}/expire-delta", post(expire_delta))
        .route("/_emulator/refresh-tokens", post(refresh_token))
        .route("/_emulator/revoke", post(revoke))
        .route(
            "/_emulator/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/_emulator/requests", get(requests))
        .route("/_emulator/settings", get(get_settings).post(set_settings))
        .route("/_emulator/clock", post(clock))
        .route("/_emulator/load", post(load_generator))
        .route("/_emulator/reset", post(reset))
}

/// A control-API error: `{"error":{"code","message"}}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        _ => "invalid_request",
    };
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// Parses a JSON body into `T`, naming the problem on failure.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

async fn add_app(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: AppSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let client_id = key(&spec.client_id);
    match seed::register_app(&mut emu.world(), spec) {
        Ok(()) => (StatusCode::CREATED, Json(json!({"client_id": client_id}))).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretChange {
    #[serde(default)]
    expired: Option<bool>,
    #[serde(default)]
    rotate_to: Option<String>,
}

async fn secret(State(emu): State<Shared>, Path(client_id): Path<String>, body: axum::body::Bytes) -> Response {
    let change: SecretChange = match parse(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut world = emu.world();
    let Some(app) = world.apps.get_mut(&key(&client_id)) else {
        return error(StatusCode::NOT_FOUND, format!("no app with client_id '{client_id}'"));
    };
    if let Some(expired) = change.expired {
        app.secrets.iter_mut().for_each(|s| s.expired = expired);
    }
    if let Some(new) = change.rotate_to {
        app.secrets = vec![Secret {
            value: new,
            expired: false,
        }];
    }
    Json(json!({"client_id": app.client_id, "secrets": app.secrets.len()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesChange {
    #[serde(deserialize_with = "string_list")]
    roles: Vec<String>,
}

/// An administrator grants or removes application permissions: tokens issued from now on
/// carry the new `roles`; tokens already issued keep theirs until they expire (as in Entra).
async fn roles(State(emu): State<Shared>, Path(client_id): Path<String>, body: axum::body::Bytes) -> Response {
    let change: RolesChange = match parse(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut world = emu.world();
    let Some(app) = world.apps.get_mut(&key(&client_id)) else {
        return error(StatusCode::NOT_FOUND, format!("no app with client_id '{client_id}'"));
    };
    app.roles = change.roles;
    Json(json!({"client_id": app.client_id, "roles": app.roles})).into_response()
}

async fn add_mailbox(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: MailboxSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match seed::create_mailbox(&mut emu.world(), &spec) {
        Ok((id, address)) => (StatusCode::CREATED, Json(json!({"id": id, "address": address}))).into_response(),
        Err(e) if e.contains("already exists") => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn deliver(State(emu): State<Shared>, Path(address): Path<String>, body: axum::body::Bytes) -> Response {
    let spec: MessageSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = emu.clock.now();
    let mut world = emu.world();
    if !world.mailboxes.contains_key(&key(&address)) {
        return error(StatusCode::NOT_FOUND, format!("no mailbox '{address}'"));
    }
    match seed::deliver(&mut world, &address, spec, now) {
        Ok(m) => (
            StatusCode::CREATED,
            Json(json!({"id": m.id, "immutable_id": m.immutable_id, "internet_message_id": m.internet_message_id, "conversation_id": m.conversation_id})),
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `PATCH /_emulator/mailboxes/{address}/messages/{id}`: a change made elsewhere (another
/// client, a rule, the user in Outlook); delta sees it like any other update.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageChange {
    #[serde(default)]
    is_read: Option<bool>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    body: Option<seed::BodySpec>,
    #[serde(default, deserialize_with = "optional_string_list")]
    categories: Option<Vec<String>>,
    #[serde(default)]
    importance: Option<String>,
}

fn optional_string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_list(d).map(Some)
}

async fn update_message(
    State(emu): State<Shared>,
    Path((address, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let change: MessageChange = match parse(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = emu.clock.now();
    let mut world = emu.world();
    let address = key(&address);
    if !world.mailboxes.contains_key(&address) {
        return error(StatusCode::NOT_FOUND, format!("no mailbox '{address}'"));
    }
    let Some(immutable) = world.find_message(&address, &id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("mailbox '{address}' has no message '{id}'"),
        );
    };
    let body_type = match change
        .body
        .as_ref()
        .map(|b| super::model::BodyType::parse(&b.content_type))
    {
        Some(None) => return error(StatusCode::BAD_REQUEST, "body.content_type must be text or html"),
        Some(Some(t)) => Some(t),
        None => None,
    };
    let mut changed: Vec<&'static str> = Vec::new();
    let message = world
        .mailboxes
        .get_mut(&address)
        .and_then(|m| m.messages.get_mut(&immutable))
        .expect("found above");
    if let Some(read) = change.is_read {
        message.is_read = read;
        changed.push("isRead");
    }
    if let Some(subject) = change.subject {
        message.subject = subject;
        changed.push("subject");
    }
    if let (Some(body), Some(kind)) = (change.body, body_type) {
        message.body_type = kind;
        message.body = body.content;
        changed.extend(["body", "bodyPreview", "uniqueBody"]);
    }
    if let Some(categories) = change.categories {
        message.categories = categories;
        changed.push("categories");
    }
    if let Some(importance) = change.importance {
        message.importance = importance.to_ascii_lowercase();
        changed.push("importance");
    }
    world.touch(&address, &immutable, now, &changed);
    let m = &world.mailboxes[&address].messages[&immutable];
    Json(json!({"id": m.id, "immutable_id": m.immutable_id, "changed": changed})).into_response()
}

async fn folder_messages(State(emu): State<Shared>, Path((address, folder)): Path<(String, String)>) -> Response {
    let world = emu.world();
    let Some(mailbox) = world.mailboxes.get(&key(&address)) else {
        return error(StatusCode::NOT_FOUND, format!("no mailbox '{address}'"));
    };
    let Some(folder_id) = mailbox.folder_id(&folder) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("mailbox '{address}' has no folder '{folder}'"),
        );
    };
    let mut messages: Vec<_> = mailbox.messages.values().filter(|m| m.folder_id == folder_id).collect();
    messages.sort_by_key(|m| m.entered_seq);
    let recipients = |list: &[super::model::Recipient]| -> Value {
        list.iter()
            .map(|r| json!({"name": r.name, "address": r.address}))
            .collect()
    };
    let out: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "immutable_id": m.immutable_id,
                "subject": m.subject,
                "from": m.from.as_ref().map(|r| json!({"name": r.name, "address": r.address})),
                "to": recipients(&m.to),
                "cc": recipients(&m.cc),
                "bcc": recipients(&m.bcc),
                "is_read": m.is_read,
                "is_draft": m.is_draft,
                "internet_message_id": m.internet_message_id,
                "in_reply_to": m.in_reply_to,
                "references": m.references,
                "conversation_id": m.conversation_id,
                "received_at": graph_time(m.received),
                "body": {"content_type": m.body_type.as_str(), "content": m.body},
                "attachments": m.attachments.iter().map(|a| json!({
                    "name": a.name, "content_type": a.content_type, "size": a.bytes.len(), "is_inline": a.is_inline,
                    "content_id": a.content_id, "content_base64": b64(&a.bytes),
                })).collect::<Vec<_>>(),
                "extended_properties": m.extended.iter().map(|(id, v)| json!({"id": id, "value": v})).collect::<Vec<_>>(),
                "headers": m.extra_headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(Value::Array(out)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessChange {
    deny: bool,
    /// `"policy"`: an application access policy, answered with the documented text;
    /// `"rbac"` (default): the text tenants with RBAC for Applications send.
    #[serde(default)]
    via: Option<String>,
}

async fn access(State(emu): State<Shared>, Path(address): Path<String>, body: axum::body::Bytes) -> Response {
    let change: AccessChange = match parse(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut world = emu.world();
    let Some(mailbox) = world.mailboxes.get_mut(&key(&address)) else {
        return error(StatusCode::NOT_FOUND, format!("no mailbox '{address}'"));
    };
    let by_policy = match change.via.as_deref() {
        None | Some("rbac") => false,
        Some("policy") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("via must be \"policy\" or \"rbac\", not {other:?}"),
            );
        }
    };
    mailbox.denied = change.deny;
    mailbox.denied_by_policy = change.deny && by_policy;
    Json(json!({"address": mailbox.address, "denied": mailbox.denied})).into_response()
}

async fn expire_delta(State(emu): State<Shared>, Path(address): Path<String>) -> Response {
    let mut world = emu.world();
    let Some(mailbox) = world.mailboxes.get_mut(&key(&address)) else {
        return error(StatusCode::NOT_FOUND, format!("no mailbox '{address}'"));
    };
    let expired = mailbox.delta_links.len();
    mailbox.delta_links.clear();
    Json(json!({"address": mailbox.address, "expired_links": expired})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshTokenSpec {
    tenant_id: String,
    client_id: String,
    address: String,
    /// A list, or space-separated as OAuth writes scopes.
    #[serde(deserialize_with = "string_list")]
    scopes: Vec<String>,
}

async fn refresh_token(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: RefreshTokenSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = emu.clock.now();
    let mut world = emu.world();
    let Some(tenant_id) = world.resolve_tenant(&spec.tenant_id) else {
        return error(StatusCode::NOT_FOUND, format!("no tenant '{}'", spec.tenant_id));
    };
    if !world.apps.contains_key(&key(&spec.client_id)) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no app with client_id '{}'", spec.client_id),
        );
    }
    if world
        .mailboxes
        .get(&key(&spec.address))
        .is_none_or(|m| m.tenant_id != tenant_id)
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no mailbox '{}' in tenant '{}'", spec.address, spec.tenant_id),
        );
    }
    let token = format!("1.A{}", opaque(96));
    world.refresh_tokens.insert(
        token.clone(),
        RefreshGrant {
            tenant_id,
            client_id: key(&spec.client_id),
            address: key(&spec.address),
            scopes: super::identity::normalize_scopes(&spec.scopes.join(" ")),
            failure: None,
            last_used: now,
        },
    );
    Json(json!({"refresh_token": token})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeSpec {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    aadsts: u32,
}

async fn revoke(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: RevokeSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if spec.address.is_none() && spec.client_id.is_none() {
        return error(StatusCode::BAD_REQUEST, "revoke needs 'address', 'client_id' or both");
    }
    let mut world = emu.world();
    let mut count = 0;
    for grant in world.refresh_tokens.values_mut() {
        let address_ok = spec.address.as_ref().is_none_or(|a| key(a) == grant.address);
        let client_ok = spec.client_id.as_ref().is_none_or(|c| key(c) == grant.client_id);
        if address_ok && client_ok {
            grant.failure = Some(spec.aadsts);
            count += 1;
        }
    }
    Json(json!({"revoked": count, "aadsts": spec.aadsts})).into_response()
}

async fn add_fault(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let rule: FaultRule = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match emu.faults.add(rule) {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn list_faults(State(emu): State<Shared>) -> Response {
    Json(json!({"faults": emu.faults.list()})).into_response()
}

async fn clear_faults(State(emu): State<Shared>) -> Response {
    emu.faults.clear();
    Json(json!({"faults": []})).into_response()
}

async fn requests(State(emu): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let since = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    Json(json!({"requests": emu.log.query(since, q.get("path_prefix").map(String::as_str))})).into_response()
}

async fn get_settings(State(emu): State<Shared>) -> Response {
    Json(emu.settings()).into_response()
}

async fn set_settings(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let patch: Value = match parse(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut world = emu.world();
    match world.settings.merge(&patch) {
        Ok(()) => Json(world.settings.clone()).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    advance_secs: f64,
}

async fn clock(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let change: ClockChange = match parse(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !change.advance_secs.is_finite() || change.advance_secs < 0.0 {
        return error(StatusCode::BAD_REQUEST, "advance_secs must be a non-negative number");
    }
    emu.clock.advance(change.advance_secs);
    Json(json!({"now": log_time(emu.clock.now())})).into_response()
}

async fn load_generator(State(emu): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: load::LoadSpec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match load::start(&emu, spec) {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn reset(State(emu): State<Shared>) -> Response {
    *emu.world() = super::model::World::default();
    emu.faults.clear();
    emu.log.clear();
    emu.limits.clear();
    emu.clock.reset();
    Json(json!({"reset": true})).into_response()
}
