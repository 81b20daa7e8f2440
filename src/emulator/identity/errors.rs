//! Identity-platform error bodies and the AADSTS codes the emulator produces.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;

use super::super::util::{aad_time, guid};

/// An OAuth error as the token endpoint returns it.
#[derive(Debug, Clone)]
pub(crate) struct OAuthError {
    /// HTTP status: 400, or 401 for `invalid_client`.
    pub(crate) status: StatusCode,
    /// OAuth `error`.
    pub(crate) error: String,
    /// AADSTS code.
    pub(crate) code: u32,
    /// Text after `AADSTSnnnnn: `.
    pub(crate) text: String,
    /// `suberror`, where Entra sends one.
    pub(crate) suberror: Option<&'static str>,
    /// Whether a `claims` challenge accompanies it (MFA, Conditional Access).
    pub(crate) claims: bool,
}

/// The error for an AADSTS code, worded as Entra words it (`detail` fills in names).
pub(crate) fn aadsts_error(code: u32, detail: &str) -> OAuthError {
    use StatusCode as S;
    let (status, error, suberror, claims, text): (StatusCode, &'static str, Option<&'static str>, bool, String) = match code {
        50173 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.".into()),
        70008 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.".into()),
        700082 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The refresh token has expired due to inactivity. The token was issued and was inactive for 90.00:00:00.".into()),
        700084 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The refresh token was issued to a single page app (SPA), and therefore has a fixed, limited lifetime of 1.00:00:00, which cannot be extended.".into()),
        70043 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.".into()),
        50089 => (S::BAD_REQUEST, "invalid_grant", None, false, "Authentication failed due to flow token expired.".into()),
        50132 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The session is not valid due to password expiration or recent password change.".into()),
        50133 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "Session is invalid due to expiration or recent password change.".into()),
        50055 => (S::BAD_REQUEST, "invalid_grant", Some("user_password_expired"), false, "The password is expired.".into()),
        50057 => (S::BAD_REQUEST, "invalid_grant", None, false, "The user account is disabled.".into()),
        50053 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "Your account is locked because you've tried to sign in too many times with an incorrect user ID or password.".into()),
        65001 => (S::BAD_REQUEST, "invalid_grant", Some("consent_required"), false, format!(
            "The user or administrator has not consented to use the application{detail}. Send an interactive authorization request for this user and resource.")),
        65004 => (S::BAD_REQUEST, "invalid_grant", Some("consent_required"), false, "User declined to consent to access the app.".into()),
        90094 => (S::BAD_REQUEST, "invalid_grant", Some("consent_required"), false,
            "Admin consent is required for the permissions requested by this application.".into()),
        50076 => (S::BAD_REQUEST, "invalid_grant", Some("basic_action"), true,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.".into()),
        50079 => (S::BAD_REQUEST, "interaction_required", None, true,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.".into()),
        50074 => (S::BAD_REQUEST, "interaction_required", None, true, "Strong Authentication is required.".into()),
        50072 => (S::BAD_REQUEST, "interaction_required", None, true,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication.".into()),
        53000 | 53001 => (S::BAD_REQUEST, "invalid_grant", Some("additional_action"), true,
            "Device is not in required device state. Conditional Access policy requires a compliant or domain joined device.".into()),
        53003 => (S::BAD_REQUEST, "invalid_grant", Some("message_only"), true,
            "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.".into()),
        530035 => (S::BAD_REQUEST, "invalid_grant", Some("message_only"), false,
            "Access has been blocked by security defaults. This is due to the request using legacy auth or being deemed unsafe by security defaults policies.".into()),
        7000215 => (S::UNAUTHORIZED, "invalid_client", None, false, format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{detail}'.")),
        7000222 => (S::UNAUTHORIZED, "invalid_client", None, false, format!(
            "The provided client secret keys for app '{detail}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")),
        7000218 => (S::UNAUTHORIZED, "invalid_client", None, false,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into()),
        700027 => (S::UNAUTHORIZED, "invalid_client", None, false, format!("Client assertion contains an invalid signature. [Reason - {detail}]")),
        700024 => (S::UNAUTHORIZED, "invalid_client", None, false, "Client assertion is not within its valid time range.".into()),
        700023 => (S::UNAUTHORIZED, "invalid_client", None, false, format!("Client assertion audience claim does not match Realm issuer. {detail}")),
        700021 => (S::UNAUTHORIZED, "invalid_client", None, false, format!("Client assertion application identifier doesn't match 'client_id' parameter. {detail}")),
        700016 => (S::BAD_REQUEST, "unauthorized_client", None, false, format!(
            "Application with identifier '{detail}' was not found in the directory. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.")),
        90002 => (S::BAD_REQUEST, "invalid_request", None, false, format!(
            "Tenant '{detail}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.")),
        9001023 => (S::BAD_REQUEST, "invalid_request", None, false,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.".into()),
        70011 => (S::BAD_REQUEST, "invalid_scope", None, false, format!(
            "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {detail} is not valid.")),
        900144 => (S::BAD_REQUEST, "invalid_request", None, false, format!("The request body must contain the following parameter: '{detail}'.")),
        70003 => (S::BAD_REQUEST, "unsupported_grant_type", None, false, format!("The app requested an unsupported grant type '{detail}'.")),
        54005 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.".into()),
        501481 => (S::BAD_REQUEST, "invalid_grant", None, false, "The Code_Verifier does not match the code_challenge supplied in the authorization request.".into()),
        50148 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.".into()),
        500112 => (S::BAD_REQUEST, "invalid_grant", None, false, format!(
            "The reply address '{detail}' does not match the reply address provided when requesting Authorization code.")),
        9002313 => (S::BAD_REQUEST, "invalid_grant", None, false, "Invalid request. Request is malformed or invalid.".into()),
        50196 => (S::BAD_REQUEST, "invalid_grant", None, false,
            "The server terminated an operation because it encountered a client request loop. Please contact your app vendor.".into()),
        90055 => (S::TOO_MANY_REQUESTS, "temporarily_unavailable", None, false,
            "Too many requests from this tenant. Please try again later.".into()),
        other => (S::BAD_REQUEST, "invalid_grant", None, false, format!("Error {other}.")),
    };
    OAuthError {
        status,
        error: error.to_string(),
        code,
        text,
        suberror,
        claims,
    }
}

/// `temporarily_unavailable` without a specific AADSTS code.
pub(crate) fn oauth_error_response(status: Option<u16>, error: &str, now: OffsetDateTime) -> Response {
    let status = status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let trace = guid();
    let correlation = guid();
    let body = json!({
        "error": error,
        "error_description": format!(
            "The service is temporarily unavailable. Please try again.\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {}",
            aad_time(now)
        ),
        "error_codes": [],
        "timestamp": aad_time(now),
        "trace_id": trace,
        "correlation_id": correlation,
    });
    finish(status, body, &trace)
}

impl OAuthError {
    /// The wire response at time `now`.
    pub(crate) fn into_response_at(self, now: OffsetDateTime) -> Response {
        let trace = guid();
        let correlation = guid();
        let stamp = aad_time(now);
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {stamp}",
                self.code, self.text
            ),
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let Some(sub) = self.suberror {
            body["suberror"] = json!(sub);
        }
        if self.claims {
            let claims = json!({"access_token": {"capolids": {"essential": true, "values": [guid()]}}});
            body["claims"] = json!(claims.to_string());
        }
        finish(self.status, body, &trace)
    }
}

fn finish(status: StatusCode, body: serde_json::Value, trace: &str) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(trace) {
        h.insert("x-ms-request-id", v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}
