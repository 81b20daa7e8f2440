//! One delta round of one folder: page through, complete and deliver each page, and only
//! then advance the checkpoint.

use std::collections::HashSet;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::SemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::deliver::{self, Mode};
use super::progress::FirstSync;
use super::{MailboxCtx, budget};
use crate::config::StartAt;
use crate::graph::{CallError, Change, DeltaPage, GraphErrorKind, Message};
use crate::sink::SinkError;
use crate::store::StoreError;

/// Margin for `start_at = "now"`: Exchange's clock and ours may disagree a little.
const START_MARGIN: time::Duration = time::Duration::minutes(2);
/// A resync after an expired delta token reaches back to the last checkpoint less this: mail
/// received shortly before a checkpoint may have reached the folder after it.
pub const RESYNC_MARGIN: time::Duration = time::Duration::days(1);
/// Delivered keys are kept at least this long (and longer while a resync could reach them).
pub const KEY_RETENTION: time::Duration = time::Duration::days(31);
/// A round that found nothing does not write a checkpoint when the store took one of the
/// folder less than this ago: the stored link is then a little older, and a crash replays
/// nothing but empty rounds from it (idle mailboxes then cost the store almost nothing).
pub const QUIET_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

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
    /// Attachment content read (what the next page's size is learnt from, with the bodies).
    pub attachment_bytes: u64,
}

impl RoundStats {
    /// Adds another page's or round's counts.
    pub fn add(&mut self, other: RoundStats) {
        self.delivered += other.delivered;
        self.quarantined += other.quarantined;
        self.attachment_bytes += other.attachment_bytes;
    }
}

/// Graph's failure as the round's: an answer without what the round needs concerns this
/// folder only, as an unreadable page does.
fn folder_failure(e: CallError) -> PollError {
    match e {
        CallError::Shape(shape) => PollError::Malformed(shape.to_string()),
        other => PollError::Call(other),
    }
}

/// Works around a delta page Graph cannot serve readably: lists the folder's message ids over
/// the resync window (ids alone read fine), delivers each message that can be read and
/// quarantines, with its id, each that cannot; then starts a fresh delta from now. Returns
/// that delta's first link, where it starts, and what was delivered.
async fn salvage(ctx: &MailboxCtx, folder: &str) -> Result<(String, OffsetDateTime, RoundStats), PollError> {
    let mailbox = &ctx.config.address;
    let began = OffsetDateTime::now_utc();
    let from = ctx
        .store
        .delta_window(mailbox, folder)
        .await?
        .resync_from(RESYNC_MARGIN);
    let graph = ctx.mailbox_graph();
    let mut next: Option<String> = None;
    let mut stats = RoundStats::default();
    loop {
        ctx.gate.wait_unpaused().await;
        let _page = ctx.ingest.page().await;
        let list = match &next {
            None => graph.message_list(folder, from).await,
            Some(link) => graph.message_list_page(link).await,
        }
        .map_err(folder_failure)?;
        // Ids alone: each message is read whole by itself.
        let items: Vec<Message> = list
            .value
            .into_iter()
            .filter_map(|m| m.id)
            .map(Message::with_id)
            .collect();
        stats.add(deliver::items(ctx, folder, items, Mode::Round).await?);
        match list.next_link {
            Some(link) => next = Some(link),
            None => break,
        }
    }
    let start = began - START_MARGIN;
    let link = graph.delta_start(folder, Some(start));
    save_link(ctx, folder, &link).await?;
    tracing::info!(
        mailbox = %mailbox, folder, delivered = stats.delivered, quarantined = stats.quarantined,
        "Read the folder message by message; delta goes on from now."
    );
    Ok((link, start, stats))
}

/// A progress counter when this folder never completed a round (its first sync), going on
/// from the counts of an earlier try; asked only once a round has a second page, so idle
/// rounds never ask the store.
async fn first_sync(ctx: &MailboxCtx, folder: &str) -> Option<FirstSync> {
    let mailbox = &ctx.config.address;
    let window = ctx.store.delta_window(mailbox, folder).await.ok()?;
    if window.checkpoint.is_some() {
        return None;
    }
    tracing::info!(
        mailbox = %mailbox, folder,
        "First sync of the folder started; progress is logged once a minute and shown in /v1/mailboxes."
    );
    Some(FirstSync::start(folder, ctx.board.first_sync(mailbox)))
}

/// Stores the folder's delta link and remembers it for the next round.
async fn save_link(ctx: &MailboxCtx, folder: &str, link: &str) -> Result<(), PollError> {
    ctx.store.save_delta_link(&ctx.config.address, folder, link).await?;
    ctx.hold_link(folder, link, false);
    Ok(())
}

/// True for a first link with a receipt-time filter (Graph caps those rounds).
fn is_filtered(link: &str) -> bool {
    link.contains("%24filter=") || link.contains("$filter=")
}

/// Runs one round of `folder`; `held` is a page permit the caller already waited for (used for
/// the first page).
pub async fn round<'c>(
    ctx: &'c MailboxCtx,
    folder: &str,
    cancel: &CancellationToken,
    mut held: Option<SemaphorePermit<'c>>,
) -> Result<RoundStats, PollError> {
    let mailbox = &ctx.config.address;
    let round_began = OffsetDateTime::now_utc();
    // The task is the folder's only writer: after its first round the link comes from memory
    // (an idle round then costs the store one write, not a read and a write).
    let saved = match ctx.remembered_link(folder) {
        Some(link) => Some(link),
        None => ctx.store.delta_link(mailbox, folder).await?,
    };
    let mut link = match saved {
        Some(link) => link,
        None => {
            // Fix the start now and persist it, so a crash in the first round resumes the same
            // round, and a later resync never reaches back before it.
            let from = match ctx.config.start_at {
                StartAt::Now => Some(round_began - START_MARGIN),
                StartAt::All => None,
                StartAt::Since(t) => Some(t),
            };
            let url = ctx.mailbox_graph().delta_start(folder, from);
            ctx.store.begin_delta(mailbox, folder, &url, from).await?;
            ctx.hold_link(folder, &url, false);
            url
        }
    };
    let mut filtered = is_filtered(&link);
    // The receipt-time filter of the current sub-round, when inboxd built it in this call.
    let mut window_from: Option<OffsetDateTime> = None;
    let mut newest_seen: Option<OffsetDateTime> = None;
    let mut stats = RoundStats::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut resyncs = 0;
    // Counted only in a multi-page round of a folder that never completed one (its first sync).
    let mut progress: Option<FirstSync> = None;
    let mut first_checked = false;
    // Anything seen, or a link moved by a resync or a split: the checkpoint is written.
    let mut eventful = false;
    loop {
        if cancel.is_cancelled() {
            return Err(PollError::Cancelled);
        }
        // One page in memory per permit, sized to its share of the budget: a backlog in many
        // mailboxes, or of large messages, cannot exhaust memory.
        let _page = match held.take() {
            Some(permit) => permit,
            None => {
                // A throttled mailbox waits here, before taking a permit others could use.
                ctx.gate.wait_unpaused().await;
                ctx.ingest.page().await
            }
        };
        let graph = ctx.mailbox_graph();
        // Large futures are boxed: a round waiting here (all 10,000 first rounds at start-up)
        // then holds pointers, not every request's state machine.
        let page = match Box::pin(graph.delta_page(&link, ctx.page_size.get())).await {
            Err(CallError::Graph(e)) if e.kind == GraphErrorKind::SyncStateNotFound && resyncs < 2 => {
                resyncs += 1;
                let window = ctx.store.delta_window(mailbox, folder).await?;
                let from = window.resync_from(RESYNC_MARGIN);
                tracing::warn!(
                    mailbox = %mailbox, folder, request_id = e.request_id.as_deref().unwrap_or(""),
                    client_request_id = %e.client_request_id,
                    resync_from = from.and_then(|t| t.format(&Rfc3339).ok()).as_deref().unwrap_or("the beginning"),
                    "Delta token expired; reading the folder again from the last checkpoint (already delivered messages are not announced again)."
                );
                link = graph.delta_start(folder, from);
                filtered = from.is_some();
                window_from = from;
                newest_seen = None;
                seen.clear();
                eventful = true;
                // Keeps the window: a crash or another 410 resyncs from the same point.
                save_link(ctx, folder, &link).await?;
                continue;
            }
            // A page Graph keeps answering unreadably: read the folder message by message.
            Err(CallError::Graph(e)) if e.kind == GraphErrorKind::Malformed => {
                drop(_page);
                tracing::warn!(
                    mailbox = %mailbox, folder, request_id = e.request_id.as_deref().unwrap_or(""),
                    client_request_id = %e.client_request_id, error = %e.message,
                    "A delta page cannot be read; reading the folder message by message instead."
                );
                let (fresh_link, from, salvaged) = Box::pin(salvage(ctx, folder)).await?;
                stats.add(salvaged);
                link = fresh_link;
                filtered = true;
                window_from = Some(from);
                newest_seen = None;
                seen.clear();
                eventful = true;
                continue;
            }
            other => other.map_err(folder_failure)?,
        };
        let DeltaPage {
            value: items,
            next_link,
            delta_link,
        } = page;
        let count = items.len();
        eventful |= count > 0;
        let mut weight = 0;
        let mut fresh: Vec<Message> = Vec::new();
        let mut unreadable = Vec::new();
        // Each item is read on its own (its strings moved, not copied): a malformed one is
        // quarantined with what was wrong, and the rest of the page goes on.
        for item in items {
            let m = match item.read() {
                Ok(Change::Message(m)) => m,
                Ok(Change::Removed) => {
                    weight += budget::ITEM_OVERHEAD;
                    continue;
                }
                Err(bad) => {
                    weight += budget::ITEM_OVERHEAD;
                    if bad.id.as_ref().is_none_or(|id| seen.insert(id.clone())) {
                        unreadable.push(bad);
                    }
                    continue;
                }
            };
            weight += budget::weight(&m);
            if filtered
                && let Some(received) = m
                    .received_date_time
                    .as_deref()
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            {
                newest_seen = newest_seen.max(Some(received));
            }
            // Graph may return an item twice in one round; it is delivered once.
            if seen.insert(m.id.clone()) {
                fresh.push(*m);
            }
        }
        if !unreadable.is_empty() {
            stats.quarantined += Box::pin(deliver::unreadable(ctx, folder, unreadable)).await?;
        }
        let page_stats = Box::pin(deliver::items(ctx, folder, fresh, Mode::Round)).await?;
        let page_messages = page_stats.delivered + page_stats.quarantined;
        ctx.page_size
            .learn(&ctx.ingest, weight + page_stats.attachment_bytes, count);
        stats.add(page_stats);
        if !first_checked && next_link.is_some() {
            first_checked = true;
            progress = Box::pin(first_sync(ctx, folder)).await;
        }
        if let Some(p) = progress.as_mut() {
            p.page(page_messages);
            ctx.board.set_first_sync(mailbox, Some(p.view()));
            if p.log_due() {
                let v = p.view();
                tracing::info!(
                    mailbox = %mailbox, folder, messages = v.messages, pages = v.pages,
                    messages_per_second = v.messages_per_second, "First sync in progress."
                );
            }
        }
        if let Some(next) = next_link {
            link = next;
        } else if let Some(delta) = delta_link {
            if filtered && seen.len() >= ctx.filtered_delta_cap {
                // Graph ended the round at its cap: what lies beyond the newest message seen
                // was never announced. A new filtered round from there covers it (what it
                // repeats is deduplicated); the capped round's delta link is not kept.
                match newest_seen.filter(|newest| window_from.is_none_or(|from| *newest > from)) {
                    Some(newest) => {
                        tracing::warn!(
                            mailbox = %mailbox, folder, items = seen.len(),
                            from = newest.format(&Rfc3339).unwrap_or_default(),
                            "A delta filtered on receipt time stopped at Graph's item cap; reading on from the newest message seen."
                        );
                        link = graph.delta_start(folder, Some(newest));
                        save_link(ctx, folder, &link).await?;
                        window_from = Some(newest);
                        newest_seen = None;
                        seen.clear();
                        continue;
                    }
                    None => tracing::error!(
                        mailbox = %mailbox, folder, items = seen.len(),
                        "A delta filtered on receipt time stopped at Graph's item cap and cannot be split further (every message has the same receipt time): some messages may be missing. Replay the folder with start_at set after them."
                    ),
                }
            }
            if !eventful && ctx.checkpointed_within(folder, QUIET_CHECKPOINT_EVERY) {
                ctx.hold_link(folder, &delta, false);
            } else {
                ctx.store.save_checkpoint(mailbox, folder, &delta, round_began).await?;
                ctx.hold_link(folder, &delta, true);
            }
            if let Some(p) = &progress {
                let v = p.view();
                tracing::info!(
                    mailbox = %mailbox, folder, messages = v.messages, pages = v.pages,
                    messages_per_second = v.messages_per_second, "First sync done."
                );
                ctx.board.set_first_sync(mailbox, None);
            }
            return Ok(stats);
        } else {
            return Err(PollError::Malformed(
                "neither @odata.nextLink nor @odata.deltaLink".into(),
            ));
        }
    }
}
