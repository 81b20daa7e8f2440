//! The Graph steps of a send: find a marked item, create the marked draft, add attachments.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::request::{AttachmentInput, Kind, OutboundRequest, Recipient};
use super::sender::{Failure, MARKER_PROPERTY};
use crate::graph::{Call, segment};
use crate::mailbox::MailboxCtx;

/// Attachments up to this size are added in one request; larger ones use an upload session.
const SIMPLE_ATTACHMENT_MAX: usize = 3 * 1024 * 1024;
/// Upload chunk: a multiple of 320 KiB under Graph's 4 MB per request.
const CHUNK: usize = 10 * 320 * 1024;

/// The id of the message in `folder` marked with `outbound_id`, if any.
pub(super) async fn find(
    ctx: &MailboxCtx,
    user: &str,
    folder: &str,
    outbound_id: &str,
) -> Result<Option<String>, Failure> {
    let filter = format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER_PROPERTY}' and ep/value eq '{}')",
        outbound_id.replace('\'', "''")
    );
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("$filter", &filter)
        .append_pair("$select", "id")
        .finish();
    let call = Call::get("find_outbound", format!("{user}/mailFolders/{folder}/messages?{query}"))
        .prefer("IdType=\"ImmutableId\"");
    let found = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    Ok(found.pointer("/value/0/id").and_then(Value::as_str).map(str::to_string))
}

/// Creates the marked draft; returns its id.
pub(super) async fn create_draft(
    ctx: &MailboxCtx,
    user: &str,
    req: &OutboundRequest,
    outbound_id: &str,
) -> Result<String, Failure> {
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
    .prefer("IdType=\"ImmutableId\"");
    let draft = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    draft
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Failure::Transient("Graph created a draft without an id".into()))
}

/// Adds one attachment: directly up to 3 MB, through an upload session beyond.
pub(super) async fn attach(
    upload: &reqwest::Client,
    ctx: &MailboxCtx,
    user: &str,
    draft: &str,
    a: &AttachmentInput,
) -> Result<(), Failure> {
    let bytes = STANDARD
        .decode(a.content_base64.trim())
        .map_err(|e| Failure::Permanent(format!("attachment '{}': {e}", a.name)))?;
    let base = format!("{user}/messages/{}/attachments", segment(draft));
    if bytes.len() <= SIMPLE_ATTACHMENT_MAX {
        let mut attachment = json!({
            "@odata.type": "#microsoft.graph.fileAttachment", "name": a.name, "contentType": a.content_type,
            "contentBytes": a.content_base64.trim(), "isInline": a.is_inline,
        });
        if let Some(cid) = &a.content_id {
            attachment["contentId"] = json!(cid);
        }
        ctx.graph
            .call(
                &ctx.gate,
                &ctx.active(),
                &Call::post("add_attachment", base, attachment).prefer("IdType=\"ImmutableId\""),
            )
            .await?;
        return Ok(());
    }
    let mut item = json!({"attachmentType": "file", "name": a.name, "size": bytes.len(), "contentType": a.content_type, "isInline": a.is_inline});
    if let Some(cid) = &a.content_id {
        item["contentId"] = json!(cid);
    }
    let session = ctx
        .graph
        .call(
            &ctx.gate,
            &ctx.active(),
            &Call::post(
                "upload_session",
                format!("{base}/createUploadSession"),
                json!({"AttachmentItem": item}),
            )
            .prefer("IdType=\"ImmutableId\""),
        )
        .await?;
    let url = session
        .get("uploadUrl")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Transient("upload session without uploadUrl".into()))?;
    let total = bytes.len();
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        let start = i * CHUNK;
        let end = start + chunk.len() - 1;
        let resp = upload
            .put(url)
            .header(reqwest::header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("upload of '{}' failed: {}", a.name, crate::auth::describe(&e))))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            let message = format!(
                "upload of '{}' answered {status}: {}",
                a.name,
                text.chars().take(300).collect::<String>()
            );
            // A broken session cannot be resumed here: the draft is discarded and rebuilt.
            return Err(if status >= 500 || status == 429 {
                Failure::Transient(message)
            } else {
                Failure::Transient(format!("{message} (draft will be rebuilt)"))
            });
        }
    }
    Ok(())
}
