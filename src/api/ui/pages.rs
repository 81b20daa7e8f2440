//! The handlers: the status page (or the sign-in form), sign-in, sign-out and the forms that
//! act. Each gathers what it shows from the board, the registry, the metrics and the store,
//! and leaves the markup to `templates`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

use super::session::{self, Signed};
use super::templates::{self, Overview};
use super::{Ui, csrf};
use crate::api::{Permission, permission};

/// Quarantined messages shown at most.
const QUARANTINE_SHOWN: usize = 50;
/// Outbound messages shown.
const OUTBOUND_SHOWN: u32 = 20;

/// `GET /` and `GET /ui`.
pub async fn to_ui() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui/`: the status page when signed in, else the sign-in form.
pub async fn status(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let nonce = session::random_token();
    let Some(signed) = signed_in(&ui, &headers) else {
        return html(StatusCode::OK, templates::sign_in(None, &nonce), &nonce);
    };
    let notice = match q.get("done").map(String::as_str) {
        Some("replayed") => {
            Some("Replay requested: the mailbox fetches the message again and delivers it with its original dedup key.")
        }
        Some("signed_in") => Some("Signed in."),
        _ => None,
    };
    let overview = gather(&ui, signed, notice).await;
    html(StatusCode::OK, templates::status(&overview, &nonce), &nonce)
}

/// Everything the page shows, read now.
async fn gather(ui: &Ui, session: Signed, notice: Option<&'static str>) -> Overview {
    let s = &ui.api;
    let registry = s.mailboxes.load();
    let folders: HashMap<&str, &Vec<String>> = registry
        .iter()
        .map(|(address, ctx)| (address.as_str(), &ctx.config.folders))
        .collect();
    let mailboxes: Vec<_> = s
        .board
        .all()
        .into_iter()
        .map(|view| {
            let f = folders
                .get(view.address.as_str())
                .map(|f| f.to_vec())
                .unwrap_or_default();
            (view, f)
        })
        .collect();
    let apps: BTreeSet<String> = mailboxes.iter().map(|(v, _)| v.app.clone()).collect();
    let credentials = apps
        .into_iter()
        .map(|app| {
            // The same expiry the daemon publishes as inboxd_credential_expiry_timestamp_seconds;
            // `get` (not `get_or_create`) so an app without one gets no made-up series.
            let expiry = s
                .metrics
                .credential_expiry
                .get(&vec![("app", app.clone())])
                .and_then(|g| OffsetDateTime::from_unix_timestamp(g.get() as i64).ok());
            (app, expiry)
        })
        .collect();
    let quarantine = match s.store.quarantined(None).await {
        Ok(mut entries) => {
            entries.truncate(QUARANTINE_SHOWN);
            Some(entries)
        }
        Err(e) => {
            tracing::warn!(error = %e, "The status page could not read the quarantine.");
            None
        }
    };
    let outbound = match s.store.recent_outbound(OUTBOUND_SHOWN).await {
        Ok(records) => Some(records),
        Err(e) => {
            tracing::warn!(error = %e, "The status page could not read the outbound messages.");
            None
        }
    };
    Overview {
        now: OffsetDateTime::now_utc(),
        session,
        notice,
        mailboxes,
        credentials,
        quarantine,
        outbound,
    }
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignIn {
    /// The API token, never echoed or logged.
    token: SecretString,
}

/// `POST /ui/sign-in`: checks the token once and opens a session.
pub async fn sign_in(
    State(ui): State<Arc<Ui>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<SignIn>,
) -> Response {
    let nonce = session::random_token();
    if !ui.sign_in_limiter.allow(peer.ip()) {
        let page = templates::sign_in(
            Some("Too many sign-in attempts from your address; wait a minute."),
            &nonce,
        );
        return html(StatusCode::TOO_MANY_REQUESTS, page, &nonce);
    }
    let tokens = ui.api.api_tokens.load();
    let presented = form.token.expose_secret().trim().as_bytes();
    let Some(granted) = permission(&tokens, presented) else {
        tracing::info!(client = %peer.ip(), "A status page sign-in was refused: not a configured API token.");
        let problem = if tokens.is_empty() {
            "No API token is configured: add server.api_tokens (or server.read_only_api_tokens) to the configuration."
        } else {
            "That is not one of the configured API tokens."
        };
        return html(
            StatusCode::UNAUTHORIZED,
            templates::sign_in(Some(problem), &nonce),
            &nonce,
        );
    };
    let (id, _) = ui.sessions.open(presented);
    tracing::info!(client = %peer.ip(), read_only = granted == Permission::Read, "Signed in to the status page.");
    let mut resp = Redirect::to("/ui/?done=signed_in").into_response();
    set_cookie(&mut resp, &session::set_cookie(&id, secure(&ui)));
    resp
}

/// `POST /ui/sign-out`.
pub async fn sign_out(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match checked_form(&ui, &headers, &form, false) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    ui.sessions.close(&signed.id);
    let mut resp = Redirect::to("/ui/").into_response();
    set_cookie(&mut resp, &session::clear_cookie(secure(&ui)));
    resp
}

/// `POST /ui/quarantine/{id}/replay`: like `POST /v1/quarantine/{id}/replay`.
pub async fn replay(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = checked_form(&ui, &headers, &form, true) {
        return refused.into_response();
    }
    let nonce = session::random_token();
    match ui.api.store.request_replay(&id).await {
        Ok(Some(entry)) => {
            crate::api::replay::wake(&ui.api, &entry.mailbox);
            tracing::info!(mailbox = %entry.mailbox, quarantine_id = %entry.id, "Replay requested from the status page.");
            Redirect::to("/ui/?done=replayed#quarantine").into_response()
        }
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            templates::message(
                "Not in the quarantine",
                "That message is no longer quarantined (it was replayed already, or the id is wrong).",
                &nonce,
            ),
            &nonce,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "The status page could not request a replay.");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                templates::message(
                    "Store unavailable",
                    "The store is not answering; nothing was changed. Try again later.",
                    &nonce,
                ),
                &nonce,
            )
        }
    }
}

/// Why a form post was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No live session.
    SignedOut,
    /// The CSRF token is missing or not the session's.
    Csrf,
    /// The session's token may only read.
    ReadOnly,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Refused::SignedOut => (
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "Your session ended (it expires after eight hours, or its token was removed). Sign in again.",
            ),
            Refused::Csrf => (
                csrf::REFUSED,
                "Form refused",
                "This form did not come from your current status page (its CSRF token is missing or stale). Reload the page and try again.",
            ),
            Refused::ReadOnly => (
                StatusCode::FORBIDDEN,
                "Read-only session",
                "You signed in with a read-only token; acting needs one of server.api_tokens.",
            ),
        };
        let nonce = session::random_token();
        html(status, templates::message(title, text, &nonce), &nonce)
    }
}

/// The session of a form post, once its CSRF token (and, when `acts`, its permission) is
/// checked.
fn checked_form(ui: &Ui, headers: &HeaderMap, form: &HashMap<String, String>, acts: bool) -> Result<Signed, Refused> {
    let signed = signed_in(ui, headers).ok_or(Refused::SignedOut)?;
    if !csrf::valid(&signed, form.get(csrf::FIELD).map(String::as_str)) {
        return Err(Refused::Csrf);
    }
    if acts && signed.permission != Permission::Act {
        return Err(Refused::ReadOnly);
    }
    Ok(signed)
}

/// The live session of this request's cookie.
fn signed_in(ui: &Ui, headers: &HeaderMap) -> Option<Signed> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::cookie_value)?;
    ui.sessions.find(id, &ui.api.api_tokens.load())
}

/// Browsers reach inboxd over HTTPS (its public URL), so the cookie must say `Secure`.
fn secure(ui: &Ui) -> bool {
    ui.api.redirect_uri.starts_with("https://")
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// An HTML answer that only its own style and script may run in, never cached or framed.
fn html(status: StatusCode, body: String, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}
