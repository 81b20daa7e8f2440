//! From delta items to acknowledged events: skip what was delivered, complete what the items
//! lack, convert, hand to the sink, record, and only then run the post-ingest action.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::MailboxCtx;
use super::convert;
use super::fetch;
use super::poll::{PollError, RoundStats};
use crate::config::AfterIngest;
use crate::graph::{BATCH_MAX, BadItem, Disposal, Message};
use crate::sink::SinkError;
use crate::store::{QuarantineEntry, StoreError};

/// Why messages are being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A delta round: messages already delivered are skipped.
    Round,
    /// A replay asked for through the API: delivered again whatever the delivered keys say,
    /// and released from the quarantine once acknowledged.
    Replay,
}

/// Quarantines a message with a reason; the mailbox goes on.
pub async fn quarantine(ctx: &MailboxCtx, folder: &str, graph_id: &str, reason: &str) -> Result<(), StoreError> {
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

/// Quarantines delta items that could not be read as messages, each with what was wrong; one
/// with a readable id counts as handled, like any quarantined message, so a resync does not
/// quarantine it again. Returns how many were quarantined.
pub async fn unreadable(ctx: &MailboxCtx, folder: &str, bad: Vec<BadItem>) -> Result<u64, PollError> {
    let mailbox = &ctx.config.address;
    let keys: Vec<String> = bad
        .iter()
        .filter_map(|b| b.id.as_deref())
        .map(|id| convert::dedup_key(mailbox, id))
        .collect();
    let done = if keys.is_empty() {
        Default::default()
    } else {
        ctx.store.delivered(mailbox, &keys).await?
    };
    let mut quarantined = 0;
    for item in bad {
        let id = item.id.as_deref();
        if id.is_some_and(|id| done.contains(&convert::dedup_key(mailbox, id))) {
            continue;
        }
        quarantine(ctx, folder, id.unwrap_or("(no id)"), &item.error.to_string()).await?;
        quarantined += 1;
    }
    if !keys.is_empty() {
        ctx.store
            .mark_delivered(mailbox, &keys, OffsetDateTime::now_utc())
            .await?;
    }
    Ok(quarantined)
}

/// Delivers the given messages (whole, partial or known by id only); returns only when each
/// is acknowledged or quarantined, or with the error that stopped it (nothing unacknowledged
/// is marked delivered).
pub async fn items(ctx: &MailboxCtx, folder: &str, items: Vec<Message>, mode: Mode) -> Result<RoundStats, PollError> {
    let mailbox = &ctx.config.address;
    let mut stats = RoundStats::default();
    // Drafts are not mail to route (a partial item says nothing either way: checked after fetch).
    let candidates: Vec<Message> = items.into_iter().filter(|m| !m.is_draft()).collect();
    let todo: Vec<Message> = if mode == Mode::Replay {
        candidates
    } else {
        let keys: Vec<String> = candidates.iter().map(|m| convert::dedup_key(mailbox, &m.id)).collect();
        let done = ctx.store.delivered(mailbox, &keys).await?;
        candidates
            .into_iter()
            .zip(&keys)
            .filter(|(_, k)| !done.contains(*k))
            .map(|(m, _)| m)
            .collect()
    };
    if todo.is_empty() {
        return Ok(stats);
    }
    let completed = fetch::complete(ctx, todo).await?;
    let mut events = Vec::new();
    let mut given_up = Vec::new();
    for (id, outcome) in completed {
        if let Ok(c) = &outcome {
            // Content held (under the inline cap); what is over it was hashed and dropped.
            stats.attachment_bytes += c
                .attachments
                .iter()
                .filter(|a| a.attachment.content_bytes.is_some())
                .filter_map(|a| a.attachment.size)
                .sum::<u64>();
        }
        let converted = outcome.and_then(|c| {
            if c.message.is_draft() {
                return Ok(None);
            }
            convert::event(
                mailbox,
                folder,
                c.message,
                &c.headers,
                c.attachments,
                ctx.config.max_inline_attachment_bytes,
            )
            .map(Some)
        });
        match converted {
            Ok(Some(event)) => events.push(event),
            Ok(None) => {}
            Err(reason) => {
                quarantine(ctx, folder, &id, &reason).await?;
                given_up.push(convert::dedup_key(mailbox, &id));
                stats.quarantined += 1;
            }
        }
    }
    // A quarantined message counts as handled: the round moves on, the API can replay it.
    if mode == Mode::Round {
        ctx.store
            .mark_delivered(mailbox, &given_up, OffsetDateTime::now_utc())
            .await?;
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
                if mode == Mode::Round {
                    acked.push(event.dedup_key.clone());
                }
                stats.quarantined += 1;
            }
            Err(e @ SinkError::Unavailable(_)) => unavailable = Some(e),
        }
    }
    ctx.store.mark_delivered(mailbox, &acked, now).await?;
    if mode == Mode::Replay {
        for id in &acked_ids {
            ctx.store.release_quarantined(mailbox, id).await?;
        }
    }
    stats.delivered = acked_ids.len() as u64;
    ctx.metrics.messages_delivered.inc_by(stats.delivered);
    after_ingest(ctx, &acked_ids).await;
    match unavailable {
        Some(e) => Err(e.into()),
        None => Ok(stats),
    }
}

/// Marks read or moves acknowledged messages. Best effort: the message is already delivered.
async fn after_ingest(ctx: &MailboxCtx, ids: &[String]) {
    let disposal = match &ctx.config.after_ingest {
        AfterIngest::None => return,
        AfterIngest::MarkRead => Disposal::MarkRead,
        AfterIngest::Move(folder) => Disposal::Move(folder),
    };
    let graph = ctx.mailbox_graph();
    for chunk in ids.chunks(BATCH_MAX) {
        match graph.dispose(chunk, disposal).await {
            Ok(0) => {}
            Ok(failed) => {
                tracing::warn!(mailbox = %ctx.config.address, failed, "Post-ingest action failed for some delivered messages.");
            }
            Err(e) => {
                tracing::warn!(mailbox = %ctx.config.address, error = %e, "Post-ingest action failed; the messages were delivered.")
            }
        }
    }
}
