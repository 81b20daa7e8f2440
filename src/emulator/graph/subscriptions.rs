//! Change notifications: `POST/GET/PATCH/DELETE /subscriptions` and
//! `POST /subscriptions/{id}/reauthorize`, the validation handshake, `created` notifications
//! delivered after a delay with retries, lifecycle events, and subscriptions that vanish.
//!
//! Read from Microsoft's documents: the handshake is `POST {url}?validationToken=…`, answered
//! within 10 s with 200, `text/plain` and the decoded token; a notification must be answered
//! with a 2xx within 3 s or it is retried; the lifetime is capped (4,230 minutes for Outlook
//! resources) and a longer request is refused with "Subscription expiration can only be N
//! minutes in the future"; shorter lifetimes are raised to 45 minutes.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Caller, GraphError, GraphRequest, Need};
use crate::emulator::util::{graph_time, guid, opaque, parse_time};
use crate::emulator::{Emulator, Shared};

mod control;
mod delivery;

pub(crate) use control::control_routes;
pub(crate) use delivery::spawn_dispatcher;
use delivery::validate;

/// Outlook's limit of active subscriptions per mailbox, all applications together.
const PER_MAILBOX: usize = 1000;
/// Most notifications in one POST.
const BATCH: usize = 100;
/// Entries kept in the delivery log.
const LOG_CAP: usize = 10_000;

/// Wakes every dispatcher when something is queued (a process-wide signal: each dispatcher
/// only looks at its own emulator's queue, and `reset` replaces the world under it).
static QUEUED: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// The knobs, changed through `POST /_emulator/subscriptions/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SubscriptionSettings {
    /// Longest lifetime accepted, minutes (4,230 for Outlook resources without resource data).
    pub(crate) max_minutes: i64,
    /// Shorter lifetimes are raised to this, minutes (45 per the subscription resource).
    pub(crate) min_minutes: i64,
    /// Time from a change to its notification, milliseconds.
    pub(crate) delivery_delay_ms: u64,
    /// A notification answered later than this failed (3 s as documented).
    pub(crate) notification_timeout_ms: u64,
    /// A handshake answered later than this failed (10 s as documented).
    pub(crate) validation_timeout_ms: u64,
    /// Retries of a failed notification (Graph keeps trying for up to 4 hours).
    pub(crate) retries: u32,
    /// First retry delay, doubled each time, milliseconds.
    pub(crate) retry_delay_ms: u64,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            max_minutes: 4230,
            min_minutes: 45,
            delivery_delay_ms: 500,
            notification_timeout_ms: 3000,
            validation_timeout_ms: 10_000,
            retries: 5,
            retry_delay_ms: 1000,
        }
    }
}

/// One subscription.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Subscription {
    /// Its id.
    pub(crate) id: String,
    /// `resource` as the client wrote it.
    pub(crate) resource: String,
    /// `changeType`, comma-separated.
    pub(crate) change_type: String,
    /// Where notifications go.
    pub(crate) notification_url: String,
    /// Where lifecycle events go, if set at creation.
    pub(crate) lifecycle_notification_url: Option<String>,
    /// `clientState`, echoed in every notification.
    pub(crate) client_state: Option<String>,
    /// When it expires (emulator time).
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) expiration: OffsetDateTime,
    /// The app that created it.
    pub(crate) application_id: String,
    /// Its tenant.
    pub(crate) tenant_id: String,
    /// The watched mailbox (address key).
    pub(crate) mailbox: String,
    /// The watched folder id; `None`: every folder.
    pub(crate) folder_id: Option<String>,
}

/// One queued POST to a client endpoint.
#[derive(Debug, Clone)]
struct Pending {
    /// Target URL.
    url: String,
    /// One item of `value`.
    item: Value,
    /// Subscription it belongs to (for the log).
    subscription: String,
    /// `change` or a lifecycle event name.
    kind: String,
    /// Not before.
    due: tokio::time::Instant,
    /// Attempts so far.
    attempt: u32,
}

/// What the world keeps about subscriptions.
#[derive(Default)]
pub(crate) struct Subscriptions {
    /// Settings.
    pub(crate) settings: SubscriptionSettings,
    /// Id → subscription.
    items: BTreeMap<String, Subscription>,
    /// Notifications waiting for their time.
    queue: Vec<Pending>,
    /// Every delivery attempt.
    log: Vec<Value>,
}

impl Subscriptions {
    /// A message entered a folder: queue `created` notifications for matching subscriptions.
    pub(crate) fn message_created(&mut self, mailbox: &str, user_id: &str, folder_id: &str, message_id: &str) {
        let due = tokio::time::Instant::now() + Duration::from_millis(self.settings.delivery_delay_ms);
        let mut queued = false;
        for s in self.items.values() {
            let matches = s.mailbox == mailbox
                && s.folder_id.as_deref().is_none_or(|f| f == folder_id)
                && s.change_type
                    .split(',')
                    .any(|c| c.trim().eq_ignore_ascii_case("created"));
            if !matches {
                continue;
            }
            let resource = format!("Users/{user_id}/Messages/{message_id}");
            let item = json!({
                "subscriptionId": s.id,
                "subscriptionExpirationDateTime": graph_time(s.expiration),
                "changeType": "created",
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": resource,
                    "@odata.etag": format!("W/\"{}\"", opaque(16)),
                    "id": message_id,
                },
                "clientState": s.client_state,
                "tenantId": s.tenant_id,
            });
            self.queue.push(Pending {
                url: s.notification_url.clone(),
                item,
                subscription: s.id.clone(),
                kind: "change".into(),
                due,
                attempt: 0,
            });
            queued = true;
        }
        if queued {
            QUEUED.notify_waiters();
        }
    }

    /// Queues a lifecycle event; `subscriptionRemoved` also removes the subscription.
    fn lifecycle(&mut self, id: &str, event: &str) -> Result<(), String> {
        let s = self
            .items
            .get(id)
            .ok_or_else(|| format!("no subscription '{id}'"))?
            .clone();
        let url = s
            .lifecycle_notification_url
            .clone()
            .ok_or_else(|| format!("subscription '{id}' has no lifecycleNotificationUrl"))?;
        if event == "subscriptionRemoved" {
            self.items.remove(id);
        }
        self.queue.push(Pending {
            url,
            item: json!({
                "subscriptionId": s.id,
                "subscriptionExpirationDateTime": graph_time(s.expiration),
                "tenantId": s.tenant_id,
                "clientState": s.client_state,
                "lifecycleEvent": event,
            }),
            subscription: s.id,
            kind: event.into(),
            due: tokio::time::Instant::now(),
            attempt: 0,
        });
        QUEUED.notify_waiters();
        Ok(())
    }

    /// Live subscriptions of a mailbox.
    fn count_for(&self, mailbox: &str, now: OffsetDateTime) -> usize {
        self.items
            .values()
            .filter(|s| s.mailbox == mailbox && s.expiration > now)
            .count()
    }
}

// ------------------------------------------------------------------------------------------
// Graph side.
// ------------------------------------------------------------------------------------------

/// `…/subscriptions[/{id}[/reauthorize]]`, already authenticated.
pub(crate) async fn handle(
    emu: &Shared,
    caller: &Caller,
    request: &GraphRequest,
    segments: &[String],
    now: OffsetDateTime,
) -> Result<Response, GraphError> {
    let m = &request.method;
    match segments {
        [_] if m == Method::POST => create(emu, caller, &request.body, now).await,
        [_] if m == Method::GET => {
            let world = emu.world();
            let list: Vec<Value> = world
                .subscriptions
                .items
                .values()
                .filter(|s| s.application_id == caller.app && s.expiration > now)
                .map(|s| render(s, emu.base()))
                .collect();
            Ok(
                Json(json!({"@odata.context": format!("{}/v1.0/$metadata#subscriptions", emu.base()), "value": list}))
                    .into_response(),
            )
        }
        [_, id] if m == Method::GET => {
            let s = owned(emu, caller, id, now)?;
            Ok(Json(render(&s, emu.base())).into_response())
        }
        [_, id] if m == Method::PATCH => renew(emu, caller, id, &request.body, now).await,
        [_, id] if m == Method::DELETE => {
            owned(emu, caller, id, now)?;
            emu.world().subscriptions.items.remove(id.as_str());
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        [_, id, action] if m == Method::POST && action.eq_ignore_ascii_case("reauthorize") => {
            owned(emu, caller, id, now)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "The HTTP method is not allowed for this resource.",
        )),
    }
}

fn not_found(id: &str) -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The object was not found. Subscription '{id}'."),
    )
}

/// A live subscription of the caller's app.
fn owned(emu: &Emulator, caller: &Caller, id: &str, now: OffsetDateTime) -> Result<Subscription, GraphError> {
    let world = emu.world();
    match world.subscriptions.items.get(id) {
        Some(s) if s.application_id == caller.app && s.expiration > now => Ok(s.clone()),
        _ => Err(not_found(id)),
    }
}

fn render(s: &Subscription, base: &str) -> Value {
    json!({
        "@odata.context": format!("{base}/v1.0/$metadata#subscriptions/$entity"),
        "id": s.id,
        "resource": s.resource,
        "applicationId": s.application_id,
        "changeType": s.change_type,
        "clientState": s.client_state,
        "notificationUrl": s.notification_url,
        "lifecycleNotificationUrl": s.lifecycle_notification_url,
        "expirationDateTime": graph_time(s.expiration),
        "creatorId": guid(),
        "includeResourceData": false,
        "latestSupportedTlsVersion": "v1_2",
        "encryptionCertificate": null,
        "encryptionCertificateId": null,
        "notificationQueryOptions": null,
        "notificationUrlAppId": null,
    })
}

/// The expiry to keep: refused when too far, raised when too near.
fn expiry(settings: &SubscriptionSettings, body: &Value, now: OffsetDateTime) -> Result<OffsetDateTime, GraphError> {
    let text = body["expirationDateTime"]
        .as_str()
        .ok_or_else(|| GraphError::bad_request("InvalidRequest", "expirationDateTime is required."))?;
    let at = parse_time(text).ok_or_else(|| {
        GraphError::bad_request("InvalidRequest", format!("'{text}' is not a valid expirationDateTime."))
    })?;
    if at <= now {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            "Subscription expiration must be in the future.",
        ));
    }
    if at > now + time::Duration::minutes(settings.max_minutes) {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            format!(
                "Subscription expiration can only be {} minutes in the future.",
                settings.max_minutes
            ),
        ));
    }
    Ok(at.max(now + time::Duration::minutes(settings.min_minutes)))
}

/// Resolves `users/{id}/messages` or `users/{id}/mailFolders('{f}')/messages` (or `me/…`).
fn resolve(emu: &Emulator, caller: &Caller, resource: &str) -> Result<(String, Option<String>), GraphError> {
    let segments = super::routes::segments(resource);
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let (user, rest) = match lower.first().map(String::as_str) {
        Some("me") => ("me".to_string(), 1),
        Some("users") if segments.len() >= 2 => (segments[1].clone(), 2),
        _ => return Err(invalid_resource(resource)),
    };
    let folder = match lower[rest..].iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["messages"] => None,
        ["mailfolders", _, "messages"] => Some(segments[rest + 1].clone()),
        _ => return Err(invalid_resource(resource)),
    };
    let address = super::resolve_mailbox(emu, caller, &user)?;
    if let Err(e) = super::authorize(emu, caller, &address, Need::Read) {
        let reason = if e.message.contains("OData") {
            "Access to OData is disabled."
        } else {
            "Access is denied."
        };
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            format!("Operation: Create; Exception: [Status Code: Forbidden; Reason: {reason}]"),
        ));
    }
    let folder_id = match folder {
        None => None,
        Some(f) => {
            let world = emu.world();
            let id = world.mailboxes.get(&address).and_then(|m| m.folder_id(&f));
            Some(id.ok_or_else(|| {
                GraphError::new(
                    StatusCode::NOT_FOUND,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                )
            })?)
        }
    };
    Ok((address, folder_id))
}

fn invalid_resource(resource: &str) -> GraphError {
    GraphError::bad_request(
        "InvalidRequest",
        format!("Resource '{resource}' is not supported for change notifications."),
    )
}

/// `https://`, or `http://` on a loopback host (the emulator's own tests).
fn acceptable_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]" | "::1")))
    })
}

async fn create(emu: &Shared, caller: &Caller, body: &[u8], now: OffsetDateTime) -> Result<Response, GraphError> {
    let body: Value = serde_json::from_slice(body).map_err(|_| GraphError::bad_body("Invalid JSON body."))?;
    let text = |name: &str| body[name].as_str().map(str::to_string);
    let change_type = text("changeType")
        .filter(|c| {
            c.split(',').all(|t| {
                matches!(
                    t.trim().to_ascii_lowercase().as_str(),
                    "created" | "updated" | "deleted"
                )
            })
        })
        .ok_or_else(|| GraphError::bad_request("InvalidRequest", "changeType must be created, updated or deleted."))?;
    let notification_url = text("notificationUrl")
        .filter(|u| acceptable_url(u))
        .ok_or_else(|| GraphError::bad_request("InvalidRequest", "notificationUrl must be an https URL."))?;
    let lifecycle = text("lifecycleNotificationUrl");
    if lifecycle.as_deref().is_some_and(|u| !acceptable_url(u)) {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            "lifecycleNotificationUrl must be an https URL.",
        ));
    }
    let client_state = text("clientState");
    if client_state.as_deref().is_some_and(|c| c.chars().count() > 128) {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            "clientState must be at most 128 characters.",
        ));
    }
    let resource =
        text("resource").ok_or_else(|| GraphError::bad_request("InvalidRequest", "resource is required."))?;
    let settings = emu.world().subscriptions.settings.clone();
    let expiration = expiry(&settings, &body, now)?;
    let (mailbox, folder_id) = resolve(emu, caller, &resource)?;
    if emu.world().subscriptions.count_for(&mailbox, now) >= PER_MAILBOX {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: The maximum number of subscriptions for this mailbox has been reached.]",
        ));
    }
    validate(&notification_url, &settings).await?;
    if let Some(url) = &lifecycle {
        validate(url, &settings).await?;
    }
    let s = Subscription {
        id: guid(),
        resource,
        change_type,
        notification_url,
        lifecycle_notification_url: lifecycle,
        client_state,
        expiration,
        application_id: caller.app.clone(),
        tenant_id: caller.tenant.clone(),
        mailbox,
        folder_id,
    };
    let rendered = render(&s, emu.base());
    emu.world().subscriptions.items.insert(s.id.clone(), s);
    Ok((StatusCode::CREATED, Json(rendered)).into_response())
}

async fn renew(
    emu: &Shared,
    caller: &Caller,
    id: &str,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Response, GraphError> {
    let body: Value = serde_json::from_slice(body).map_err(|_| GraphError::bad_body("Invalid JSON body."))?;
    let s = owned(emu, caller, id, now)?;
    let settings = emu.world().subscriptions.settings.clone();
    let expiration = expiry(&settings, &body, now)?;
    validate(&s.notification_url, &settings).await?;
    let mut world = emu.world();
    let Some(stored) = world.subscriptions.items.get_mut(id) else {
        return Err(not_found(id));
    };
    stored.expiration = expiration;
    let rendered = render(stored, emu.base());
    Ok(Json(rendered).into_response())
}
