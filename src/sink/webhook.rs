//! The webhook sink: each event POSTed as a signed JSON body; only a 2xx acknowledges.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::hmac;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{EncodedEvent, EventSink, SinkError, deliver_all};
use crate::event::SinkEvent;

/// Header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Inboxd-Timestamp";
/// Header carrying the signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Inboxd-Signature";
/// Header carrying the event's `event_id`.
pub const EVENT_ID_HEADER: &str = "X-Inboxd-Event-Id";
/// Header carrying the event's `dedup_key`.
pub const DEDUP_KEY_HEADER: &str = "X-Inboxd-Dedup-Key";

/// Events of one batch in flight at once.
const MAX_IN_FLIGHT: usize = 8;
/// Attempts per event before giving up as `Unavailable`: few, because the mailbox then backs
/// off without holding any shared permit and delivers the page again later.
const MAX_ATTEMPTS: usize = 3;
/// A receiver asking to wait longer than this is treated as unavailable for now, rather
/// than holding the mailbox's batch hostage.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Bytes of a rejecting receiver's answer quoted in the rejection reason.
const MAX_REASON_BODY: usize = 300;

/// POSTs each event to a receiver, signed.
///
/// # Signature scheme (for receivers)
///
/// Every request is `POST <url>` with `Content-Type: application/json`, one
/// `inboxd.message.v1` event as the body, and these headers:
///
/// - `X-Inboxd-Timestamp: <t>`: Unix time in seconds when this attempt was signed
///   (a retry is signed afresh);
/// - `X-Inboxd-Signature: v1=<hex>`: lowercase hex of HMAC-SHA256, keyed with the
///   configured signing secret (its UTF-8 bytes), over `<t>` + `.` + the raw body bytes;
/// - `X-Inboxd-Event-Id` and `X-Inboxd-Dedup-Key`: the event's `event_id` and `dedup_key`.
///
/// A receiver recomputes the HMAC over the exact bytes it received (before any JSON
/// parsing), compares it with the header in constant time, and rejects a timestamp more
/// than 5 minutes away from its own clock, so a captured request cannot be replayed later.
/// Deliveries are at least once: deduplicate on `dedup_key`.
///
/// Answers: any 2xx acknowledges. 400, 413 and 422 reject this event (it is quarantined with
/// the receiver's answer). Anything else (redirects, which are never followed, 401, 403, 404,
/// 408, 429, 5xx, timeouts and connection errors) is retried a few times with exponential
/// backoff and jitter (`Retry-After` honoured, in seconds or as an HTTP date), then reported
/// `Unavailable`: the mailbox waits and delivers again later.
pub struct WebhookSink {
    /// Shared HTTP client (connection pool, TLS roots).
    http: reqwest::Client,
    /// Receiver.
    url: Url,
    /// HMAC key derived from the signing secret; never printed.
    key: Box<hmac::Key>,
    /// Per-request timeout.
    timeout: Duration,
    /// Retry schedule (shortened in tests).
    backoff: ExponentialBuilder,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url.as_str())
            .field("signing_secret", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt, possibly after the receiver's `Retry-After`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Permanent.
    Permanent(String),
}

impl WebhookSink {
    /// A sink POSTing to `url`, signing with `signing_secret`, each request bounded by `timeout`.
    pub fn new(http: reqwest::Client, url: Url, signing_secret: SecretString, timeout: Duration) -> WebhookSink {
        let key = hmac::Key::new(hmac::HMAC_SHA256, signing_secret.expose_secret().as_bytes());
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(MAX_ATTEMPTS - 1);
        WebhookSink {
            http,
            url,
            key: Box::new(key),
            timeout,
            backoff,
        }
    }

    /// Same sink with another retry schedule (tests use millisecond delays).
    #[cfg(test)]
    fn with_min_delay(mut self, min_delay: Duration) -> WebhookSink {
        self.backoff = self.backoff.with_min_delay(min_delay).with_max_delay(min_delay * 8);
        self
    }

    /// Encodes and delivers typed events (see [`EventSink::deliver_encoded`]).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        deliver_all(self, events).await
    }

    async fn deliver_one(&self, event: &EncodedEvent<'_>) -> Result<(), SinkError> {
        let body = event.json.clone();
        let ids = match (
            HeaderValue::from_str(event.event_id),
            HeaderValue::from_str(event.dedup_key),
        ) {
            (Ok(id), Ok(key)) => (id, key),
            _ => {
                return Err(SinkError::Rejected(
                    "event_id or dedup_key is not a valid HTTP header value".into(),
                ));
            }
        };
        let attempt = || self.attempt(body.clone(), &ids);
        let result = attempt
            .retry(self.backoff)
            .when(|f| matches!(f, Failure::Transient { .. }))
            .adjust(pause)
            .notify(|f, wait| {
                tracing::warn!(
                    mailbox = %event.mailbox,
                    event_id = %event.event_id,
                    error = ?f,
                    wait_ms = wait.as_millis() as u64,
                    "Webhook delivery failed; retrying."
                );
            })
            .await;
        result.map_err(|f| match f {
            Failure::Transient {
                reason,
                retry_after: Some(wait),
            } if wait > MAX_RETRY_AFTER => {
                SinkError::Unavailable(format!("{reason} (receiver asked to retry after {}s)", wait.as_secs()))
            }
            Failure::Transient { reason, .. } => {
                SinkError::Unavailable(format!("{reason} (gave up after {MAX_ATTEMPTS} attempts)"))
            }
            Failure::Permanent(reason) => SinkError::Rejected(reason),
        })
    }

    /// One signed POST.
    async fn attempt(&self, body: Bytes, (event_id, dedup_key): &(HeaderValue, HeaderValue)) -> Result<(), Failure> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(&self.key, timestamp, &body);
        let response = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, event_id.clone())
            .header(DEDUP_KEY_HEADER, dedup_key.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Transient {
                reason: describe(e),
                retry_after: None,
            })?;
        let status = response.status();
        if response.url() != &self.url {
            // A client that follows redirects turned the POST into a GET somewhere else: what
            // answered is not the receiver, whatever its status.
            return Err(Failure::Transient {
                reason: format!(
                    "webhook redirected to {} (redirects are never followed)",
                    strip_query(response.url())
                ),
                retry_after: None,
            });
        }
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let answer = format!("webhook answered {status}");
        if status.is_redirection() {
            // Where it points says what is wrong (an auth proxy, a moved route); the query is
            // left out, it may carry tokens.
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| l.split('?').next().unwrap_or_default().to_string())
                .unwrap_or_else(|| "nowhere".into());
            return Err(Failure::Transient {
                reason: format!("{answer}, a redirect to {location} (redirects are never followed)"),
                retry_after,
            });
        }
        if !rejects_event(status) {
            return Err(Failure::Transient {
                reason: answer,
                retry_after,
            });
        }
        let excerpt = body_excerpt(response).await;
        Err(Failure::Permanent(if excerpt.is_empty() {
            answer
        } else {
            format!("{answer}: {excerpt}")
        }))
    }
}

#[async_trait]
impl EventSink for WebhookSink {
    /// POSTs every event, at most [`MAX_IN_FLIGHT`] at once; one outcome per event, in order.
    async fn deliver_encoded(&self, events: &[EncodedEvent<'_>]) -> Vec<Result<(), SinkError>> {
        // The futures are collected first so no closure is part of the stream's type: with
        // one, rustc cannot prove the future `Send` for `tokio::spawn`
        // (https://github.com/rust-lang/rust/issues/102211).
        let attempts: Vec<_> = events.iter().map(|event| self.deliver_one(event)).collect();
        futures_util::stream::iter(attempts)
            .buffered(MAX_IN_FLIGHT)
            .collect()
            .await
    }
}

/// Statuses that say this event is bad, not the receiver unavailable: 400, 413, 422. A 401,
/// 403 or 404 is a rotated secret, a WAF or a moved route, fixed on the receiver's side, after
/// which the same event is welcome: retried, never quarantined.
fn rejects_event(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// How long to wait before the next attempt: the receiver's `Retry-After` when it gave
/// one, else the backoff's; `None` (give up for now) when out of attempts or when the
/// receiver wants a longer pause than we hold a mailbox's batch for.
fn pause(failure: &Failure, backoff: Option<Duration>) -> Option<Duration> {
    let backoff = backoff?;
    match failure {
        Failure::Transient {
            retry_after: Some(wait),
            ..
        } if *wait > MAX_RETRY_AFTER => None,
        Failure::Transient {
            retry_after: Some(wait),
            ..
        } => Some(*wait),
        _ => Some(backoff),
    }
}

/// A URL without its query (which may carry tokens), for log lines and reasons.
fn strip_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// `v1=` + lowercase hex HMAC-SHA256 over `<timestamp>.<body>`.
fn sign(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `Retry-After` as seconds (integer or decimal) or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return crate::domain::bounded_secs(secs, crate::domain::MAX_WIRE_WAIT);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A transport error with its causes, without the URL (it may carry credentials).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut out = format!("webhook {kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The start of a rejecting receiver's answer, on one line, for the quarantine reason.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_REASON_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON_BODY)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
