//! Around every emulated request: injected faults first, then the request log.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::faults::Fired;
use super::graph::{GraphError, RequestIds};
use super::log::{Entry, Facts, selected_headers};
use super::util::log_time;
use super::{Emulator, Shared, identity};

/// Marks a response whose connection must be dropped without an answer.
#[derive(Clone, Copy)]
pub(crate) struct ResetConnection;

/// Sequence number of the request in the log (read by `$batch`).
#[derive(Clone, Copy)]
pub(crate) struct RequestSeq(pub(crate) u64);

/// Middleware for everything outside `/_emulator`.
pub(crate) async fn around(State(emu): State<Shared>, mut req: Request, next: Next) -> Response {
    // Faults and the log see the decoded path: `users/a%40b` and `users/a@b` are one mailbox.
    let path = super::util::decode_path(req.uri().path());
    if path.starts_with("/_emulator") {
        return next.run(req).await;
    }
    let seq = emu.log.begin();
    req.extensions_mut().insert(RequestSeq(seq));
    let started = Instant::now();
    let time = log_time(emu.clock.now());
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    let (answer, delay_after) = fault(&emu, &method, &path, &headers).await;
    let resp = match answer {
        Some(resp) => resp,
        None => next.run(req).await,
    };
    if let Some(wait) = delay_after {
        tokio::time::sleep(wait).await;
    }
    record(
        &emu,
        Record {
            seq,
            time,
            started,
            method,
            path,
            query,
            headers: &headers,
            batch: None,
        },
        &resp,
    );
    resp
}

/// What the log needs about a request.
pub(crate) struct Record<'a> {
    /// Sequence allocated on arrival.
    pub(crate) seq: u64,
    /// Arrival time.
    pub(crate) time: String,
    /// For the duration.
    pub(crate) started: Instant,
    /// Method.
    pub(crate) method: String,
    /// Path.
    pub(crate) path: String,
    /// Query string.
    pub(crate) query: Option<String>,
    /// Request headers.
    pub(crate) headers: &'a HeaderMap,
    /// Enclosing `$batch` seq.
    pub(crate) batch: Option<u64>,
}

/// Writes one log entry from the request and its response.
pub(crate) fn record(emu: &Emulator, r: Record<'_>, resp: &Response) {
    let facts = resp.extensions().get::<Facts>().cloned().unwrap_or_default();
    let reset = resp.extensions().get::<ResetConnection>().is_some();
    emu.log.record(Entry {
        seq: r.seq,
        time: r.time,
        method: r.method,
        path: r.path,
        query: r.query,
        status: if reset { 0 } else { resp.status().as_u16() },
        duration_ms: r.started.elapsed().as_secs_f64() * 1000.0,
        mailbox: facts.mailbox,
        app: facts.app,
        token: facts.token.unwrap_or(if r.headers.contains_key("authorization") {
            "invalid"
        } else {
            "none"
        }),
        batch: r.batch,
        retry_after: resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        headers: selected_headers(r.headers),
    });
}

/// Applies the first matching fault rule: waits, then answers in its place (or not); also
/// says how long to hold the real answer back.
pub(crate) async fn fault(
    emu: &Emulator,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> (Option<Response>, Option<Duration>) {
    let Some(fired) = emu.faults.take(method, path) else {
        return (None, None);
    };
    if let Some(ms) = fired.rule.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let after = fired.rule.delay_after_ms.map(Duration::from_millis);
    if !fired.answers() {
        return (None, after);
    }
    (Some(fault_response(emu, &fired, path, headers)), None)
}

fn fault_response(emu: &Emulator, fired: &Fired, path: &str, headers: &HeaderMap) -> Response {
    let rule = &fired.rule;
    let now = emu.clock.now();
    if rule.reset {
        let mut resp = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        resp.extensions_mut().insert(ResetConnection);
        return resp;
    }
    let graph = path.to_ascii_lowercase().starts_with("/v1.0") || path.starts_with("/_upload");
    let mut resp = if rule.malformed {
        let body = if graph {
            "{\"value\": [{\"id\": \"AAMkAD"
        } else {
            "{\"access_token\": \"eyJ0eXAi"
        };
        let mut resp = Response::new(Body::from(Bytes::from_static(body.as_bytes())));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = rule.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            *resp.status_mut() = s;
        }
        resp
    } else if graph {
        let status = rule
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let code = rule
            .code
            .clone()
            .unwrap_or_else(|| GraphError::code_for(status).to_string());
        let message = match status.as_u16() {
            429 => "Please retry again later.".to_string(),
            _ => format!("Injected fault ({code})."),
        };
        let ids = RequestIds::from_headers(headers);
        let mut resp = GraphError::new(status, &code, message).render(now, &ids.request_id, &ids.client_request_id);
        ids.stamp(&mut resp);
        resp
    } else if let Some(code) = rule.aadsts {
        let mut err = identity::aadsts_error(code, "");
        if let Some(s) = rule.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            err.status = s;
        }
        if let Some(e) = &rule.oauth_error {
            err.error = e.clone();
        }
        err.into_response_at(now)
    } else {
        identity::oauth_error_response(
            rule.status,
            rule.oauth_error.as_deref().unwrap_or("temporarily_unavailable"),
            now,
        )
    };
    if let Some(v) = fired.retry_after().and_then(|r| HeaderValue::from_str(&r).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
