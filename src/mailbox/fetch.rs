//! What a delta item lacks, fetched in `$batch`: the whole message when the item is partial
//! (Graph sends only the changed properties of an updated item), its headers, and its
//! attachments (metadata first; content only under the inline cap, the rest hashed one at a
//! time). A message is complete or it is given up with a reason, never delivered half.

use std::collections::HashMap;
use std::time::Duration;

use super::MailboxCtx;
use super::poll::PollError;
use crate::graph::{
    Attachment, BATCH_MAX, CallError, Fetch, Fetched, GraphErrorKind, Header, MailboxGraph, Message, PartAnswer,
};

/// Attachment bytes asked for in one `$batch` (its answer must arrive within the request timeout).
pub const BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// How many times failed requests inside a `$batch` are retried before their message is given up.
const BATCH_RETRIES: usize = 5;

/// An attachment as the event needs it.
#[derive(Debug)]
pub struct HeldAttachment {
    /// Its metadata; with its content when that is under the inline cap.
    pub attachment: Attachment,
    /// Over the cap: the SHA-256 (hex) of the content, which was hashed and not kept.
    pub sha256: Option<String>,
}

/// A message with everything its event needs.
#[derive(Debug)]
pub struct Complete {
    /// The message (from the delta page, or fetched whole).
    pub message: Message,
    /// `internetMessageHeaders`.
    pub headers: Vec<Header>,
    /// Its attachments.
    pub attachments: Vec<HeldAttachment>,
}

/// One message's outcome: complete, or why it was given up.
type Outcome = Result<Complete, String>;

/// Completes every item; one outcome per item, in order, keyed by Graph id.
pub async fn complete(ctx: &MailboxCtx, items: Vec<Message>) -> Result<Vec<(String, Outcome)>, PollError> {
    let graph = ctx.mailbox_graph();
    let ids: Vec<String> = items.iter().map(|m| m.id.clone()).collect();
    let mut messages: Vec<Result<Message, String>> = items.into_iter().map(Ok).collect();

    // 1. Partial items: the whole message.
    let wanted: Vec<(String, Fetch)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.as_ref().is_ok_and(Message::is_partial))
        .map(|(i, _)| (format!("m{i}"), Fetch::Message(ids[i].clone())))
        .collect();
    let mut got = batch_get(ctx, &graph, wanted).await?;
    for (i, m) in messages.iter_mut().enumerate() {
        if let Some(r) = got.remove(&format!("m{i}")) {
            *m = match r {
                Ok(Fetched::Message(full)) => Ok(*full),
                Ok(_) => Err("the message could not be read in full: Graph answered something else".to_string()),
                Err(e) => Err(format!("the message could not be read in full: {e}")),
            };
        }
    }

    // 2. Headers when the page lacked them, attachment metadata when there are attachments.
    let mut wanted = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Ok(m) = m else { continue };
        if m.internet_message_headers.is_none() {
            wanted.push((format!("h{i}"), Fetch::Headers(ids[i].clone())));
        }
        if m.has_attachments == Some(true) || m.body_content().contains("cid:") {
            wanted.push((format!("a{i}"), Fetch::Attachments(ids[i].clone())));
        }
    }
    let mut got = batch_get(ctx, &graph, wanted).await?;
    let mut headers: Vec<Vec<Header>> = Vec::with_capacity(messages.len());
    let mut listed: Vec<Vec<HeldAttachment>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter_mut().enumerate() {
        // Taken, not cloned: the event reads them from here on.
        let own = m.as_mut().ok().and_then(|m| m.internet_message_headers.take());
        let h = match (own, got.remove(&format!("h{i}"))) {
            (Some(h), _) => h,
            (None, Some(Ok(Fetched::Headers(h)))) => h,
            (None, Some(Ok(_))) => Vec::new(),
            (None, Some(Err(e))) => {
                *m = Err(format!("its headers could not be read: {e}"));
                Vec::new()
            }
            (None, None) => Vec::new(),
        };
        headers.push(h);
        listed.push(match got.remove(&format!("a{i}")) {
            Some(Ok(Fetched::Attachments(list))) => list
                .into_iter()
                .map(|attachment| HeldAttachment {
                    attachment,
                    sha256: None,
                })
                .collect(),
            Some(Ok(_)) | None => Vec::new(),
            Some(Err(e)) => {
                *m = Err(format!("its attachments could not be listed: {e}"));
                Vec::new()
            }
        });
    }

    // 3. Attachment content: under the cap in `$batch`, bounded in bytes per request.
    let cap = ctx.config.max_inline_attachment_bytes;
    let mut small = Vec::new();
    let mut large = Vec::new();
    for (i, list) in listed.iter().enumerate() {
        if messages[i].is_err() {
            continue;
        }
        for (j, a) in list.iter().enumerate() {
            let Some(aid) = &a.attachment.id else {
                continue;
            };
            let size = a.attachment.size.unwrap_or(u64::MAX);
            if size <= cap {
                let fetch = Fetch::Attachment {
                    message: ids[i].clone(),
                    attachment: aid.clone(),
                };
                small.push((format!("c{i}_{j}"), fetch, size));
            } else {
                large.push((i, j, aid.clone()));
            }
        }
    }
    let mut contents = HashMap::new();
    // Within the page's share of the ingest budget, and what one answer can carry in time.
    let limit = BATCH_BYTES.min(ctx.ingest.page_bytes());
    for group in by_bytes(small, limit) {
        contents.extend(batch_get(ctx, &graph, group).await?);
    }
    for (i, list) in listed.iter_mut().enumerate() {
        for (j, a) in list.iter_mut().enumerate() {
            match contents.remove(&format!("c{i}_{j}")) {
                Some(Ok(Fetched::Attachment(full))) => a.attachment = *full,
                Some(Err(e)) if messages[i].is_ok() => {
                    messages[i] = Err(format!("an attachment could not be read: {e}"));
                }
                Some(_) | None => {}
            }
        }
    }
    // 4. Over the cap: fetched one at a time, hashed, and dropped (the event carries metadata).
    for (i, j, aid) in large {
        if messages[i].is_err() {
            continue;
        }
        match graph.attachment(&ids[i], &aid).await {
            Ok(full) => {
                let a = &mut listed[i][j];
                a.sha256 = full
                    .content_bytes
                    .as_deref()
                    .and_then(super::convert::base64_sha256_hex);
                if full.content_id.is_some() {
                    a.attachment.content_id = full.content_id;
                }
            }
            Err(CallError::Graph(e)) if !e.is_transient() => {
                messages[i] = Err(format!("an attachment could not be read: {e}"));
            }
            Err(CallError::Shape(e)) => {
                messages[i] = Err(format!("an attachment could not be read: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
    }

    Ok(ids
        .into_iter()
        .zip(messages)
        .zip(headers.into_iter().zip(listed))
        .map(|((id, m), (headers, attachments))| {
            let outcome = m.map(|message| Complete {
                message,
                headers,
                attachments,
            });
            (id, outcome)
        })
        .collect())
}

/// Groups requests so one `$batch` asks for at most [`BATCH_MAX`] parts and `limit` bytes.
pub fn by_bytes<T>(requests: Vec<(String, T, u64)>, limit: u64) -> Vec<Vec<(String, T)>> {
    let mut groups: Vec<Vec<(String, T)>> = Vec::new();
    let mut bytes = 0u64;
    for (id, url, size) in requests {
        let full = groups
            .last()
            .is_none_or(|g| g.len() >= BATCH_MAX || bytes.saturating_add(size) > limit);
        if full {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        groups.last_mut().expect("just pushed").push((id, url));
    }
    groups
}

/// GETs inside `$batch`, 20 at a time. Parts failing with 429 or 5xx (or missing from the
/// answer) are retried after their own `Retry-After`; any other failure, or one that outlasts
/// the retries, is that part's `Err` with Graph's status and message.
async fn batch_get(
    ctx: &MailboxCtx,
    graph: &MailboxGraph<'_>,
    requests: Vec<(String, Fetch)>,
) -> Result<HashMap<String, Result<Fetched, String>>, PollError> {
    let mut out = HashMap::new();
    for chunk in requests.chunks(BATCH_MAX) {
        let mut pending: Vec<(String, Fetch)> = chunk.to_vec();
        for attempt in 0..=BATCH_RETRIES {
            let answer = match graph.fetch_batch(&pending).await {
                Ok(a) => a,
                // A `$batch` whose answer never arrives in time, or cannot be read, is split, so
                // one huge or unreadable part cannot fail its neighbours round after round.
                Err(CallError::Graph(e))
                    if matches!(e.kind, GraphErrorKind::Transport | GraphErrorKind::Malformed) && pending.len() > 1 =>
                {
                    let half = pending.len() / 2;
                    let (a, b) = pending.split_at(half);
                    out.extend(Box::pin(batch_get(ctx, graph, a.to_vec())).await?);
                    out.extend(Box::pin(batch_get(ctx, graph, b.to_vec())).await?);
                    break;
                }
                // Alone and still unreadable: that message is given up (quarantined), not the round.
                Err(CallError::Graph(e)) if e.kind == GraphErrorKind::Malformed => {
                    let (id, fetch) = &pending[0];
                    out.insert(
                        id.clone(),
                        Err(format!(
                            "GET {}: Graph's answer is unreadable ({})",
                            fetch.path(),
                            e.message
                        )),
                    );
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let mut answers: HashMap<String, PartAnswer> = answer.into_iter().collect();
            let mut retry = Vec::new();
            let mut wait = Duration::ZERO;
            let last = attempt == BATCH_RETRIES;
            for (id, fetch) in pending {
                let Some(part) = answers.remove(&id) else {
                    if last {
                        out.insert(id, Err(format!("GET {}: no answer inside $batch", fetch.path())));
                    } else {
                        retry.push((id, fetch));
                    }
                    continue;
                };
                if part.is_transient() && !last {
                    wait = wait.max(part.retry_after.unwrap_or(Duration::from_secs(1)));
                    retry.push((id, fetch));
                } else {
                    out.insert(id, part.result);
                }
            }
            if retry.is_empty() {
                break;
            }
            tracing::info!(
                mailbox = %ctx.config.address, parts = retry.len(), wait_ms = wait.as_millis() as u64,
                "Requests inside $batch failed; retrying them."
            );
            ctx.gate.pause_for(wait);
            pending = retry;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_twenty_parts_and_sixteen_megabytes() {
        let mb = 1024 * 1024;
        let requests: Vec<(String, String, u64)> = (0..45)
            .map(|i| (format!("c{i}"), format!("/a/{i}"), if i < 5 { 6 * mb } else { 10 }))
            .collect();
        let groups = by_bytes(requests, BATCH_BYTES);
        // 6 MB each: two fit in 16 MB; then small ones fill up to 20 parts.
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 20, 20, 1]);
        assert!(groups.iter().all(|g| g.len() <= BATCH_MAX));
        // A single attachment larger than the budget still gets a batch of its own.
        let groups = by_bytes::<String>(
            vec![("big".into(), "/a/big".into(), 40 * mb), ("s".into(), "/a/s".into(), 1)],
            BATCH_BYTES,
        );
        assert_eq!(groups.len(), 2);
    }
}
