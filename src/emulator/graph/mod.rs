//! Graph v1.0 mail endpoints: authentication, mailbox resolution, throttling, dispatch.

mod attachments;
mod batch;
mod compose;
mod delta;
mod errors;
mod input;
mod messages;
mod render;
mod routes;
pub(crate) mod subscriptions;

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;

pub(crate) use attachments::upload_chunk;
pub(crate) use errors::{GraphError, RequestIds};
pub(crate) use subscriptions::{control_routes as subscription_routes, spawn_dispatcher};

use super::log::Facts;
use super::middleware::RequestSeq;
use super::model::BodyType;
use super::{Emulator, Shared};

/// One Graph request, from the wire or from inside a `$batch`.
pub(crate) struct GraphRequest {
    /// Method.
    pub(crate) method: Method,
    /// Path after `/v1.0`, e.g. `/users/a@b/messages`.
    pub(crate) path: String,
    /// Raw query string.
    pub(crate) query: Option<String>,
    /// Request headers.
    pub(crate) headers: HeaderMap,
    /// Body.
    pub(crate) body: Bytes,
}

/// `Prefer` header values that change answers.
#[derive(Default, Clone)]
pub(crate) struct Prefer {
    /// `IdType="ImmutableId"`.
    pub(crate) immutable_ids: bool,
    /// `outlook.body-content-type`.
    pub(crate) body_type: Option<BodyType>,
    /// `odata.maxpagesize`.
    pub(crate) max_page_size: Option<usize>,
    /// `outlook.allow-unsafe-html`.
    pub(crate) allow_unsafe_html: bool,
}

impl Prefer {
    fn parse(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
            for part in value.split(',') {
                let (name, val) = part
                    .split_once('=')
                    .map(|(n, v)| (n.trim(), v.trim().trim_matches('"')))
                    .unwrap_or((part.trim(), ""));
                match name.to_ascii_lowercase().as_str() {
                    "idtype" => prefer.immutable_ids = val.eq_ignore_ascii_case("ImmutableId"),
                    "outlook.body-content-type" => prefer.body_type = BodyType::parse(val),
                    "odata.maxpagesize" => prefer.max_page_size = val.parse().ok().filter(|n| *n > 0),
                    "outlook.allow-unsafe-html" => prefer.allow_unsafe_html = true,
                    _ => {}
                }
            }
        }
        prefer
    }

    /// The `Preference-Applied` value for what was honoured.
    pub(crate) fn applied(&self, page_size_used: bool) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(t) = self.body_type {
            parts.push(format!("outlook.body-content-type=\"{}\"", t.as_str()));
        }
        if self.immutable_ids {
            parts.push("IdType=\"ImmutableId\"".into());
        }
        if page_size_used && let Some(n) = self.max_page_size {
            parts.push(format!("odata.maxpagesize={n}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Who is calling: from the verified access token.
#[derive(Clone)]
pub(crate) struct Caller {
    /// `appid`.
    pub(crate) app: String,
    /// `tid`.
    pub(crate) tenant: String,
    /// App-only roles.
    pub(crate) roles: Vec<String>,
    /// Delegated: the user's address and scopes.
    pub(crate) user: Option<(String, Vec<String>)>,
}

/// What an operation needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Read mail.
    Read,
    /// Change mail.
    Write,
    /// Send mail.
    Send,
}

/// Everything a route handler gets.
pub(crate) struct Ctx<'a> {
    /// The emulator.
    pub(crate) emu: &'a Emulator,
    /// Mailbox key (address).
    pub(crate) address: String,
    /// The user segment as the client wrote it (`me` or id/address), for links.
    pub(crate) user_segment: String,
    /// Prefer header.
    pub(crate) prefer: Prefer,
    /// Query parameters (names lower-cased).
    pub(crate) query: HashMap<String, String>,
    /// Emulator time.
    pub(crate) now: OffsetDateTime,
}

impl Ctx<'_> {
    /// A query parameter by name (`$select`, `$filter`, …), case-insensitive.
    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        self.query.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// `$select` as lower-cased property names.
    pub(crate) fn select(&self) -> Option<Vec<String>> {
        self.q("$select").map(|s| {
            s.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        })
    }
}

/// Handler of every `/v1.0/…` request on the wire.
pub(crate) async fn entry(
    State(emu): State<Shared>,
    seq: Option<Extension<RequestSeq>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix("/v1.0").unwrap_or(uri.path()).to_string();
    let request = GraphRequest {
        method,
        path,
        query: uri.query().map(str::to_string),
        headers,
        body,
    };
    let resp = if request.path.eq_ignore_ascii_case("/$batch") {
        if request.method != Method::POST {
            return GraphError::new(StatusCode::METHOD_NOT_ALLOWED, "BadRequest", "$batch takes POST.")
                .render(emu.clock.now(), "", "")
                .into_response();
        }
        batch::handle_batch(&emu, request, seq.map(|Extension(RequestSeq(s))| s)).await
    } else {
        handle(&emu, request).await
    };
    if emu.world().malformed_messages {
        break_marked(resp).await
    } else {
        resp
    }
}

/// Turns the marks left by messages delivered with `malformed` into what they stand for:
/// a lone surrogate escape, or the end of the answer.
async fn break_marked(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if !text.contains(render::LONE_SURROGATE_MARK) && !text.contains(render::TRUNCATE_MARK) {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut out = text.replace(render::LONE_SURROGATE_MARK, "\\ud800");
    if let Some(cut) = out.find(render::TRUNCATE_MARK) {
        out.truncate(cut);
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// Runs one Graph request: authenticate, resolve, authorize, throttle, dispatch.
pub(crate) async fn handle(emu: &Shared, request: GraphRequest) -> Response {
    let ids = RequestIds::from_headers(&request.headers);
    let now = emu.clock.now();
    let mut facts = Facts::default();
    let result = run(emu, &request, &mut facts, now).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => err.render(now, &ids.request_id, &ids.client_request_id),
    };
    ids.stamp(&mut resp);
    resp.extensions_mut().insert(facts);
    resp
}

async fn run(
    emu: &Shared,
    request: &GraphRequest,
    facts: &mut Facts,
    now: OffsetDateTime,
) -> Result<Response, GraphError> {
    let caller = authenticate(emu, &request.headers, facts, now)?;
    let segments = routes::segments(&request.path);
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    if lower.first().is_some_and(|s| s == "subscriptions") {
        return subscriptions::handle(emu, &caller, request, &segments, now).await;
    }
    let (user_segment, rest) = match lower.first().map(String::as_str) {
        Some("me") => ("me".to_string(), 1),
        Some("users") if segments.len() >= 2 => (segments[1].clone(), 2),
        _ => {
            return Err(GraphError::bad_request(
                "BadRequest",
                format!(
                    "Resource not found for the segment '{}'.",
                    segments.first().cloned().unwrap_or_default()
                ),
            ));
        }
    };
    let address = resolve_mailbox(emu, &caller, &user_segment)?;
    facts.mailbox = Some(address.clone());
    let need = routes::need(&request.method, &lower[rest..]);
    authorize(emu, &caller, &address, need)?;
    let settings = emu.settings();
    let _permit = emu
        .limits
        .admit(&caller.app, &address, emu.clock.unix_f64(), &settings)
        .map_err(|t| GraphError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: t.code.into(),
            message: t.message.into(),
            retry_after: Some(format!("{:.3}", t.retry_after)),
            bare: t.code == "ApplicationThrottled",
            location: None,
        })?;
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    let query: HashMap<String, String> = request
        .query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let ctx = Ctx {
        emu,
        address,
        user_segment,
        prefer: Prefer::parse(&request.headers),
        query,
        now,
    };
    routes::dispatch(&ctx, request, &segments[rest..], &lower[rest..])
}

/// Verifies the bearer token: signature, lifetime, audience.
fn authenticate(
    emu: &Emulator,
    headers: &HeaderMap,
    facts: &mut Facts,
    now: OffsetDateTime,
) -> Result<Caller, GraphError> {
    let unauthorized = |msg: &str| GraphError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", msg);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        facts.token = Some("none");
        return Err(unauthorized("Access token is empty."));
    };
    let Some(claims) = emu.keys.verify(token) else {
        facts.token = Some("invalid");
        return Err(unauthorized("IDX14100: JWT is not well formed, there are no dots (.)."));
    };
    facts.app = claims["appid"].as_str().map(str::to_string);
    if claims["exp"].as_i64().unwrap_or(0) <= now.unix_timestamp() {
        facts.token = Some("expired");
        return Err(unauthorized("Lifetime validation failed, the token is expired."));
    }
    if claims["aud"].as_str() != Some("https://graph.microsoft.com") {
        facts.token = Some("invalid");
        return Err(unauthorized("Invalid audience."));
    }
    facts.token = Some("valid");
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        }
    };
    let user = (claims["idtyp"].as_str() == Some("user")).then(|| {
        (
            claims["upn"].as_str().unwrap_or_default().to_ascii_lowercase(),
            list(&claims["scp"]),
        )
    });
    Ok(Caller {
        app: claims["appid"].as_str().unwrap_or_default().to_string(),
        tenant: claims["tid"].as_str().unwrap_or_default().to_string(),
        roles: list(&claims["roles"]),
        user,
    })
}

/// Mailbox key for `me` or `users/{id|address}`.
fn resolve_mailbox(emu: &Emulator, caller: &Caller, segment: &str) -> Result<String, GraphError> {
    let world = emu.world();
    if segment == "me" {
        return match &caller.user {
            Some((address, _)) if world.mailboxes.contains_key(address) => Ok(address.clone()),
            _ => Err(GraphError::bad_request(
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )),
        };
    }
    let Some(address) = world.resolve_mailbox(segment) else {
        let domain_known = segment
            .rsplit_once('@')
            .is_some_and(|(_, d)| world.domains.contains_key(&d.to_ascii_lowercase()));
        return Err(if domain_known {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        } else {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "Resource could not be discovered.",
            )
        });
    };
    if world.mailboxes[&address].tenant_id != caller.tenant.to_ascii_lowercase() {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. The token's tenant does not own this mailbox.",
        ));
    }
    Ok(address)
}

/// Permission check: app roles (and the access policy) or delegated scopes and user.
fn authorize(emu: &Emulator, caller: &Caller, address: &str, need: Need) -> Result<(), GraphError> {
    let has =
        |granted: &[String], names: &[&str]| granted.iter().any(|g| names.iter().any(|n| g.eq_ignore_ascii_case(n)));
    let names: &[&str] = match need {
        Need::Read => &["Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "Mail.ReadBasic.All"],
        Need::Write => &["Mail.ReadWrite"],
        Need::Send => &["Mail.Send"],
    };
    match &caller.user {
        Some((user, scopes)) => {
            if user != address || !has(scopes, names) {
                return Err(GraphError::access_denied());
            }
        }
        None => {
            if let Some(m) = emu.world().mailboxes.get(address).filter(|m| m.denied) {
                let message = if m.denied_by_policy {
                    "Access to OData is disabled."
                } else {
                    "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
                };
                return Err(GraphError::new(StatusCode::FORBIDDEN, "ErrorAccessDenied", message));
            }
            if !has(&caller.roles, names) {
                return Err(GraphError::access_denied());
            }
        }
    }
    Ok(())
}
