//! Attachments: list, get, add (≤ 3 MB), and upload sessions for large files.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::Duration;

use super::render;
use super::{Ctx, GraphError, RequestIds, input, messages};
use crate::emulator::Shared;
use crate::emulator::log::Facts;
use crate::emulator::model::{Attachment, UploadSession};
use crate::emulator::util::{graph_time, item_id, opaque};

/// Largest file an upload session takes (150 MB).
const UPLOAD_MAX: usize = 150 * 1024 * 1024;
/// Largest chunk per PUT (Graph: under 4 MB).
const CHUNK_MAX: usize = 4 * 1024 * 1024;

/// `GET messages/{id}/attachments`.
pub(crate) fn list(ctx: &Ctx<'_>, id: &str) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let (_, m) = messages::message(&world, ctx, id)?;
    let with_bytes = ctx.select().is_none_or(|s| s.iter().any(|p| p == "contentbytes"));
    let value: Vec<Value> = m
        .attachments
        .iter()
        .map(|a| render::attachment(a, with_bytes))
        .collect();
    Ok(ctx.answer(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/v1.0/$metadata#Collection(attachment)", ctx.emu.base()), "value": value}),
    ))
}

/// `GET messages/{id}/attachments/{aid}` (JSON) or `…/$value` (raw bytes).
pub(crate) fn get(ctx: &Ctx<'_>, id: &str, attachment: &str, raw: bool) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let (_, m) = messages::message(&world, ctx, id)?;
    let a = m
        .attachments
        .iter()
        .find(|a| a.id == attachment)
        .ok_or_else(GraphError::item_not_found)?;
    if raw {
        return Ok((
            [(header::CONTENT_TYPE, a.content_type.clone())],
            a.bytes.as_ref().clone(),
        )
            .into_response());
    }
    Ok(ctx.answer(StatusCode::OK, render::attachment(a, true)))
}

/// `DELETE messages/{id}/attachments/{aid}`: 204.
pub(crate) fn delete(ctx: &Ctx<'_>, id: &str, attachment: &str) -> Result<Response, GraphError> {
    let mut world = ctx.emu.world();
    let immutable = messages::find(&world, ctx, id)?;
    let mailbox = world.mailboxes.get_mut(&ctx.address).expect("resolved");
    let m = mailbox.messages.get_mut(&immutable).expect("found");
    let before = m.attachments.len();
    m.attachments.retain(|a| a.id != attachment);
    if m.attachments.len() == before {
        return Err(GraphError::item_not_found());
    }
    world.touch(&ctx.address, &immutable, ctx.now, &["hasAttachments"]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST messages/{id}/attachments`: a file attachment of at most 3 MB, drafts only.
pub(crate) fn add(ctx: &Ctx<'_>, id: &str, body: &Bytes) -> Result<Response, GraphError> {
    let props = Value::Object(input::object(body)?);
    let attachment = input::file_attachment(&props, ctx.now)?;
    let mut world = ctx.emu.world();
    let immutable = messages::find(&world, ctx, id)?;
    let mailbox = world.mailboxes.get_mut(&ctx.address).expect("resolved");
    let m = mailbox.messages.get_mut(&immutable).expect("found");
    if !m.is_draft {
        return Err(GraphError::bad_request(
            "ErrorInvalidPropertyUpdateSentMessage",
            "Attachments can only be added to drafts.",
        ));
    }
    m.attachments.push(attachment.clone());
    world.touch(&ctx.address, &immutable, ctx.now, &["hasAttachments"]);
    Ok(ctx.answer(StatusCode::CREATED, render::attachment(&attachment, true)))
}

/// `POST messages/{id}/attachments/createUploadSession`.
pub(crate) fn create_upload_session(ctx: &Ctx<'_>, id: &str, body: &Bytes) -> Result<Response, GraphError> {
    let props = input::object(body)?;
    let item = props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("AttachmentItem"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| GraphError::bad_body("createUploadSession needs an 'AttachmentItem'."))?;
    let name = item["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| GraphError::bad_body("AttachmentItem needs a name."))?;
    let size = item["size"]
        .as_u64()
        .ok_or_else(|| GraphError::bad_body("AttachmentItem needs a size."))? as usize;
    if item["attachmentType"]
        .as_str()
        .is_some_and(|t| !t.eq_ignore_ascii_case("file"))
    {
        return Err(GraphError::bad_body("Only attachmentType 'file' can be uploaded."));
    }
    if size > UPLOAD_MAX {
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorAttachmentSizeExceeded",
            "The attachment exceeds the 150 MB limit.",
        ));
    }
    if size < input::INLINE_ATTACHMENT_MAX {
        return Err(GraphError::bad_request(
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size must be greater than the minimum size.",
        ));
    }
    let mut world = ctx.emu.world();
    let immutable = messages::find(&world, ctx, id)?;
    if !world.mailboxes[&ctx.address].messages[&immutable].is_draft {
        return Err(GraphError::bad_request(
            "ErrorInvalidPropertyUpdateSentMessage",
            "Attachments can only be added to drafts.",
        ));
    }
    let token = opaque(40);
    let expires_at = ctx.now + Duration::hours(6);
    world.uploads.insert(
        token.clone(),
        UploadSession {
            address: ctx.address.clone(),
            message: immutable,
            name: name.to_string(),
            content_type: item["contentType"]
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_string(),
            is_inline: item["isInline"].as_bool().unwrap_or(false),
            content_id: item["contentId"].as_str().map(str::to_string),
            size,
            received: Vec::new(),
            expires_at,
        },
    );
    Ok(ctx.answer(
        StatusCode::CREATED,
        json!({
            "@odata.context": format!("{}/v1.0/$metadata#microsoft.graph.uploadSession", ctx.emu.base()),
            "uploadUrl": format!("{}/_upload/{token}", ctx.emu.base()),
            "expirationDateTime": graph_time(expires_at),
            "nextExpectedRanges": ["0-"],
        }),
    ))
}

/// `PUT {uploadUrl}`: one chunk, `Content-Range: bytes a-b/total`, no `Authorization`.
pub(crate) async fn upload_chunk(
    State(emu): State<Shared>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ids = RequestIds::from_headers(&headers);
    let now = emu.clock.now();
    let mut facts = Facts {
        token: Some("none"),
        ..Facts::default()
    };
    let result = chunk(&emu, &token, &headers, &body, &mut facts);
    let mut resp = result.unwrap_or_else(|e| e.render(now, &ids.request_id, &ids.client_request_id));
    ids.stamp(&mut resp);
    resp.extensions_mut().insert(facts);
    resp
}

fn chunk(
    emu: &Shared,
    token: &str,
    headers: &HeaderMap,
    body: &Bytes,
    facts: &mut Facts,
) -> Result<Response, GraphError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The upload URL carries its own token; do not send an Authorization header.",
        ));
    }
    let now = emu.clock.now();
    let mut world = emu.world();
    let session = world
        .uploads
        .get_mut(token)
        .filter(|s| s.expires_at > now)
        .ok_or_else(|| {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The upload session does not exist or has expired.",
            )
        })?;
    facts.mailbox = Some(session.address.clone());
    let range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parsed = range.strip_prefix("bytes ").and_then(|r| {
        let (span, total) = r.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        Some((
            a.trim().parse::<usize>().ok()?,
            b.trim().parse::<usize>().ok()?,
            total.trim().parse::<usize>().ok()?,
        ))
    });
    let Some((start, end, total)) = parsed else {
        return Err(GraphError::bad_request(
            "InvalidContentRange",
            format!("Content-Range '{range}' is not 'bytes a-b/total'."),
        ));
    };
    if total != session.size
        || start != session.received.len()
        || end < start
        || end - start + 1 != body.len()
        || end >= total
    {
        return Err(GraphError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidContentRange",
            format!(
                "Expected the range starting at {} of {} bytes; got '{range}' with {} bytes.",
                session.received.len(),
                session.size,
                body.len()
            ),
        ));
    }
    if body.len() > CHUNK_MAX {
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "Each chunk must be smaller than 4 MB.",
        ));
    }
    session.received.extend_from_slice(body);
    if session.received.len() < session.size {
        let next = session.received.len();
        let expires = graph_time(session.expires_at);
        return Ok((
            StatusCode::OK,
            axum::Json(json!({"expirationDateTime": expires, "nextExpectedRanges": [format!("{next}-")]})),
        )
            .into_response());
    }
    let session = world.uploads.remove(token).expect("present");
    let attachment = Attachment {
        id: item_id("AAMkADAtt"),
        name: session.name,
        content_type: session.content_type,
        bytes: Arc::new(session.received),
        is_inline: session.is_inline,
        content_id: session.content_id,
        modified: now,
    };
    let attachment_id = attachment.id.clone();
    let Some(message) = world
        .mailboxes
        .get_mut(&session.address)
        .and_then(|m| m.messages.get_mut(&session.message))
    else {
        return Err(GraphError::item_not_found());
    };
    message.attachments.push(attachment);
    world.touch(&session.address, &session.message, now, &["hasAttachments"]);
    let location = format!(
        "{}/v1.0/users('{}')/messages('{}')/attachments('{attachment_id}')",
        emu.base(),
        session.address,
        session.message
    );
    let mut resp = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}
