//! Graph's error envelope and the response headers every Graph answer carries.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;

use crate::emulator::util::inner_error_date;

/// A Graph error, rendered as `{"error":{"code","message","innerError":{…}}}`.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Graph's `error.code`.
    pub(crate) code: String,
    /// Graph's `error.message`.
    pub(crate) message: String,
    /// `Retry-After` header value (decimal seconds).
    pub(crate) retry_after: Option<String>,
    /// Omit `innerError` (Outlook's concurrency 429 has none).
    pub(crate) bare: bool,
    /// `Location` header (410 `SyncStateNotFound` points at a fresh delta request).
    pub(crate) location: Option<String>,
}

impl GraphError {
    /// An error with status, code and message.
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            bare: false,
            location: None,
        }
    }

    /// 400 with a code.
    pub(crate) fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for an item id that is not in the mailbox.
    pub(crate) fn item_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    /// 403 for a missing permission.
    pub(crate) fn access_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    /// 400 for a body that is not the JSON Graph expects.
    pub(crate) fn bad_body(message: impl Into<String>) -> Self {
        Self::bad_request("RequestBodyRead", message)
    }

    /// The status code's generic Graph error code (used by injected faults).
    pub(crate) fn code_for(status: StatusCode) -> &'static str {
        match status.as_u16() {
            400 => "BadRequest",
            401 => "InvalidAuthenticationToken",
            403 => "ErrorAccessDenied",
            404 => "ResourceNotFound",
            409 => "ErrorIrresolvableConflict",
            410 => "SyncStateNotFound",
            429 => "TooManyRequests",
            500 => "InternalServerError",
            502 => "BadGateway",
            503 => "ServiceNotAvailable",
            504 => "GatewayTimeout",
            507 => "ErrorQuotaExceeded",
            _ => "UnknownError",
        }
    }

    /// The wire response; `request_id` and `client_request_id` go into `innerError`.
    pub(crate) fn render(&self, now: OffsetDateTime, request_id: &str, client_request_id: &str) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.bare {
            error["innerError"] = json!({
                "date": inner_error_date(now),
                "request-id": request_id,
                "client-request-id": client_request_id,
            });
        }
        let mut resp = (self.status, axum::Json(json!({"error": error}))).into_response();
        if let Some(v) = self.retry_after.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(v) = self.location.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
                ),
            );
        }
        resp
    }
}

/// Request ids for one Graph request: ours, and the client's (echoed, or made up).
pub(crate) struct RequestIds {
    /// `request-id`.
    pub(crate) request_id: String,
    /// `client-request-id`.
    pub(crate) client_request_id: String,
}

impl RequestIds {
    /// Takes the client's `client-request-id` when it sent one.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = uuid::Uuid::new_v4().to_string();
        let client_request_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| request_id.clone());
        RequestIds {
            request_id,
            client_request_id,
        }
    }

    /// Adds `request-id`, `client-request-id` and `x-ms-ags-diagnostic` to a response.
    pub(crate) fn stamp(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.client_request_id) {
            h.insert("client-request-id", v);
        }
        h.insert(
            "x-ms-ags-diagnostic",
            HeaderValue::from_static(r#"{"ServerInfo":{"DataCenter":"Emulator","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"inboxd-emulate"}}"#),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
}
