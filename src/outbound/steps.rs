//! The Graph steps of a send: find marked items, create the marked draft and make sure the
//! marker is on it, add the attachments that are missing. Creating POSTs are never retried
//! inside a call: after an unknown outcome the sender looks before it creates again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::request::{Kind, Recipient, StoredAttachment, StoredRequest};
use super::sender::Failure;
use crate::graph::{
    Addressee, CallError, DraftBody, DraftContent, DraftOf, GraphErrorKind, MarkedMessage, NewAttachment,
};
use crate::mailbox::MailboxCtx;

/// Attachments up to this size are added in one request; larger ones use an upload session.
const SIMPLE_ATTACHMENT_MAX: usize = 3 * 1024 * 1024;
/// Upload chunk: a multiple of 320 KiB under Graph's 4 MB per request.
const CHUNK: usize = 10 * 320 * 1024;

/// A marked item as found in a folder.
pub(super) type Found = MarkedMessage;

/// The items in `folder` marked with `outbound_id`.
pub(super) async fn find(ctx: &MailboxCtx, folder: &str, outbound_id: &str) -> Result<Vec<Found>, Failure> {
    Ok(ctx.mailbox_graph().find_marked(folder, outbound_id).await?)
}

/// One draft by id, or `None` when it is gone or no longer a draft.
pub(super) async fn get(ctx: &MailboxCtx, id: &str) -> Result<Option<Found>, Failure> {
    match ctx.mailbox_graph().outbound_message(id).await {
        Ok(m) if m.is_draft == Some(true) => Ok(Some(m)),
        Ok(_) => Ok(None),
        Err(CallError::Graph(g)) if g.kind == GraphErrorKind::ItemNotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Discards a surplus draft (a soft delete: it goes to Deleted Items, which no search includes).
pub(super) async fn discard(ctx: &MailboxCtx, id: &str) -> Result<(), Failure> {
    match ctx.mailbox_graph().delete_message(id).await {
        Ok(()) => Ok(()),
        Err(CallError::Graph(g)) if g.kind == GraphErrorKind::ItemNotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The recipients as the draft names them.
fn addressees(list: &[Recipient]) -> Vec<Addressee<'_>> {
    list.iter()
        .map(|r| Addressee {
            name: &r.name,
            address: &r.address,
        })
        .collect()
}

/// Creates the marked draft; returns it.
pub(super) async fn create_draft(
    ctx: &MailboxCtx,
    req: &StoredRequest<'_>,
    outbound_id: &str,
) -> Result<Found, Failure> {
    let of = match req.kind {
        Kind::Send => DraftOf::New,
        kind => {
            let original = req
                .original
                .as_deref()
                .ok_or_else(|| Failure::Permanent("no original message".into()))?;
            match kind {
                Kind::Reply => DraftOf::Reply(original),
                Kind::ReplyAll => DraftOf::ReplyAll(original),
                _ => DraftOf::Forward(original),
            }
        }
    };
    let content = DraftContent {
        subject: req.subject.as_deref(),
        comment: req.comment.as_deref(),
        body: req.body.as_ref().map(|b| DraftBody {
            content_type: &b.content_type,
            content: &b.content,
        }),
        to: addressees(&req.to),
        cc: addressees(&req.cc),
        bcc: addressees(&req.bcc),
    };
    Ok(ctx.mailbox_graph().create_draft(of, &content, outbound_id).await?)
}

/// Makes sure the marker is on the draft: no document says `createReply` & co. keep
/// extended properties given in `message`, so it is read back and set with `PATCH` when
/// missing (a PATCH of the same value is harmless, so it may be repeated).
pub(super) async fn ensure_marker(ctx: &MailboxCtx, draft: &str, outbound_id: &str) -> Result<(), Failure> {
    let graph = ctx.mailbox_graph();
    if graph.has_marker(draft, outbound_id).await? {
        return Ok(());
    }
    tracing::info!(mailbox = %ctx.config.address, outbound_id, "Graph did not keep the marker on the draft; setting it.");
    graph.set_marker(draft, outbound_id).await?;
    if graph.has_marker(draft, outbound_id).await? {
        Ok(())
    } else {
        Err(Failure::Transient("the marker could not be set on the draft".into()))
    }
}

/// `(name, size)` of the attachments already on the draft.
pub(super) async fn attachments(ctx: &MailboxCtx, draft: &str) -> Result<Vec<(String, u64)>, Failure> {
    let present = ctx.mailbox_graph().attachments(draft).await?;
    // One without a name or size cannot stand for anything inboxd adds.
    Ok(present.into_iter().filter_map(|a| Some((a.name?, a.size?))).collect())
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
    draft: &str,
    a: &StoredAttachment<'_>,
) -> Result<(), Failure> {
    let graph = ctx.mailbox_graph();
    let attachment = NewAttachment {
        name: &a.name,
        content_type: &a.content_type,
        is_inline: a.is_inline,
        content_id: a.content_id.as_deref(),
    };
    let encoded = a.content_base64.trim();
    // base64 is 4 characters per 3 bytes: small ones go as they are, without decoding.
    if encoded.len() / 4 * 3 <= SIMPLE_ATTACHMENT_MAX {
        graph.add_attachment(draft, &attachment, encoded).await?;
        return Ok(());
    }
    let unreadable = |e: base64::DecodeError| Failure::Permanent(format!("attachment '{}': {e}", a.name));
    let total = super::request::decoded_len(encoded).map_err(unreadable)?;
    let session = graph.create_upload_session(draft, &attachment, total).await?;
    // The chunks go to the session's own pre-authorized URL with a plain client: they are
    // not Graph calls (no bearer token, no gate).
    let url = session.upload_url.as_str();
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
