//! Graph failures, classified by status and Graph's error code.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::domain::{MAX_WIRE_WAIT, bounded_secs};

/// What kind of failure, as callers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphErrorKind {
    /// 429: slow down.
    Throttled,
    /// 5xx: Graph is failing.
    Server,
    /// No answer (timeout, connection reset, refused).
    Transport,
    /// A 2xx whose body could not be read.
    Malformed,
    /// 401: the token was refused.
    Unauthorized,
    /// 403: the app may not open this mailbox.
    AccessDenied,
    /// 404 for the mailbox itself (MailboxNotEnabledForRESTAPI, ResourceNotFound, ErrorInvalidUser).
    MailboxNotFound,
    /// 404 for an item.
    ItemNotFound,
    /// The delta token is gone (410 SyncStateNotFound, resyncRequired).
    SyncStateNotFound,
    /// Any other 4xx: our request was wrong.
    Rejected,
}

/// A failed Graph request, with the ids on-call needs to ask Microsoft about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Graph {operation} failed ({kind:?}, status {status:?}, code {code:?}): {message}")]
pub struct GraphError {
    /// Classification.
    pub kind: GraphErrorKind,
    /// Which operation (metric label).
    pub operation: &'static str,
    /// HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// Graph's `error.code`.
    pub code: Option<String>,
    /// Graph's `error.message` or the transport error.
    pub message: String,
    /// Graph's `request-id`.
    pub request_id: Option<String>,
    /// The `client-request-id` inboxd sent.
    pub client_request_id: String,
    /// `Retry-After`, when given.
    pub retry_after: Option<Duration>,
}

impl GraphError {
    /// Worth retrying with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            GraphErrorKind::Throttled | GraphErrorKind::Server | GraphErrorKind::Transport | GraphErrorKind::Malformed
        )
    }
}

/// Parses `Retry-After`: decimal seconds (Graph sends `2.128`) or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return bounded_secs(secs, MAX_WIRE_WAIT);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_WIRE_WAIT),
    )
}

/// Classifies a non-2xx answer.
pub fn classify(status: u16, code: Option<&str>) -> GraphErrorKind {
    let code_is = |names: &[&str]| code.is_some_and(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)));
    if status == 410 || code_is(&["SyncStateNotFound", "resyncRequired", "SyncStateInvalid"]) {
        return GraphErrorKind::SyncStateNotFound;
    }
    match status {
        429 => GraphErrorKind::Throttled,
        401 => GraphErrorKind::Unauthorized,
        403 => GraphErrorKind::AccessDenied,
        404 if code_is(&[
            "MailboxNotEnabledForRESTAPI",
            "ResourceNotFound",
            "ErrorInvalidUser",
            "MailboxNotFound",
        ]) =>
        {
            GraphErrorKind::MailboxNotFound
        }
        404 => GraphErrorKind::ItemNotFound,
        408 => GraphErrorKind::Transport,
        s if s >= 500 => GraphErrorKind::Server,
        _ => GraphErrorKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_decimal_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2.128".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(2128)));
        h.insert("retry-after", "10".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(10)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(28) && d <= Duration::from_secs(30), "{d:?}");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn codes_classify() {
        assert_eq!(
            classify(410, Some("SyncStateNotFound")),
            GraphErrorKind::SyncStateNotFound
        );
        assert_eq!(classify(400, Some("resyncRequired")), GraphErrorKind::SyncStateNotFound);
        assert_eq!(
            classify(404, Some("MailboxNotEnabledForRESTAPI")),
            GraphErrorKind::MailboxNotFound
        );
        assert_eq!(classify(404, Some("ErrorItemNotFound")), GraphErrorKind::ItemNotFound);
        assert_eq!(classify(503, None), GraphErrorKind::Server);
        assert_eq!(classify(429, Some("ApplicationThrottled")), GraphErrorKind::Throttled);
    }
}
