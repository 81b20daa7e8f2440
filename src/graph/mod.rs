//! Microsoft Graph client: the error envelope, per-mailbox governor, `Retry-After` and
//! exponential backoff with jitter; [`MailboxGraph`] gives each mailbox typed operations.

mod compose;
mod error;
mod gate;
mod ingest;
mod mailbox;
mod message;
mod probe;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

pub use error::{GraphError, GraphErrorKind, classify, retry_after};
pub use gate::MailboxGate;
pub use ingest::{
    ATTACHMENT_SELECT, BATCH_MAX, DeltaPage, Disposal, Fetch, Fetched, IMMUTABLE_IDS, Listed, MAX_WAIT_IN_ROUND,
    MessageList, PartAnswer,
};
pub use mailbox::{Folder, MailboxGraph, ShapeError};
pub use message::{
    Address, Attachment, BadItem, Change, DeltaItem, Header, ItemBody, MESSAGE_SELECT, Message, Recipient,
};
pub use {
    compose::{
        Addressee, DraftBody, DraftContent, DraftOf, InboxMessage, MARKER_PROPERTY, MarkedMessage, MessageBody,
        MessageHeader, NewAttachment, PresentAttachment, UploadSession,
    },
    subscriptions::{NewSubscription, Subscription},
};

use crate::auth::{AccessToken, TokenError, TokenSource};
use crate::metrics::Metrics;

/// One Graph request.
#[derive(Debug, Clone)]
pub struct Call {
    /// Metric label and log name (`delta`, `attachments`, `batch`, …).
    pub operation: &'static str,
    /// Method.
    pub method: Method,
    /// Absolute URL, or a path relative to `{graph_url}/v1.0/`.
    pub url: String,
    /// JSON body.
    pub body: Option<Value>,
    /// `Prefer` values.
    pub prefer: Vec<String>,
    /// Slots this call takes in the mailbox gate (a `$batch` takes more).
    pub weight: u32,
    /// Retry transient failures (false for requests that must not be repeated blindly).
    pub retry: bool,
    /// Longest `Retry-After` waited out inside the call; a longer one fails the call at once
    /// (the caller then waits without holding what others need).
    pub max_retry_wait: Option<Duration>,
}

impl Call {
    /// A GET.
    pub fn get(operation: &'static str, url: impl Into<String>) -> Call {
        Call {
            operation,
            method: Method::GET,
            url: url.into(),
            body: None,
            prefer: Vec::new(),
            weight: 1,
            retry: true,
            max_retry_wait: None,
        }
    }

    /// A POST with a JSON body.
    pub fn post(operation: &'static str, url: impl Into<String>, body: Value) -> Call {
        Call {
            operation,
            method: Method::POST,
            url: url.into(),
            body: Some(body),
            prefer: Vec::new(),
            weight: 1,
            retry: true,
            max_retry_wait: None,
        }
    }

    /// Fails at once instead of waiting out a `Retry-After` longer than `max`.
    pub fn max_retry_wait(mut self, max: Duration) -> Call {
        self.max_retry_wait = Some(max);
        self
    }

    /// Adds a `Prefer` value.
    pub fn prefer(mut self, value: impl Into<String>) -> Call {
        self.prefer.push(value.into());
        self
    }
}

/// Why a call failed in the end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Graph refused or failed (after retries, if transient).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Graph answered, but without a field inboxd needs.
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// The Graph client shared by every mailbox.
pub struct Graph {
    http: reqwest::Client,
    base: Url,
    metrics: Arc<Metrics>,
    /// Retries of transient failures (after the first attempt).
    retries: usize,
    /// Requests in flight across all mailboxes.
    global: tokio::sync::Semaphore,
    /// A hung request becomes a transient failure after this long.
    timeout: Duration,
}

/// Retries of an answer that could not be read (after the first attempt).
const MALFORMED_RETRIES: usize = 2;

/// Most Graph requests in flight at once, all mailboxes together.
const GLOBAL_CONCURRENCY: usize = 256;

impl Graph {
    /// A client for `graph_url` (e.g. `https://graph.microsoft.com`).
    pub fn new(http: reqwest::Client, graph_url: &Url, timeout: Duration, metrics: Arc<Metrics>) -> Graph {
        let mut base = graph_url.clone();
        base.set_path(&format!("{}/v1.0/", graph_url.path().trim_end_matches('/')));
        Graph {
            http,
            base,
            metrics,
            retries: 6,
            global: tokio::sync::Semaphore::new(GLOBAL_CONCURRENCY),
            timeout,
        }
    }

    /// Base URL of v1.0 (ends with `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Runs a call: waits for the mailbox gate, retries transient failures with backoff
    /// (honouring `Retry-After`), refreshes the token once on a 401.
    pub async fn call<T: Answer>(&self, gate: &MailboxGate, tokens: &TokenSource, call: &Call) -> Result<T, CallError> {
        let attempt = || async {
            if !gate.may_call() {
                // Answered as a transport failure: transient, and nothing reached Graph.
                return Err(CallError::from(GraphError {
                    kind: GraphErrorKind::Transport,
                    operation: call.operation,
                    status: None,
                    code: Some("LeaseLost".into()),
                    message: "this replica no longer holds the mailbox's lease; its new owner polls and sends for it"
                        .into(),
                    request_id: None,
                    client_request_id: String::new(),
                    retry_after: None,
                }));
            }
            let token = tokens.token().await?;
            match self.once(gate, &token, call).await {
                Err(CallError::Graph(e)) if e.kind == GraphErrorKind::Unauthorized => {
                    tokens.invalidate(&token);
                    let token = tokens.token().await?;
                    self.once(gate, &token, call).await
                }
                other => other,
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(if call.retry { self.retries } else { 0 })
            .with_jitter();
        // An unreadable answer is retried only a little: the same bytes usually come back, and
        // the caller has a way around them (the poller reads such a folder item by item).
        let malformed = std::sync::atomic::AtomicUsize::new(0);
        attempt
            .retry(backoff)
            .notify(|e: &CallError, wait: Duration| {
                if let CallError::Graph(g) = e {
                    if g.kind == GraphErrorKind::Malformed {
                        malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::info!(
                        mailbox = gate.mailbox(), operation = call.operation, status = g.status, code = g.code.as_deref().unwrap_or(""),
                        request_id = g.request_id.as_deref().unwrap_or(""), client_request_id = %g.client_request_id,
                        retry_in_ms = wait.as_millis() as u64, "Graph request failed; retrying."
                    );
                }
            })
            .when(|e: &CallError| match e {
                CallError::Graph(g) => {
                    g.is_transient()
                        && g.retry_after.zip(call.max_retry_wait).is_none_or(|(wait, max)| wait <= max)
                        && !(g.kind == GraphErrorKind::Malformed
                            && malformed.load(std::sync::atomic::Ordering::Relaxed) >= MALFORMED_RETRIES)
                }
                CallError::Token(_) | CallError::Shape(_) => false,
            })
            .adjust(|e: &CallError, planned: Option<Duration>| match (e, planned) {
                // Retry-After was already applied to the gate; only add the planned jitter on top.
                (CallError::Graph(g), Some(p)) => Some(g.retry_after.map_or(p, |r| r.max(Duration::from_millis(1)))),
                (_, p) => p,
            })
            .await
    }

    /// One exchange with an explicit token and no retry (the consent flow checks a fresh
    /// grant with it before storing anything).
    pub async fn probe<T: Answer>(&self, gate: &MailboxGate, token: &AccessToken, call: &Call) -> Result<T, CallError> {
        self.once(gate, token, call).await
    }

    /// One HTTP exchange, no retry; a successful answer is read straight into `T` (no
    /// intermediate JSON tree: delta pages and `$batch` answers carry whole bodies).
    async fn once<T: Answer>(&self, gate: &MailboxGate, token: &AccessToken, call: &Call) -> Result<T, CallError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let url = match self.resolve(&call.url) {
            Ok(url) => url,
            Err(message) => {
                return Err(CallError::from(GraphError {
                    kind: GraphErrorKind::Rejected,
                    operation: call.operation,
                    status: None,
                    code: Some("ForeignLink".into()),
                    message,
                    request_id: None,
                    client_request_id,
                    retry_after: None,
                }));
            }
        };
        let mut req = self
            .http
            .request(call.method.clone(), &url)
            .bearer_auth(token.bearer())
            .header("client-request-id", &client_request_id)
            .header("return-client-request-id", "true")
            .timeout(self.timeout);
        for p in &call.prefer {
            req = req.header("Prefer", p);
        }
        req = match &call.body {
            Some(body) => req.json(body),
            // Graph requires Content-Length on body-less POSTs (`send`); reqwest omits it.
            None if call.method == Method::POST => req.header(reqwest::header::CONTENT_LENGTH, "0"),
            None => req,
        };
        let fail = |kind,
                    status: Option<u16>,
                    code: Option<String>,
                    message: String,
                    request_id: Option<String>,
                    retry: Option<Duration>| GraphError {
            kind,
            operation: call.operation,
            status,
            code,
            message,
            request_id,
            client_request_id: client_request_id.clone(),
            retry_after: retry,
        };
        let permit = gate.enter(call.weight).await;
        let global = self
            .global
            .acquire_many(call.weight)
            .await
            .expect("global semaphore is never closed");
        let sent = req.send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                drop((permit, global));
                self.metrics.graph_request(call.operation, "error");
                return Err(fail(
                    GraphErrorKind::Transport,
                    None,
                    None,
                    crate::auth::describe(&e),
                    None,
                    None,
                )
                .into());
            }
        };
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let wait = retry_after(resp.headers());
        if status == 429 || (status == 503 && wait.is_some()) {
            gate.pause_for(wait.unwrap_or(Duration::from_secs(1)));
        }
        let bytes = resp.bytes().await;
        drop((permit, global));
        self.metrics.graph_request(call.operation, &status.to_string());
        if status == 429 {
            self.metrics.graph_throttled.inc();
        }
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                return Err(fail(
                    GraphErrorKind::Transport,
                    Some(status),
                    None,
                    crate::auth::describe(&e),
                    request_id,
                    wait,
                )
                .into());
            }
        };
        if (200..300).contains(&status) {
            // An empty answer reads as `null` (what a `T` of `Value` or `()` expects).
            let body = if bytes.is_empty() {
                Bytes::from_static(b"null")
            } else {
                bytes
            };
            return match T::read(&body) {
                Ok((value, repaired)) => {
                    if repaired {
                        tracing::warn!(
                            mailbox = gate.mailbox(), operation = call.operation,
                            request_id = request_id.as_deref().unwrap_or(""), client_request_id = %client_request_id,
                            "Graph answered JSON with invalid escapes or bytes; they were replaced with U+FFFD."
                        );
                    }
                    Ok(value)
                }
                // Readable JSON without what `T` needs: the answer's shape, not the bytes.
                Err(e) if e.is_data() => Err(ShapeError {
                    operation: call.operation,
                    detail: e.to_string(),
                }
                .into()),
                Err(e) => Err(fail(
                    GraphErrorKind::Malformed,
                    Some(status),
                    None,
                    format!("unreadable JSON: {e}"),
                    request_id.clone(),
                    None,
                )
                .into()),
            };
        }
        let envelope: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let error = envelope.get("error").cloned().unwrap_or(Value::Null);
        let code = error.get("code").and_then(Value::as_str).map(str::to_string);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no error message")
            .to_string();
        let request_id = request_id.or_else(|| inner_request_id(&error));
        Err(fail(
            classify(status, code.as_deref()),
            Some(status),
            code,
            message,
            request_id,
            wait,
        )
        .into())
    }
}

impl Graph {
    /// The absolute URL of a call: a path is joined to the v1.0 base; an absolute URL (a
    /// `nextLink` or `deltaLink` from an answer) must point at the configured Graph host and
    /// scheme, or the bearer token would go wherever an answer says.
    fn resolve(&self, url: &str) -> Result<String, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Ok(format!("{}{}", self.base, url.trim_start_matches('/')));
        }
        let parsed = Url::parse(url).map_err(|e| format!("Graph gave a link that is not a URL: {e}"))?;
        let same = parsed.scheme() == self.base.scheme()
            && parsed.host_str() == self.base.host_str()
            && parsed.port_or_known_default() == self.base.port_or_known_default();
        if same {
            Ok(url.to_string())
        } else {
            Err(format!(
                "refusing a link to {}://{} (not the configured Graph host {}://{}): the token is not sent there",
                parsed.scheme(),
                parsed.host_str().unwrap_or(""),
                self.base.scheme(),
                self.base.host_str().unwrap_or("")
            ))
        }
    }
}

/// How a successful answer's body is read. Most answers are read by serde as they stand
/// ([`lenient_json`]); a delta page and a `$batch` answer have their own reading.
pub trait Answer: Sized {
    /// Reads `body`; the flag is true when invalid escapes or bytes were replaced.
    fn read(body: &Bytes) -> Result<(Self, bool), serde_json::Error>;
}

impl<T: DeserializeOwned> Answer for T {
    fn read(body: &Bytes) -> Result<(Self, bool), serde_json::Error> {
        lenient_json(body)
    }
}

/// Parses an answer; when strict parsing fails, once more with lone UTF-16 surrogate escapes
/// (`\ud800`, which malformed mail can carry) and invalid UTF-8 replaced by U+FFFD, so one odd
/// message does not make a whole page unreadable. The flag says whether anything was replaced.
/// A data error (readable JSON that is not a `T`) is returned as it is, never repaired.
fn lenient_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, bool), serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok((v, false)),
        Err(strict) if strict.is_data() => Err(strict),
        Err(strict) => from_text(&String::from_utf8_lossy(bytes))
            .map(|v| (v, true))
            .map_err(|e| if e.is_data() { e } else { strict }),
    }
}

/// Reads one value's JSON text (a delta item, a `$batch` part's body) as `T`, with the same
/// leniency as [`lenient_json`]: an answer's parts are held as text and each is read on its
/// own, so a lone surrogate spoils nothing, not even its own message.
pub(super) fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    match serde_json::from_str(text) {
        Err(strict) if !strict.is_data() => {
            serde_json::from_str(&repair_surrogates(text)).map_err(|e| if e.is_data() { e } else { strict })
        }
        other => other,
    }
}

/// Replaces `\uXXXX` escapes of unpaired surrogates with `\ufffd`; everything else is kept.
fn repair_surrogates(text: &str) -> String {
    fn escape_at(b: &[u8], i: usize) -> Option<u16> {
        if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') {
            let hex = std::str::from_utf8(b.get(i + 2..i + 6)?).ok()?;
            u16::from_str_radix(hex, 16).ok()
        } else {
            None
        }
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match escape_at(b, i) {
                Some(0xD800..=0xDBFF) => {
                    if matches!(escape_at(b, i + 6), Some(0xDC00..=0xDFFF)) {
                        i += 12;
                    } else {
                        out.push_str(&text[last..i]);
                        out.push_str("\\ufffd");
                        i += 6;
                        last = i;
                    }
                    continue;
                }
                Some(0xDC00..=0xDFFF) => {
                    out.push_str(&text[last..i]);
                    out.push_str("\\ufffd");
                    i += 6;
                    last = i;
                    continue;
                }
                // Any other escape (`\\`, `\"`, …) is two bytes: skip both so an escaped
                // backslash followed by `u` is not read as an escape.
                _ => {
                    i += 2;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// Percent-encodes one URL path segment (mailbox addresses, message ids) for Graph paths.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// What [`segment`] escapes: everything but RFC 3986's unreserved characters, so `@`, `/`, `+`,
/// `=` and spaces in addresses and ids can never change a path's meaning.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `innerError.request-id`, spelled however Graph spells it this time.
fn inner_request_id(error: &Value) -> Option<String> {
    let inner = error
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("innererror"))?
        .1;
    let id = inner
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("request-id") || k.eq_ignore_ascii_case("requestId"))?
        .1;
    id.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(base: &str) -> Graph {
        Graph::new(
            reqwest::Client::new(),
            &Url::parse(base).unwrap(),
            Duration::from_secs(5),
            Metrics::new(),
        )
    }

    #[test]
    fn links_are_followed_only_on_the_configured_host_and_scheme() {
        let g = graph("https://graph.microsoft.com");
        assert_eq!(
            g.resolve("users/a%40b.test/messages").unwrap(),
            "https://graph.microsoft.com/v1.0/users/a%40b.test/messages"
        );
        let next = "https://graph.microsoft.com/v1.0/users/x/mailFolders/inbox/messages/delta?$skiptoken=1";
        assert_eq!(g.resolve(next).unwrap(), next);
        for foreign in [
            "http://graph.microsoft.com/v1.0/users/x/messages/delta?$skiptoken=1",
            "https://evil.example/v1.0/users/x/messages/delta?$skiptoken=1",
            "https://graph.microsoft.com:8443/v1.0/users/x/messages",
            "https://graph.microsoft.com.evil.example/v1.0/x",
        ] {
            let err = g.resolve(foreign).unwrap_err();
            assert!(err.contains("not the configured Graph host"), "{foreign}: {err}");
        }
    }

    #[test]
    fn path_segments_escape_everything_that_could_change_the_path() {
        assert_eq!(segment("support@contoso.com"), "support%40contoso.com");
        assert_eq!(segment("AAMkAD+/=="), "AAMkAD%2B%2F%3D%3D");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(segment("inbox"), "inbox");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn lone_surrogates_are_replaced_and_pairs_and_escapes_kept() {
        let page = br#"{"value":[{"id":"1","subject":"bad \ud800 here"},{"id":"2","subject":"pair \ud83d\ude00 and \\u not an escape \udc00"}]}"#;
        assert!(
            serde_json::from_slice::<Value>(page).is_err(),
            "serde_json must refuse it"
        );
        let (value, repaired) = lenient_json::<Value>(page).unwrap();
        assert!(repaired);
        assert_eq!(value["value"][0]["subject"], "bad \u{fffd} here");
        assert_eq!(
            value["value"][1]["subject"],
            "pair \u{1f600} and \\u not an escape \u{fffd}"
        );
        let (clean, repaired) = lenient_json::<Value>(br#"{"a":"\u00e9"}"#).unwrap();
        assert!(!repaired);
        assert_eq!(clean["a"], "\u{e9}");
        assert!(
            lenient_json::<Value>(br#"{"value":[{"id":"1","subj"#).is_err(),
            "truncated stays an error"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = lenient_json::<Value>(&bytes);
        }

        #[test]
        fn any_string_with_stray_surrogates_still_parses(text in "\\PC{0,40}", cut in 0usize..40, unit in 0xD800u16..0xE000) {
            // A valid JSON string with a surrogate escape spliced in at a char boundary.
            let encoded = serde_json::to_string(&text).unwrap();
            let inner = &encoded[1..encoded.len() - 1];
            let mut at = cut.min(inner.len());
            while !inner.is_char_boundary(at) || inner[..at].ends_with('\\') {
                at -= 1;
            }
            let spliced = format!("{{\"s\":\"{}\\u{unit:04x}{}\"}}", &inner[..at], &inner[at..]);
            let (value, _) = lenient_json::<Value>(spliced.as_bytes()).expect("repaired");
            proptest::prop_assert!(value["s"].is_string());
        }

        #[test]
        fn retry_after_is_bounded_whatever_graph_sends(value in "\\PC{0,30}") {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
                headers.insert(reqwest::header::RETRY_AFTER, v);
            }
            if let Some(wait) = retry_after(&headers) {
                proptest::prop_assert!(wait <= crate::domain::MAX_WIRE_WAIT);
            }
        }

        #[test]
        fn wire_seconds_never_panic(secs in proptest::num::f64::ANY) {
            if let Some(d) = crate::domain::bounded_secs(secs, crate::domain::MAX_WIRE_WAIT) {
                proptest::prop_assert!(d <= crate::domain::MAX_WIRE_WAIT);
            }
        }
    }
}
