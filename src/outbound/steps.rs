//! The Graph steps of a send: find marked items, create the marked draft and make sure the
//! marker is on it, add the attachments that are missing. Creating POSTs are never retried
//! inside a call: after an unknown outcome the sender looks before it creates again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};

use super::request::{Kind, Recipient, StoredAttachment, StoredRequest};
use super::sender::{Failure, MARKER_PROPERTY};
use crate::graph::{Call, segment};
use crate::mailbox::MailboxCtx;

/// Attachments up to this size are added in one request; larger ones use an upload session.
const SIMPLE_ATTACHMENT_MAX: usize = 3 * 1024 * 1024;
/// Upload chunk: a multiple of 320 KiB under Graph's 4 MB per request.
const CHUNK: usize = 10 * 320 * 1024;
/// Immutable ids: the draft keeps its id while it moves (Drafts → Outbox).
const IMMUTABLE: &str = "IdType=\"ImmutableId\"";

/// A marked item as found in a folder.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// Its (immutable) id.
    pub(super) id: String,
    /// `internetMessageId`.
    pub(super) internet_message_id: Option<String>,
    /// `conversationId`.
    pub(super) conversation_id: Option<String>,
}

impl Found {
    fn from(v: &Value) -> Option<Found> {
        Some(Found {
            id: v.get("id")?.as_str()?.to_string(),
            internet_message_id: v.get("internetMessageId").and_then(Value::as_str).map(str::to_string),
            conversation_id: v.get("conversationId").and_then(Value::as_str).map(str::to_string),
        })
    }
}

/// A call that creates something: one try, the caller looks before trying again.
fn creating(call: Call) -> Call {
    Call { retry: false, ..call }
}

/// The items in `folder` marked with `outbound_id`.
pub(super) async fn find(ctx: &MailboxCtx, user: &str, folder: &str, outbound_id: &str) -> Result<Vec<Found>, Failure> {
    let filter = format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER_PROPERTY}' and ep/value eq '{}')",
        outbound_id.replace('\'', "''")
    );
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("$filter", &filter)
        .append_pair("$select", "id,internetMessageId,conversationId")
        .append_pair("$top", "25")
        .finish();
    let call = Call::get("find_outbound", format!("{user}/mailFolders/{folder}/messages?{query}")).prefer(IMMUTABLE);
    let found = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    Ok(found
        .get("value")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Found::from).collect())
        .unwrap_or_default())
}

/// One message by id, or `None` when it is gone.
pub(super) async fn get(ctx: &MailboxCtx, user: &str, id: &str) -> Result<Option<Found>, Failure> {
    let call = Call::get(
        "get_outbound",
        format!(
            "{user}/messages/{}?$select=id,internetMessageId,conversationId,isDraft",
            segment(id)
        ),
    )
    .prefer(IMMUTABLE);
    match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
        Ok(v) if v.get("isDraft").and_then(Value::as_bool) == Some(true) => Ok(Found::from(&v)),
        Ok(_) => Ok(None),
        Err(crate::graph::CallError::Graph(g)) if g.kind == crate::graph::GraphErrorKind::ItemNotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Discards a surplus draft (a soft delete: it goes to Deleted Items, which no search includes).
pub(super) async fn discard(ctx: &MailboxCtx, user: &str, id: &str) -> Result<(), Failure> {
    let call = Call {
        method: Method::DELETE,
        ..Call::get("delete_draft", format!("{user}/messages/{}", segment(id))).prefer(IMMUTABLE)
    };
    match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
        Ok(_) => Ok(()),
        Err(crate::graph::CallError::Graph(g)) if g.kind == crate::graph::GraphErrorKind::ItemNotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the marked draft; returns it.
pub(super) async fn create_draft(
    ctx: &MailboxCtx,
    user: &str,
    req: &StoredRequest<'_>,
    outbound_id: &str,
) -> Result<Found, Failure> {
    let marker = json!([{"id": MARKER_PROPERTY, "value": outbound_id}]);
    let recipients = |list: &[Recipient]| -> Value {
        list.iter()
            .map(|r| json!({"emailAddress": {"name": r.name, "address": r.address}}))
            .collect()
    };
    let body = req
        .body
        .as_ref()
        .map(|b| json!({"contentType": b.content_type, "content": b.content}));
    let call = match req.kind {
        Kind::Send => {
            let mut message = json!({
                "subject": req.subject.clone().unwrap_or_default(),
                "toRecipients": recipients(&req.to), "ccRecipients": recipients(&req.cc), "bccRecipients": recipients(&req.bcc),
                "singleValueExtendedProperties": marker,
            });
            if let Some(b) = body {
                message["body"] = b;
            }
            Call::post("create_draft", format!("{user}/messages"), message)
        }
        kind => {
            let original = req.original.as_deref().ok_or_else(|| Failure::Permanent("no original message".into()))?;
            let action = match kind {
                Kind::Reply => "createReply",
                Kind::ReplyAll => "createReplyAll",
                _ => "createForward",
            };
            let mut message = json!({"singleValueExtendedProperties": marker});
            if let Some(b) = body {
                message["body"] = b;
            }
            for (field, list) in [("toRecipients", &req.to), ("ccRecipients", &req.cc), ("bccRecipients", &req.bcc)] {
                if !list.is_empty() {
                    message[field] = recipients(list);
                }
            }
            let mut payload = json!({"message": message});
            if let Some(c) = &req.comment {
                payload["comment"] = json!(c);
            }
            Call::post("create_draft", format!("{user}/messages/{}/{action}", segment(original)), payload)
        }
    }
    .prefer(IMMUTABLE);
    let draft = ctx.graph.call(&ctx.gate, &ctx.active(), &creating(call)).await?;
    Found::from(&draft).ok_or_else(|| Failure::Transient("Graph created a draft without an id".into()))
}

/// True when the draft carries the marker with `outbound_id`.
async fn has_marker(ctx: &MailboxCtx, user: &str, draft: &str, outbound_id: &str) -> Result<bool, Failure> {
    let expand = format!("singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY}')");
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("$select", "id")
        .append_pair("$expand", &expand)
        .finish();
    let call = Call::get("check_marker", format!("{user}/messages/{}?{query}", segment(draft))).prefer(IMMUTABLE);
    let got = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    Ok(got
        .get("singleValueExtendedProperties")
        .and_then(Value::as_array)
        .is_some_and(|props| {
            props.iter().any(|p| {
                p.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id.eq_ignore_ascii_case(MARKER_PROPERTY))
                    && p.get("value").and_then(Value::as_str) == Some(outbound_id)
            })
        }))
}

/// Makes sure the marker is on the draft: no document says `createReply` & co. keep
/// extended properties given in `message`, so it is read back and set with `PATCH` when
/// missing (a PATCH of the same value is harmless, so it may be repeated).
pub(super) async fn ensure_marker(ctx: &MailboxCtx, user: &str, draft: &str, outbound_id: &str) -> Result<(), Failure> {
    if has_marker(ctx, user, draft, outbound_id).await? {
        return Ok(());
    }
    tracing::info!(mailbox = %ctx.config.address, outbound_id, "Graph did not keep the marker on the draft; setting it.");
    let patch = Call {
        method: Method::PATCH,
        ..Call::post(
            "set_marker",
            format!("{user}/messages/{}", segment(draft)),
            json!({"singleValueExtendedProperties": [{"id": MARKER_PROPERTY, "value": outbound_id}]}),
        )
        .prefer(IMMUTABLE)
    };
    ctx.graph.call(&ctx.gate, &ctx.active(), &patch).await?;
    if has_marker(ctx, user, draft, outbound_id).await? {
        Ok(())
    } else {
        Err(Failure::Transient("the marker could not be set on the draft".into()))
    }
}

/// `(name, size)` of the attachments already on the draft.
pub(super) async fn attachments(ctx: &MailboxCtx, user: &str, draft: &str) -> Result<Vec<(String, u64)>, Failure> {
    let call = Call::get(
        "list_attachments",
        format!("{user}/messages/{}/attachments?$select=id,name,size", segment(draft)),
    )
    .prefer(IMMUTABLE);
    let got = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    Ok(got
        .get("value")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|a| Some((a.get("name")?.as_str()?.to_string(), a.get("size")?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// Takes the attachment already on the draft that stands for `a` (same name, at least its
/// size: Graph counts some overhead), if any, out of `present`.
pub(super) fn take_present(present: &mut Vec<(String, u64)>, a: &StoredAttachment<'_>) -> bool {
    let size = super::request::decoded_len(&a.content_base64).unwrap_or(0) as u64;
    match present.iter().position(|(name, s)| *name == a.name && *s >= size) {
        Some(i) => {
            present.remove(i);
            true
        }
        None => false,
    }
}

/// Adds one attachment: directly up to 3 MB, through an upload session beyond.
pub(super) async fn attach(
    upload: &reqwest::Client,
    ctx: &MailboxCtx,
    user: &str,
    draft: &str,
    a: &StoredAttachment<'_>,
) -> Result<(), Failure> {
    let base = format!("{user}/messages/{}/attachments", segment(draft));
    let encoded = a.content_base64.trim();
    // base64 is 4 characters per 3 bytes: small ones go as they are, without decoding.
    if encoded.len() / 4 * 3 <= SIMPLE_ATTACHMENT_MAX {
        let mut attachment = json!({
            "@odata.type": "#microsoft.graph.fileAttachment", "name": a.name, "contentType": a.content_type,
            "contentBytes": encoded, "isInline": a.is_inline,
        });
        if let Some(cid) = &a.content_id {
            attachment["contentId"] = json!(cid);
        }
        let call = Call::post("add_attachment", base, attachment).prefer(IMMUTABLE);
        ctx.graph.call(&ctx.gate, &ctx.active(), &creating(call)).await?;
        return Ok(());
    }
    let unreadable = |e: base64::DecodeError| Failure::Permanent(format!("attachment '{}': {e}", a.name));
    let total = super::request::decoded_len(encoded).map_err(unreadable)?;
    let mut item = json!({"attachmentType": "file", "name": a.name, "size": total, "contentType": a.content_type, "isInline": a.is_inline});
    if let Some(cid) = &a.content_id {
        item["contentId"] = json!(cid);
    }
    let call = Call::post(
        "upload_session",
        format!("{base}/createUploadSession"),
        json!({"AttachmentItem": item}),
    )
    .prefer(IMMUTABLE);
    let session = ctx.graph.call(&ctx.gate, &ctx.active(), &creating(call)).await?;
    let url = session
        .get("uploadUrl")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Transient("upload session without uploadUrl".into()))?;
    let mut start = 0;
    while start < total {
        let end = (start + CHUNK).min(total);
        // Only this chunk is decoded: the whole file is never held a second time.
        let chunk = decode_range(encoded, start, end).map_err(unreadable)?;
        let resp = upload
            .put(url)
            .header(
                reqwest::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", end - 1),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(chunk)
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("upload of '{}' failed: {}", a.name, crate::auth::describe(&e))))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            // The session is abandoned; the next attempt finds the attachment missing and
            // opens a new one.
            return Err(Failure::Transient(format!(
                "upload of '{}' answered {status}: {}",
                a.name,
                text.chars().take(300).collect::<String>()
            )));
        }
        start = end;
    }
    Ok(())
}

/// Bytes `start..end` of what `encoded` (valid base64) decodes to, decoding only the groups
/// of four characters that cover them.
fn decode_range(encoded: &str, start: usize, end: usize) -> Result<bytes::Bytes, base64::DecodeError> {
    let (first, last) = (start / 3, end.div_ceil(3));
    let text = encoded
        .get(first * 4..(last * 4).min(encoded.len()))
        .ok_or(base64::DecodeError::InvalidLength(encoded.len()))?;
    let decoded = bytes::Bytes::from(STANDARD.decode(text)?);
    let skip = start - first * 3;
    if decoded.len() < skip + (end - start) {
        return Err(base64::DecodeError::InvalidLength(text.len()));
    }
    Ok(decoded.slice(skip..skip + (end - start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_decodes_to_the_same_bytes_as_the_whole() {
        for len in [1usize, 2, 3, 4, 5, 100, 1001] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let encoded = STANDARD.encode(&bytes);
            for start in 0..len.min(7) {
                for end in [start + 1, (start + 5).min(len), len] {
                    if end <= start || end > len {
                        continue;
                    }
                    let got = decode_range(&encoded, start, end).unwrap();
                    assert_eq!(&got[..], &bytes[start..end], "{len} bytes, {start}..{end}");
                }
            }
        }
        // Upload-sized chunks of a file that is not a multiple of three bytes long.
        let bytes: Vec<u8> = (0..(2 * CHUNK + 1234)).map(|i| (i % 253) as u8).collect();
        let encoded = STANDARD.encode(&bytes);
        let mut start = 0;
        while start < bytes.len() {
            let end = (start + CHUNK).min(bytes.len());
            assert_eq!(&decode_range(&encoded, start, end).unwrap()[..], &bytes[start..end]);
            start = end;
        }
        assert!(decode_range(&encoded, 0, bytes.len() + 10).is_err());
    }
}
