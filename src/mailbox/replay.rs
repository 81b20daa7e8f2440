//! Quarantined messages whose replay was asked for through the API: fetched again and
//! delivered with their original `dedup_key`, then released from the quarantine.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::MailboxCtx;
use super::deliver::{self, Mode};
use super::poll::{PollError, RoundStats};
use crate::graph::Message;

/// Messages replayed per delivery (one `$batch` of fetches).
const CHUNK: usize = 20;

/// Replays everything due for this mailbox.
pub async fn run(ctx: &MailboxCtx) -> Result<RoundStats, PollError> {
    if !ctx.replay_pending.swap(false, Ordering::SeqCst) {
        return Ok(RoundStats::default());
    }
    let result = replay_due(ctx).await;
    if result.is_err() {
        // What could not be replayed stays due: look again next round.
        ctx.replay_pending.store(true, Ordering::SeqCst);
    }
    result
}

/// Replays the entries the store holds as due.
async fn replay_due(ctx: &MailboxCtx) -> Result<RoundStats, PollError> {
    let due = ctx.store.replays_due(&ctx.config.address).await?;
    if due.is_empty() {
        return Ok(RoundStats::default());
    }
    tracing::info!(mailbox = %ctx.config.address, messages = due.len(), "Replaying quarantined messages.");
    let mut by_folder: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for entry in due {
        // Only the id: the message is read again in full, as it is now.
        by_folder
            .entry(entry.folder)
            .or_default()
            .push(Message::with_id(entry.graph_id));
    }
    let mut stats = RoundStats::default();
    for (folder, items) in by_folder {
        for chunk in items.chunks(CHUNK) {
            stats.add(deliver::items(ctx, &folder, chunk.to_vec(), Mode::Replay).await?);
        }
    }
    Ok(stats)
}
