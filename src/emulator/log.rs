//! The request log behind `GET /_emulator/requests`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};

/// How many entries are kept; older ones are dropped first.
const CAPACITY: usize = 200_000;

/// Append-only log with sequence numbers.
#[derive(Default)]
pub(crate) struct RequestLog {
    /// Next sequence number.
    next: AtomicU64,
    /// Entries, roughly in completion order.
    entries: Mutex<std::collections::VecDeque<Entry>>,
}

/// One request as the emulator saw it.
#[derive(Serialize, Clone)]
pub(crate) struct Entry {
    /// Sequence number, allocated when the request arrived.
    pub(crate) seq: u64,
    /// Arrival time (emulator clock), RFC 3339.
    pub(crate) time: String,
    /// HTTP method.
    pub(crate) method: String,
    /// Path.
    pub(crate) path: String,
    /// Raw query string.
    pub(crate) query: Option<String>,
    /// Status answered (0 when the connection was reset).
    pub(crate) status: u16,
    /// Time spent answering.
    pub(crate) duration_ms: f64,
    /// Mailbox the request named.
    pub(crate) mailbox: Option<String>,
    /// Client id of the token, or of the token request.
    pub(crate) app: Option<String>,
    /// `valid`, `expired`, `invalid` or `none`.
    pub(crate) token: &'static str,
    /// Seq of the enclosing `$batch` request.
    pub(crate) batch: Option<u64>,
    /// `Retry-After` sent with the answer.
    pub(crate) retry_after: Option<String>,
    /// Selected request headers.
    pub(crate) headers: Map<String, Value>,
}

/// What a handler learned about a request, passed to the log through response extensions.
#[derive(Clone, Default)]
pub(crate) struct Facts {
    /// Mailbox address.
    pub(crate) mailbox: Option<String>,
    /// Client id.
    pub(crate) app: Option<String>,
    /// Token verdict.
    pub(crate) token: Option<&'static str>,
}

/// The request headers worth keeping.
pub(crate) fn selected_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in [
        "client-request-id",
        "prefer",
        "content-type",
        "content-range",
        "content-length",
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.into(), Value::String(v.to_string()));
        }
    }
    out.insert(
        "authorization".into(),
        Value::Bool(headers.contains_key("authorization")),
    );
    out
}

impl RequestLog {
    /// Allocates a sequence number for a request that just arrived.
    pub(crate) fn begin(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a finished request.
    pub(crate) fn record(&self, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Entries after `since` whose path starts with `prefix`, in sequence order.
    pub(crate) fn query(&self, since: u64, prefix: Option<&str>) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = prefix.map(str::to_ascii_lowercase);
        let mut out: Vec<Entry> = entries
            .iter()
            .filter(|e| e.seq > since)
            .filter(|e| {
                prefix
                    .as_ref()
                    .is_none_or(|p| e.path.to_ascii_lowercase().starts_with(p.as_str()))
            })
            .cloned()
            .collect();
        out.sort_by_key(|e| e.seq);
        out
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
