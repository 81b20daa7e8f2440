//! HTTP API: health, metrics, mailbox status. `/v1` needs a bearer token; health and
//! metrics stay open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::HashMap;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

mod consent;
pub mod limit;
mod outbound;
mod replay;
pub mod serve;
mod ui;

use crate::config::ApiTokens;
use crate::domain::MailboxAddress;
use crate::mailbox::StatusBoard;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Mailbox states.
    pub board: Arc<StatusBoard>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// For readiness.
    pub store: Arc<dyn Store>,
    /// False before start-up finished and once shutdown began.
    pub ready: Arc<AtomicBool>,
    /// Accepted bearer tokens (swapped on reload).
    pub api_tokens: Arc<arc_swap::ArcSwap<ApiTokens>>,
    /// Replies and new mail.
    pub outbox: Arc<crate::outbound::Outbox>,
    /// Every polled mailbox (consent needs its tokens and gate).
    pub mailboxes: crate::mailbox::supervisor::Registry,
    /// Graph client (the consent flow checks a new grant).
    pub graph: Arc<crate::graph::Graph>,
    /// Seals consent states and refresh tokens.
    pub sealer: Option<Arc<crate::auth::seal::Sealer>>,
    /// `{public_url}/oauth/callback`.
    pub redirect_uri: String,
    /// Rate limit of `/oauth/start` per client address.
    pub consent_limiter: Arc<limit::PerClient>,
    /// Replicas on a shared store: every mailbox is listed with its owner.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Largest reply, forward or new message: 150 MB of attachments, base64-encoded, plus the rest.
const MAX_BODY: usize = 210 * 1024 * 1024;
/// Largest body of every other request (a refresh token import is the biggest of them).
const SMALL_BODY: usize = 16 * 1024;

tokio::task_local! {
    /// The id of the request being handled: in its log lines, error body and `x-request-id`.
    static REQUEST_ID: String;
}

/// A JSON error: `{"error":{"code","message","request_id"}}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let request_id = REQUEST_ID.try_with(String::clone).ok();
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into(), "request_id": request_id}})),
    )
        .into_response()
}

/// Our own failure (the store, an internal error): its text goes to the log under the request
/// id, the client gets a short reason and that id.
pub fn internal(status: StatusCode, code: &str, reason: &str, detail: &dyn std::fmt::Display) -> Response {
    let request_id = REQUEST_ID.try_with(String::clone).unwrap_or_default();
    tracing::error!(request_id = %request_id, code, error = %detail, "An API request failed inside inboxd.");
    error(status, code, reason)
}

/// The store did not answer.
pub fn store_unavailable(detail: &dyn std::fmt::Display) -> Response {
    internal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store is not answering; try again later",
        detail,
    )
}

/// Gives every request an id (`x-request-id` on the answer).
async fn request_id(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}

/// An API error as a value (small, so `Result<_, ApiError>` stays cheap).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// An error with status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/mailboxes", get(mailboxes))
        .route("/v1/mailboxes/{address}", get(mailbox))
        .route("/v1/quarantine", get(quarantine))
        .route("/v1/quarantine/{id}/replay", axum::routing::post(replay::one))
        .route(
            "/v1/mailboxes/{address}/quarantine/replay",
            axum::routing::post(replay::mailbox),
        )
        .route(
            "/v1/mailboxes/{address}/messages/{graph_id}/reply",
            axum::routing::post(outbound::reply).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(
            "/v1/mailboxes/{address}/messages/{graph_id}/forward",
            axum::routing::post(outbound::forward).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(
            "/v1/mailboxes/{address}/send",
            axum::routing::post(outbound::send).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/v1/outbound/{id}", get(outbound::status))
        .route("/v1/mailboxes/{address}/consent", get(consent::url))
        .route(
            "/v1/mailboxes/{address}/refresh-token",
            axum::routing::post(consent::import),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/oauth/start", get(consent::start))
        .route("/oauth/callback", get(consent::callback))
        .merge(v1)
        .merge(ui::router(state.clone()))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or shutting down",
        );
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => store_unavailable(&e),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn mailboxes(State(s): State<ApiState>) -> Response {
    match &s.cluster {
        None => Json(json!({"mailboxes": s.board.all()})).into_response(),
        Some(cluster) => match crate::cluster::annotate(cluster, s.board.all(), None).await {
            Ok(all) => Json(json!({"mailboxes": all})).into_response(),
            Err(e) => store_unavailable(&e),
        },
    }
}

async fn mailbox(State(s): State<ApiState>, Path(address): Path<String>) -> Response {
    let Ok(address) = MailboxAddress::parse(&address) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            format!("'{address}' is not an email address"),
        );
    };
    if let Some(cluster) = &s.cluster {
        return match crate::cluster::annotate(cluster, s.board.get(&address).into_iter().collect(), Some(&address))
            .await
        {
            Ok(mut one) if !one.is_empty() => Json(one.swap_remove(0)).into_response(),
            Ok(_) => error(
                StatusCode::NOT_FOUND,
                "unknown_mailbox",
                format!("{address} is not configured"),
            ),
            Err(e) => store_unavailable(&e),
        };
    }
    match s.board.get(&address) {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_mailbox",
            format!("{address} is not configured"),
        ),
    }
}

/// A configured mailbox as this replica knows it: from its own board, or (replicas on a shared
/// store) as the store last recorded one that another replica runs.
pub(crate) async fn view(s: &ApiState, mailbox: &MailboxAddress) -> Option<crate::mailbox::MailboxView> {
    if let Some(view) = s.board.get(mailbox) {
        return Some(view);
    }
    let cluster = s.cluster.as_ref()?;
    match crate::cluster::remote(cluster, mailbox).await {
        Ok(view) => view,
        Err(e) => {
            tracing::warn!(mailbox = %mailbox, error = %e, "Cannot read the mailbox from the store.");
            None
        }
    }
}

/// Quarantined messages, newest first; `?mailbox=` narrows to one mailbox.
async fn quarantine(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mailbox = match q.get("mailbox").map(|m| MailboxAddress::parse(m)).transpose() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_address", e),
    };
    match s.store.quarantined(mailbox.as_ref()).await {
        Ok(entries) => {
            let items: Vec<_> = entries
                .iter()
                .map(|e| {
                    json!({
                        "id": e.id, "mailbox": e.mailbox.as_str(), "folder": e.folder, "graph_id": e.graph_id, "reason": e.reason,
                        "at": e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                    })
                })
                .collect();
            Json(json!({"quarantine": items})).into_response()
        }
        Err(e) => store_unavailable(&e),
    }
}

/// What a presented API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// One of `server.api_tokens`: read and act.
    Act,
    /// One of `server.read_only_api_tokens`: read only.
    Read,
}

/// Which configured token `presented` is, compared in constant time against every one of them
/// (no early exit, so timing does not tell how much matched or which list it is in).
pub fn permission(tokens: &ApiTokens, presented: &[u8]) -> Option<Permission> {
    let matches = |list: &[SecretString]| {
        list.iter().fold(false, |found, t| {
            found | aws_lc_rs::constant_time::verify_slices_are_equal(t.expose_secret().as_bytes(), presented).is_ok()
        })
    };
    let (act, read) = (matches(&tokens.act), matches(&tokens.read_only));
    if act {
        Some(Permission::Act)
    } else if read {
        Some(Permission::Read)
    } else {
        None
    }
}

/// Bearer check in constant time; the token is never logged or echoed. A read-only token
/// may only `GET`.
async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let granted = presented.and_then(|p| permission(&s.api_tokens.load(), p));
    match granted {
        None => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid 'Authorization: Bearer <token>' is required",
        ),
        Some(Permission::Read) if !matches!(*req.method(), Method::GET | Method::HEAD) => error(
            StatusCode::FORBIDDEN,
            "read_only_token",
            "this API token may only read; acting needs one of server.api_tokens",
        ),
        Some(_) => next.run(req).await,
    }
}
