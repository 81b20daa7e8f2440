//! What a delta item lacks, fetched in `$batch`: the whole message when the item is partial
//! (Graph sends only the changed properties of an updated item), its headers, and its
//! attachments (metadata first; content only under the inline cap, the rest hashed one at a
//! time). A message is complete or it is given up with a reason, never delivered half.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::MailboxCtx;
use super::convert::DELTA_SELECT;
use super::poll::{MAX_WAIT_IN_ROUND, PollError};
use crate::domain::{MAX_WIRE_WAIT, bounded_secs};
use crate::graph::{Call, CallError, GraphErrorKind, segment};

/// Graph's `$batch` limit.
const BATCH_MAX: usize = 20;
/// Attachment bytes asked for in one `$batch` (its answer must arrive within the request timeout).
const BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// How many times failed requests inside a `$batch` are retried before their message is given up.
const BATCH_RETRIES: usize = 5;
/// The attachment properties read before deciding whether to fetch the content.
const ATTACHMENT_SELECT: &str = "id,name,contentType,size,isInline";
/// Set on an attachment whose content was hashed but not kept (over the inline cap).
pub const SHA256_FIELD: &str = "@inboxd.sha256";

/// A message with everything its event needs.
#[derive(Debug)]
pub struct Complete {
    /// The message (from the delta page, or fetched whole).
    pub message: Value,
    /// `internetMessageHeaders`.
    pub headers: Vec<Value>,
    /// Attachments: with `contentBytes` under the cap, with [`SHA256_FIELD`] over it.
    pub attachments: Vec<Value>,
}

/// One message's outcome: complete, or why it was given up.
type Outcome = Result<Complete, String>;

/// True when a delta item lacks what the event needs (an updated item carries only what changed).
fn is_partial(m: &Value) -> bool {
    m.get("receivedDateTime").is_none() || m.get("body").is_none()
}

/// Completes every item; one outcome per item, in order, keyed by Graph id.
pub async fn complete(ctx: &MailboxCtx, items: Vec<Value>) -> Result<Vec<(String, Outcome)>, PollError> {
    let mailbox = segment(ctx.config.address.as_str());
    let ids: Vec<String> = items
        .iter()
        .map(|m| m.get("id").and_then(Value::as_str).unwrap_or_default().to_string())
        .collect();
    let mut messages: Vec<Result<Value, String>> = items.into_iter().map(Ok).collect();

    // 1. Partial items: the whole message.
    let wanted: Vec<(String, String)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.as_ref().is_ok_and(is_partial))
        .map(|(i, _)| {
            let url = format!("/users/{mailbox}/messages/{}?$select={DELTA_SELECT}", segment(&ids[i]));
            (format!("m{i}"), url)
        })
        .collect();
    let mut got = batch_get(ctx, wanted).await?;
    for (i, m) in messages.iter_mut().enumerate() {
        if let Some(r) = got.remove(&format!("m{i}")) {
            *m = r.map_err(|e| format!("the message could not be read in full: {e}"));
        }
    }

    // 2. Headers when the page lacked them, attachment metadata when there are attachments.
    let mut wanted = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Ok(m) = m else { continue };
        if m.get("internetMessageHeaders").is_none() {
            let url = format!(
                "/users/{mailbox}/messages/{}?$select=internetMessageHeaders",
                segment(&ids[i])
            );
            wanted.push((format!("h{i}"), url));
        }
        let html = m.pointer("/body/content").and_then(Value::as_str).unwrap_or_default();
        if m.get("hasAttachments").and_then(Value::as_bool) == Some(true) || html.contains("cid:") {
            let url = format!(
                "/users/{mailbox}/messages/{}/attachments?$select={ATTACHMENT_SELECT}",
                segment(&ids[i])
            );
            wanted.push((format!("a{i}"), url));
        }
    }
    let mut got = batch_get(ctx, wanted).await?;
    let mut headers: Vec<Vec<Value>> = Vec::with_capacity(messages.len());
    let mut listed: Vec<Vec<Value>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter_mut().enumerate() {
        let own = m
            .as_ref()
            .ok()
            .and_then(|m| m.get("internetMessageHeaders"))
            .and_then(Value::as_array)
            .cloned();
        let h = match (own, got.remove(&format!("h{i}"))) {
            (Some(h), _) => h,
            (None, Some(Ok(v))) => array(&v, "internetMessageHeaders"),
            (None, Some(Err(e))) => {
                *m = Err(format!("its headers could not be read: {e}"));
                Vec::new()
            }
            (None, None) => Vec::new(),
        };
        headers.push(h);
        listed.push(match got.remove(&format!("a{i}")) {
            Some(Ok(v)) => array(&v, "value"),
            Some(Err(e)) => {
                *m = Err(format!("its attachments could not be listed: {e}"));
                Vec::new()
            }
            None => Vec::new(),
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
            let Some(aid) = a.get("id").and_then(Value::as_str) else {
                continue;
            };
            let size = a.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let url = format!(
                "/users/{mailbox}/messages/{}/attachments/{}",
                segment(&ids[i]),
                segment(aid)
            );
            if size <= cap {
                small.push((format!("c{i}_{j}"), url, size));
            } else {
                large.push((i, j, url));
            }
        }
    }
    let mut contents = HashMap::new();
    // Within the page's share of the ingest budget, and what one answer can carry in time.
    let limit = BATCH_BYTES.min(ctx.ingest.page_bytes());
    for group in by_bytes(small, limit) {
        contents.extend(batch_get(ctx, group).await?);
    }
    for (i, list) in listed.iter_mut().enumerate() {
        for (j, a) in list.iter_mut().enumerate() {
            match contents.remove(&format!("c{i}_{j}")) {
                Some(Ok(full)) => *a = full,
                Some(Err(e)) if messages[i].is_ok() => {
                    messages[i] = Err(format!("an attachment could not be read: {e}"));
                }
                Some(Err(_)) => {}
                None => {}
            }
        }
    }
    // 4. Over the cap: fetched one at a time, hashed, and dropped (the event carries metadata).
    for (i, j, url) in large {
        if messages[i].is_err() {
            continue;
        }
        let call = Call::get("attachment", url)
            .prefer("IdType=\"ImmutableId\"")
            .max_retry_wait(MAX_WAIT_IN_ROUND);
        match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
            Ok(full) => {
                let digest = full
                    .get("contentBytes")
                    .and_then(Value::as_str)
                    .and_then(|b| STANDARD.decode(b).ok())
                    .map(|bytes| hex_sha256(&bytes));
                let a = &mut listed[i][j];
                if let (Some(obj), Some(digest)) = (a.as_object_mut(), digest) {
                    obj.insert(SHA256_FIELD.into(), Value::String(digest));
                }
                if let (Some(obj), Some(cid)) = (a.as_object_mut(), full.get("contentId").cloned()) {
                    obj.insert("contentId".into(), cid);
                }
            }
            Err(CallError::Graph(e)) if !e.is_transient() => {
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

/// `v[field]` as a list (empty when absent).
fn array(v: &Value, field: &str) -> Vec<Value> {
    v.get(field).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Lowercase hex SHA-256.
fn hex_sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Groups requests so one `$batch` asks for at most [`BATCH_MAX`] parts and `limit` bytes.
fn by_bytes(requests: Vec<(String, String, u64)>, limit: u64) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = Vec::new();
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
    requests: Vec<(String, String)>,
) -> Result<HashMap<String, Result<Value, String>>, PollError> {
    let mut out = HashMap::new();
    for chunk in requests.chunks(BATCH_MAX) {
        let mut pending: Vec<(String, String)> = chunk.to_vec();
        for attempt in 0..=BATCH_RETRIES {
            let parts: Vec<Value> = pending
                .iter()
                .map(|(id, url)| json!({"id": id, "method": "GET", "url": url, "headers": {"Prefer": "IdType=\"ImmutableId\""}}))
                .collect();
            let mut call = Call::post("batch", "$batch", json!({"requests": parts})).max_retry_wait(MAX_WAIT_IN_ROUND);
            call.weight = pending.len().min(4) as u32;
            let answer = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await;
            let answer = match answer {
                Ok(a) => a,
                // A `$batch` whose answer never arrives in time, or cannot be read, is split, so
                // one huge or unreadable part cannot fail its neighbours round after round.
                Err(CallError::Graph(e))
                    if matches!(e.kind, GraphErrorKind::Transport | GraphErrorKind::Malformed) && pending.len() > 1 =>
                {
                    let half = pending.len() / 2;
                    let (a, b) = pending.split_at(half);
                    out.extend(Box::pin(batch_get(ctx, a.to_vec())).await?);
                    out.extend(Box::pin(batch_get(ctx, b.to_vec())).await?);
                    break;
                }
                // Alone and still unreadable: that message is given up (quarantined), not the round.
                Err(CallError::Graph(e)) if e.kind == GraphErrorKind::Malformed => {
                    let (id, url) = &pending[0];
                    let path = url.split('?').next().unwrap_or(url);
                    out.insert(
                        id.clone(),
                        Err(format!("GET {path}: Graph's answer is unreadable ({})", e.message)),
                    );
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let responses = answer
                .get("responses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut retry = Vec::new();
            let mut wait = Duration::ZERO;
            let last = attempt == BATCH_RETRIES;
            for (id, url) in &pending {
                let Some(r) = responses
                    .iter()
                    .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
                else {
                    if last {
                        out.insert(id.clone(), Err(format!("GET {url}: no answer inside $batch")));
                    } else {
                        retry.push((id.clone(), url.clone()));
                    }
                    continue;
                };
                let status = r.get("status").and_then(Value::as_u64).unwrap_or(0);
                match status {
                    200..=299 => {
                        out.insert(id.clone(), Ok(r.get("body").cloned().unwrap_or(Value::Null)));
                    }
                    429 | 500..=599 if !last => {
                        let part_wait = part_retry_after(r).unwrap_or(Duration::from_secs(1));
                        wait = wait.max(part_wait);
                        retry.push((id.clone(), url.clone()));
                    }
                    _ => {
                        out.insert(id.clone(), Err(part_error(url, status, r)));
                    }
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

/// A part's own `Retry-After` (seconds), bounded.
fn part_retry_after(part: &Value) -> Option<Duration> {
    let headers = part.get("headers")?.as_object()?;
    let (_, value) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    let secs = match value {
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(secs) => secs,
            Err(_) => {
                let at = httpdate::parse_http_date(s.trim()).ok()?;
                let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                return Some(wait.min(MAX_WIRE_WAIT));
            }
        },
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    bounded_secs(secs, MAX_WIRE_WAIT)
}

/// A failed part, in words: the request, the status, Graph's code and message.
fn part_error(url: &str, status: u64, part: &Value) -> String {
    let error = part.pointer("/body/error");
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = url.split('?').next().unwrap_or(url);
    format!("GET {path} answered {status} {code} {message}")
        .trim_end()
        .to_string()
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
        let groups = by_bytes(
            vec![("big".into(), "/a/big".into(), 40 * mb), ("s".into(), "/a/s".into(), 1)],
            BATCH_BYTES,
        );
        assert_eq!(groups.len(), 2);
    }
}
