//! One delta round of one folder: page through, fetch what the pages lack, deliver,
//! record, and only then advance the checkpoint.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use super::MailboxCtx;
use super::convert::{self, DELTA_SELECT};
use crate::config::{AfterIngest, StartAt};
use crate::domain::{MAX_WIRE_WAIT, bounded_secs};
use crate::graph::{Call, CallError, GraphErrorKind, segment};
use crate::sink::SinkError;
use crate::store::{QuarantineEntry, StoreError};

/// Delta page size asked for.
const PAGE_SIZE: u32 = 100;
/// Graph's `$batch` limit.
const BATCH_MAX: usize = 20;
/// How many times failed requests inside a `$batch` are retried.
const BATCH_RETRIES: usize = 5;
/// Margin for `start_at = "now"`: Exchange's clock and ours may disagree a little.
const START_MARGIN: time::Duration = time::Duration::minutes(2);
/// After an expired delta token, the fresh round looks back this far; delivered keys
/// are kept at least as long, so nothing in the window is announced twice.
pub const RESYNC_WINDOW: time::Duration = time::Duration::days(30);
/// A resync reaches back to the last checkpoint less this.
pub const RESYNC_MARGIN: time::Duration = time::Duration::days(1);
/// Delivered keys are kept at least this long (longer while a resync could reach them).
pub const KEY_RETENTION: time::Duration = time::Duration::days(31);

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Graph or the token endpoint.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sink did not acknowledge.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A delta page that cannot be followed.
    #[error("malformed delta page: {0}")]
    Malformed(String),
    /// Shutdown asked us to stop between pages.
    #[error("cancelled")]
    Cancelled,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct RoundStats {
    /// Messages acknowledged by the sink.
    pub delivered: u64,
    /// Messages quarantined.
    pub quarantined: u64,
}

/// The first request of a round that starts from scratch.
fn initial_url(ctx: &MailboxCtx, folder: &str, from: Option<OffsetDateTime>) -> String {
    let mut url = ctx.graph.base().clone();
    url.set_path(&format!(
        "{}users/{}/mailFolders/{}/messages/delta",
        ctx.graph.base().path(),
        segment(ctx.config.address.as_str()),
        segment(folder)
    ));
    url.query_pairs_mut().append_pair("$select", DELTA_SELECT);
    if let Some(t) = from {
        let at = t
            .replace_nanosecond(0)
            .unwrap_or(t)
            .format(&Rfc3339)
            .unwrap_or_default();
        url.query_pairs_mut()
            .append_pair("$filter", &format!("receivedDateTime ge {at}"));
    }
    url.to_string()
}

/// Runs one round of `folder`.
pub async fn round(ctx: &MailboxCtx, folder: &str, cancel: &CancellationToken) -> Result<RoundStats, PollError> {
    let mailbox = &ctx.config.address;
    let mut link = match ctx.store.delta_link(mailbox, folder).await? {
        Some(link) => link,
        None => {
            // Fix the start now and persist it, so a crash in the first round resumes the same round.
            let from = match ctx.config.start_at {
                StartAt::Now => Some(OffsetDateTime::now_utc() - START_MARGIN),
                StartAt::All => None,
                StartAt::Since(t) => Some(t),
            };
            let url = initial_url(ctx, folder, from);
            ctx.store.save_delta_link(mailbox, folder, &url).await?;
            url
        }
    };
    let mut stats = RoundStats::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut resyncs = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(PollError::Cancelled);
        }
        // One page in memory per permit: a backlog in many mailboxes cannot exhaust memory.
        let _page = ctx.ingest.acquire().await.expect("ingest semaphore is never closed");
        let call = Call::get("delta", link.clone())
            .prefer(format!("odata.maxpagesize={PAGE_SIZE}"))
            .prefer("IdType=\"ImmutableId\"");
        let page = match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
            Err(CallError::Graph(e)) if e.kind == GraphErrorKind::SyncStateNotFound && resyncs < 2 => {
                resyncs += 1;
                tracing::warn!(
                    mailbox = %mailbox, folder, request_id = e.request_id.as_deref().unwrap_or(""),
                    client_request_id = %e.client_request_id,
                    "Delta token expired; starting a fresh round (already delivered messages are not announced again)."
                );
                link = initial_url(ctx, folder, Some(OffsetDateTime::now_utc() - RESYNC_WINDOW));
                ctx.store.save_delta_link(mailbox, folder, &link).await?;
                continue;
            }
            other => other?,
        };
        let items = page
            .get("value")
            .and_then(Value::as_array)
            .ok_or_else(|| PollError::Malformed("no 'value' array".into()))?;
        let mut fresh: Vec<&Value> = Vec::new();
        for item in items {
            if item.get("@removed").is_some() {
                continue;
            }
            match item.get("id").and_then(Value::as_str) {
                Some(id) if seen.insert(id.to_string()) => fresh.push(item),
                Some(_) => {} // a replay within the round
                None => {
                    quarantine(ctx, folder, "(no id)", "delta item without an id").await?;
                    stats.quarantined += 1;
                }
            }
        }
        let page_stats = deliver(ctx, folder, &fresh).await?;
        stats.delivered += page_stats.delivered;
        stats.quarantined += page_stats.quarantined;
        if let Some(next) = page.get("@odata.nextLink").and_then(Value::as_str) {
            link = next.to_string();
        } else if let Some(delta) = page.get("@odata.deltaLink").and_then(Value::as_str) {
            ctx.store.save_delta_link(mailbox, folder, delta).await?;
            return Ok(stats);
        } else {
            return Err(PollError::Malformed(
                "neither @odata.nextLink nor @odata.deltaLink".into(),
            ));
        }
    }
}

async fn quarantine(ctx: &MailboxCtx, folder: &str, graph_id: &str, reason: &str) -> Result<(), StoreError> {
    tracing::warn!(mailbox = %ctx.config.address, folder, graph_id, reason, "Message quarantined; the mailbox goes on.");
    ctx.metrics.quarantined.inc();
    let entry = QuarantineEntry {
        id: String::new(),
        mailbox: ctx.config.address.clone(),
        folder: folder.to_string(),
        graph_id: graph_id.to_string(),
        reason: reason.to_string(),
        at: OffsetDateTime::now_utc(),
    };
    ctx.store.quarantine(&entry).await
}

/// Delivers the new messages of one page; returns only when each is acknowledged or quarantined.
async fn deliver(ctx: &MailboxCtx, folder: &str, items: &[&Value]) -> Result<RoundStats, PollError> {
    let mailbox = &ctx.config.address;
    let mut stats = RoundStats::default();
    let candidates: Vec<&Value> = items
        .iter()
        .copied()
        .filter(|m| m.get("isDraft").and_then(Value::as_bool) != Some(true))
        .collect();
    if candidates.is_empty() {
        return Ok(stats);
    }
    let keys: Vec<String> = candidates
        .iter()
        .map(|m| convert::dedup_key(mailbox, m["id"].as_str().unwrap_or_default()))
        .collect();
    let done = ctx.store.delivered(mailbox, &keys).await?;
    let todo: Vec<&Value> = candidates
        .into_iter()
        .zip(&keys)
        .filter(|(_, k)| !done.contains(*k))
        .map(|(m, _)| m)
        .collect();
    if todo.is_empty() {
        return Ok(stats);
    }
    let mut requests = Vec::new();
    for m in &todo {
        let id = m["id"].as_str().unwrap_or_default();
        if m.get("internetMessageHeaders").is_none() {
            requests.push((
                format!("h:{id}"),
                format!(
                    "/users/{}/messages/{}?$select=internetMessageHeaders",
                    segment(mailbox.as_str()),
                    segment(id)
                ),
            ));
        }
        let html = m.pointer("/body/content").and_then(Value::as_str).unwrap_or_default();
        if m.get("hasAttachments").and_then(Value::as_bool) == Some(true) || html.contains("cid:") {
            requests.push((
                format!("a:{id}"),
                format!(
                    "/users/{}/messages/{}/attachments",
                    segment(mailbox.as_str()),
                    segment(id)
                ),
            ));
        }
    }
    let fetched = batch_get(ctx, requests).await?;
    let mut events = Vec::new();
    for m in &todo {
        let id = m["id"].as_str().unwrap_or_default();
        let headers = m
            .get("internetMessageHeaders")
            .or_else(|| {
                fetched
                    .get(&format!("h:{id}"))
                    .and_then(|v| v.get("internetMessageHeaders"))
            })
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let attachments = fetched
            .get(&format!("a:{id}"))
            .and_then(|v| v.get("value"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match convert::event(
            mailbox,
            folder,
            m,
            &headers,
            &attachments,
            ctx.config.max_inline_attachment_bytes,
        ) {
            Ok(e) => events.push(e),
            Err(reason) => {
                quarantine(ctx, folder, id, &reason).await?;
                ctx.store
                    .mark_delivered(mailbox, &[convert::dedup_key(mailbox, id)], OffsetDateTime::now_utc())
                    .await?;
                stats.quarantined += 1;
            }
        }
    }
    let outcomes = ctx.sink.deliver(&events).await;
    let now = OffsetDateTime::now_utc();
    let mut acked = Vec::new();
    let mut acked_ids = Vec::new();
    let mut unavailable = None;
    for (event, outcome) in events.iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                acked.push(event.dedup_key.clone());
                acked_ids.push(event.graph_id.clone());
                if let Ok(received) = OffsetDateTime::parse(&event.received_at, &Rfc3339) {
                    ctx.metrics
                        .delivery_lag
                        .observe((now - received).as_seconds_f64().max(0.0));
                }
            }
            Err(SinkError::Rejected(reason)) => {
                quarantine(
                    ctx,
                    folder,
                    &event.graph_id,
                    &format!("sink rejected the event: {reason}"),
                )
                .await?;
                acked.push(event.dedup_key.clone());
                stats.quarantined += 1;
            }
            Err(e @ SinkError::Unavailable(_)) => unavailable = Some(e),
        }
    }
    ctx.store.mark_delivered(mailbox, &acked, now).await?;
    stats.delivered = acked_ids.len() as u64;
    ctx.metrics.messages_delivered.inc_by(stats.delivered);
    after_ingest(ctx, &acked_ids).await;
    match unavailable {
        Some(e) => Err(e.into()),
        None => Ok(stats),
    }
}

/// GETs inside `$batch` (20 a time); failed parts are retried after their `Retry-After`.
async fn batch_get(ctx: &MailboxCtx, requests: Vec<(String, String)>) -> Result<HashMap<String, Value>, PollError> {
    let mut out = HashMap::new();
    for chunk in requests.chunks(BATCH_MAX) {
        let mut pending: Vec<(String, String)> = chunk.to_vec();
        for attempt in 0..=BATCH_RETRIES {
            let parts: Vec<Value> = pending
                .iter()
                .map(|(id, url)| json!({"id": id, "method": "GET", "url": url, "headers": {"Prefer": "IdType=\"ImmutableId\""}}))
                .collect();
            let mut call = Call::post("batch", "$batch", json!({"requests": parts}));
            call.weight = pending.len().min(4) as u32;
            let answer = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
            let responses = answer
                .get("responses")
                .and_then(Value::as_array)
                .ok_or_else(|| PollError::Malformed("$batch answer without 'responses'".into()))?;
            let mut retry = Vec::new();
            let mut wait = Duration::ZERO;
            for r in responses {
                let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                let status = r.get("status").and_then(Value::as_u64).unwrap_or(0);
                match status {
                    200..=299 => {
                        out.insert(id, r.get("body").cloned().unwrap_or(Value::Null));
                    }
                    429 | 500..=599 => {
                        let ra = r.get("headers").and_then(Value::as_object).and_then(|h| {
                            h.iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                                .and_then(|(_, v)| v.as_str()?.trim().parse::<f64>().ok())
                        });
                        let part_wait = ra.and_then(|s| bounded_secs(s, MAX_WIRE_WAIT));
                        wait = wait.max(part_wait.unwrap_or(Duration::from_secs(1)));
                        if let Some(p) = pending.iter().find(|(pid, _)| *pid == id) {
                            retry.push(p.clone());
                        }
                    }
                    _ => {
                        tracing::warn!(mailbox = %ctx.config.address, part = %id, status, "A request inside $batch failed; the message is delivered without what it would have added.");
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if attempt == BATCH_RETRIES {
                return Err(PollError::Malformed(format!(
                    "{} requests inside $batch kept failing",
                    retry.len()
                )));
            }
            ctx.gate.pause_for(wait);
            pending = retry;
        }
    }
    Ok(out)
}

/// Marks read or moves acknowledged messages. Best effort: the message is already delivered.
async fn after_ingest(ctx: &MailboxCtx, ids: &[String]) {
    let (method, suffix, body) = match &ctx.config.after_ingest {
        AfterIngest::None => return,
        AfterIngest::MarkRead => ("PATCH", "", json!({"isRead": true})),
        AfterIngest::Move(folder) => ("POST", "/move", json!({"destinationId": folder})),
    };
    for chunk in ids.chunks(BATCH_MAX) {
        let parts: Vec<Value> = chunk
            .iter()
            .map(|id| {
                json!({
                    "id": id, "method": method,
                    "url": format!("/users/{}/messages/{}{suffix}", segment(ctx.config.address.as_str()), segment(id)),
                    "headers": {"Content-Type": "application/json", "Prefer": "IdType=\"ImmutableId\""},
                    "body": body,
                })
            })
            .collect();
        let mut call = Call::post("after_ingest", "$batch", json!({"requests": parts}));
        call.weight = chunk.len().min(4) as u32;
        match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
            Ok(answer) => {
                let failed = answer
                    .get("responses")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter(|p| p.get("status").and_then(Value::as_u64).is_none_or(|s| s >= 300))
                            .count()
                    })
                    .unwrap_or(chunk.len());
                if failed > 0 {
                    tracing::warn!(mailbox = %ctx.config.address, failed, "Post-ingest action failed for some delivered messages.");
                }
            }
            Err(e) => {
                tracing::warn!(mailbox = %ctx.config.address, error = %e, "Post-ingest action failed; the messages were delivered.")
            }
        }
    }
}
