//! Maps a Graph path under `users/{id}` or `me` to its handler.

use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::{Ctx, GraphError, GraphRequest, Need, attachments, compose, delta, messages};

/// Path segments, percent-decoded, with OData key syntax split: `mailFolders('inbox')` →
/// `mailFolders`, `inbox`. Function calls lose their empty parentheses and a namespace
/// prefix: `delta()` and `microsoft.graph.delta()` are `delta`.
pub(crate) fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let mut decoded = percent_decode(raw);
        if decoded.len() > "microsoft.graph.".len()
            && decoded[.."microsoft.graph.".len()].eq_ignore_ascii_case("microsoft.graph.")
        {
            decoded = decoded["microsoft.graph.".len()..].to_string();
        }
        if let Some(name) = decoded.strip_suffix("()") {
            out.push(name.to_string());
            continue;
        }
        match decoded.split_once('(') {
            Some((name, rest)) if rest.ends_with(')') => {
                out.push(name.to_string());
                out.push(rest[..rest.len() - 1].trim_matches('\'').to_string());
            }
            _ => out.push(decoded),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// The permission an operation needs.
pub(crate) fn need(method: &Method, lower: &[String]) -> Need {
    let last = lower.last().map(String::as_str).unwrap_or_default();
    if matches!(last, "send" | "sendmail" | "reply" | "replyall" | "forward") {
        Need::Send
    } else if method == Method::GET {
        Need::Read
    } else {
        Need::Write
    }
}

fn not_found(path: &[String]) -> GraphError {
    GraphError::bad_request(
        "BadRequest",
        format!(
            "Resource not found for the segment '{}'.",
            path.last().cloned().unwrap_or_default()
        ),
    )
}

fn method_not_allowed() -> GraphError {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        "The HTTP method is not allowed for this resource.",
    )
}

/// Dispatches after `users/{id}`: `seg` keeps the ids' case, `lower` is for matching.
pub(crate) fn dispatch(
    ctx: &Ctx<'_>,
    req: &GraphRequest,
    seg: &[String],
    lower: &[String],
) -> Result<Response, GraphError> {
    let m = &req.method;
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    match l.as_slice() {
        [] if m == Method::GET => messages::user(ctx),
        ["mailfolders"] if m == Method::GET => delta::list_folders(ctx),
        ["mailfolders", _] if m == Method::GET => delta::get_folder(ctx, &seg[1]),
        ["mailfolders", _, "messages"] if m == Method::GET => messages::list(ctx, Some(&seg[1])),
        ["mailfolders", _, "messages"] if m == Method::POST => messages::create(ctx, Some(&seg[1]), &req.body),
        ["mailfolders", _, "messages", "delta"] if m == Method::GET => delta::delta(ctx, &seg[1]),
        ["mailfolders", _, "messages", _, ..] => message_op(ctx, req, &seg[3], &seg[4..], &l[4..]),
        ["messages"] if m == Method::GET => messages::list(ctx, None),
        ["messages"] if m == Method::POST => messages::create(ctx, None, &req.body),
        ["messages", _, ..] => message_op(ctx, req, &seg[1], &seg[2..], &l[2..]),
        ["sendmail"] if m == Method::POST => compose::send_mail(ctx, &req.body),
        ["mailfolders", ..] | ["messages", ..] | ["sendmail"] | [] => Err(method_not_allowed()),
        _ => Err(not_found(seg)),
    }
}

/// Operations on one message.
fn message_op(ctx: &Ctx<'_>, req: &GraphRequest, id: &str, seg: &[String], l: &[&str]) -> Result<Response, GraphError> {
    let m = &req.method;
    match l {
        [] if m == Method::GET => messages::get(ctx, id),
        [] if m == Method::PATCH => messages::patch(ctx, id, &req.body),
        [] if m == Method::DELETE => messages::delete(ctx, id),
        ["$value"] if m == Method::GET => messages::mime(ctx, id),
        ["move"] if m == Method::POST => messages::move_to(ctx, id, &req.body),
        ["permanentdelete"] if m == Method::POST => messages::permanent_delete(ctx, id),
        [action @ ("reply" | "replyall" | "forward")] if m == Method::POST => {
            compose::respond(ctx, id, action, &req.body)
        }
        [action @ ("createreply" | "createreplyall" | "createforward")] if m == Method::POST => {
            compose::create_response(ctx, id, action, &req.body)
        }
        ["send"] if m == Method::POST => compose::send(ctx, id, req),
        ["attachments"] if m == Method::GET => attachments::list(ctx, id),
        ["attachments"] if m == Method::POST => attachments::add(ctx, id, &req.body),
        ["attachments", "createuploadsession"] if m == Method::POST => {
            attachments::create_upload_session(ctx, id, &req.body)
        }
        ["attachments", _] if m == Method::GET => attachments::get(ctx, id, &seg[1], false),
        ["attachments", _] if m == Method::DELETE => attachments::delete(ctx, id, &seg[1]),
        ["attachments", _, "$value"] if m == Method::GET => attachments::get(ctx, id, &seg[1], true),
        []
        | ["$value"]
        | ["move" | "permanentdelete"]
        | ["reply" | "replyall" | "forward" | "send"]
        | ["attachments", ..] => Err(method_not_allowed()),
        ["createreply" | "createreplyall" | "createforward"] => Err(method_not_allowed()),
        _ => Err(not_found(seg)),
    }
}
