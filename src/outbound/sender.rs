//! The sender: one worker per mailbox with due rows, so a slow or throttled mailbox delays
//! only its own replies. Each worker loads its rows one at a time. Before creating anything
//! in Graph for a row that was started before, it looks for the marked draft; once `send` was
//! asked for, it never creates a draft again, it only finds out what became of the message
//! (see `confirm.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::confirm::{self, Whereabouts};
use super::request::{Kind, OutboundRequest};
use super::steps;
use crate::auth::Verdict;
use crate::config::OutboundConfig;
use crate::domain::{MailboxAddress, MailboxState};
use crate::event::{OUTBOUND_SCHEMA, OutboundEvent};
use crate::graph::{Call, CallError, GraphErrorKind};
use crate::mailbox::{MailboxCtx, StatusBoard};
use crate::sink::Sink;
use crate::store::{OutboundRecord, OutboundStatus, SendStep, Store, StoreError};

/// The extended property that marks inboxd's drafts with the outbound id.
pub const MARKER_PROPERTY: &str = "String {8c6f3b1e-2d4a-4b7e-9f15-6a0c2e9d4b31} Name inboxd-outbound-id";
/// How often finished rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest wait between tries of a store write that fails.
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why one attempt stopped.
#[derive(Debug)]
pub(super) enum Failure {
    /// Retry later (the error is kept for `GET /v1/outbound/{id}`).
    Transient(String),
    /// Never going to work.
    Permanent(String),
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        match &e {
            CallError::Token(t) if t.verdict == Verdict::Transient => Failure::Transient(e.to_string()),
            // A flagged app or mailbox: the row waits until it is fixed, it is not lost.
            CallError::Token(_) => Failure::Transient(e.to_string()),
            CallError::Graph(g) => match g.kind {
                GraphErrorKind::Rejected => Failure::Permanent(format!(
                    "Graph refused the message: {} {}",
                    g.code.as_deref().unwrap_or(""),
                    g.message
                )),
                GraphErrorKind::ItemNotFound => {
                    Failure::Permanent(format!("the original message was not found: {}", g.message))
                }
                _ => Failure::Transient(e.to_string()),
            },
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Transient(e.to_string())
    }
}

/// How one attempt left a row that is not finished with an error.
enum Progress {
    /// The copy is in Sent Items and no non-delivery report came back.
    Sent,
    /// Accepted, never found within the confirmation period.
    Unconfirmed(String),
    /// Look again after this long; the note is shown as the row's `error`.
    Wait(Duration, String),
}

/// The outbox worker and the API's way in.
pub struct Outbox {
    store: Arc<dyn Store>,
    sink: Arc<Sink>,
    mailboxes: crate::supervisor::Registry,
    board: Arc<StatusBoard>,
    /// Plain client for upload URLs (they carry their own token: no Authorization header).
    upload: reqwest::Client,
    /// Wakes the worker when the API stored something.
    wake: Notify,
    /// `inboxd_outbound_total{status}`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Confirmation period and retention.
    settings: OutboundConfig,
    /// Mailboxes with a worker running.
    active: Mutex<HashSet<MailboxAddress>>,
}

impl Outbox {
    /// The outbox over the configured mailboxes.
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<Sink>,
        mailboxes: crate::supervisor::Registry,
        board: Arc<StatusBoard>,
        upload: reqwest::Client,
        metrics: Arc<crate::metrics::Metrics>,
        settings: OutboundConfig,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            store,
            sink,
            mailboxes,
            board,
            upload,
            wake: Notify::new(),
            metrics,
            settings,
            active: Mutex::new(HashSet::new()),
        })
    }

    /// The store (the API reads and enqueues through it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Asks the worker to look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashSet<MailboxAddress>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Works until cancelled; each mailbox's row in progress finishes first.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut workers = tokio::task::JoinSet::new();
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                self.prune().await;
            }
            match self.store.outbound_due_mailboxes(OffsetDateTime::now_utc()).await {
                Ok(mailboxes) => {
                    for mailbox in mailboxes {
                        if self.active().insert(mailbox.clone()) {
                            workers.spawn(self.clone().work(mailbox, cancel.clone()));
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot read the outbox; replies wait until the store answers."),
            }
            while workers.try_join_next().is_some() {}
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => break,
            }
        }
        while workers.join_next().await.is_some() {}
    }

    /// Drops the payloads of rows finished longer ago than the retention.
    async fn prune(&self) {
        let retention = time::Duration::try_from(self.settings.retention).unwrap_or(time::Duration::days(7));
        match self.store.prune_outbound(OffsetDateTime::now_utc() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "Dropped the payloads of finished outbound messages."),
            Err(e) => tracing::warn!(error = %e, "Cannot prune the outbox; trying again later."),
        }
    }

    /// One mailbox's due rows, one at a time, until none is due.
    async fn work(self: Arc<Self>, mailbox: MailboxAddress, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        while !cancel.is_cancelled() {
            match self.store.next_due_outbound(&mailbox, OffsetDateTime::now_utc()).await {
                Ok(Some(row)) => {
                    backoff = Duration::from_secs(1);
                    self.attempt(row, &cancel).await;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(mailbox = %mailbox, error = %e, "Cannot read the outbox; this mailbox's replies wait until the store answers.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
                }
            }
        }
        self.active().remove(&mailbox);
    }

    /// One attempt at one row, with its bookkeeping. Every way out leaves the row finished
    /// or due later (never due at once), so nothing loops hot.
    async fn attempt(&self, mut row: OutboundRecord, cancel: &CancellationToken) {
        let now = OffsetDateTime::now_utc();
        let Some(ctx) = self.mailboxes.load().get(&row.mailbox).cloned() else {
            // Not configured now (removed, or being restarted by a reload): the row waits,
            // whatever step it is at; it is never failed for that.
            row.next_attempt_at = now + time::Duration::seconds(5);
            row.error = Some("waiting: the mailbox is not configured at the moment".into());
            self.persist(&row, cancel).await;
            return;
        };
        let state = self.board.get(&row.mailbox).map(|v| v.state);
        let on_fallback = ctx.on_fallback.load(std::sync::atomic::Ordering::Relaxed);
        if !on_fallback && state.is_some_and(MailboxState::is_flagged) {
            row.next_attempt_at = now + time::Duration::seconds(30);
            row.error = Some(format!(
                "waiting: the mailbox is {}",
                state.map(|s| s.as_str()).unwrap_or("flagged")
            ));
            self.persist(&row, cancel).await;
            return;
        }
        let building = matches!(row.step, SendStep::New | SendStep::Draft | SendStep::Attachments);
        if building {
            // Persisted before any Graph work: a restart sees that an attempt began and looks
            // for its draft before creating one.
            row.status = OutboundStatus::Sending;
            row.attempts += 1;
            if !self.persist(&row, cancel).await {
                return;
            }
        }
        match self.advance(&ctx, &mut row).await {
            Ok(Progress::Sent) => self.finish(&mut row, OutboundStatus::Sent, None, cancel).await,
            Ok(Progress::Unconfirmed(reason)) => {
                tracing::error!(mailbox = %row.mailbox, outbound_id = %row.id, reason = %reason, "Outbound message unconfirmed; a human should check whether it reached the customer.");
                self.finish(&mut row, OutboundStatus::Unconfirmed, Some(reason), cancel)
                    .await;
            }
            Ok(Progress::Wait(after, note)) => {
                row.status = OutboundStatus::Sending;
                row.error = Some(note);
                row.next_attempt_at = OffsetDateTime::now_utc() + after;
                self.persist(&row, cancel).await;
            }
            Err(Failure::Permanent(reason)) => {
                tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, reason = %reason, "Outbound message failed for good.");
                self.finish(&mut row, OutboundStatus::Failed, Some(reason), cancel)
                    .await;
            }
            Err(Failure::Transient(reason)) => {
                let wait = if matches!(row.step, SendStep::SendRequested | SendStep::Accepted) {
                    self.confirm_wait(&row)
                } else {
                    Duration::from_secs(2u64.saturating_pow(row.attempts.min(8)).min(300))
                };
                tracing::info!(mailbox = %row.mailbox, outbound_id = %row.id, reason = %reason, retry_in_ms = wait.as_millis() as u64, "Outbound message not sent yet; retrying.");
                if matches!(row.step, SendStep::New | SendStep::Draft | SendStep::Attachments) {
                    row.status = OutboundStatus::Queued;
                }
                row.error = Some(reason);
                row.next_attempt_at = OffsetDateTime::now_utc() + wait;
                self.persist(&row, cancel).await;
            }
        }
    }

    /// Writes the row, retrying with backoff while the store fails (the row must not stay
    /// due with stale progress); false when cancelled first.
    async fn persist(&self, row: &OutboundRecord, cancel: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut saved = row.clone();
            saved.updated_at = OffsetDateTime::now_utc();
            match self.store.update_outbound(&saved).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(mailbox = %row.mailbox, outbound_id = %row.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "Cannot record outbound progress; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
                }
            }
        }
    }

    /// Records the end state and tells routing through the sink.
    async fn finish(
        &self,
        row: &mut OutboundRecord,
        status: OutboundStatus,
        error: Option<String>,
        cancel: &CancellationToken,
    ) {
        row.status = status;
        row.error = error.clone();
        if !self.persist(row, cancel).await {
            return;
        }
        self.metrics
            .outbound
            .get_or_create(&vec![("status", status.as_str().to_string())])
            .inc();
        let now = OffsetDateTime::now_utc();
        let event = OutboundEvent {
            schema: OUTBOUND_SCHEMA.into(),
            event_id: uuid::Uuid::new_v4().to_string(),
            dedup_key: format!("outbound:{}:{}", row.id, status.as_str()),
            outbound_id: row.id.clone(),
            idempotency_key: row.idempotency_key.clone(),
            mailbox: row.mailbox.to_string(),
            kind: if row.kind.is_empty() {
                "unknown".into()
            } else {
                row.kind.clone()
            },
            status: status.as_str().into(),
            error,
            at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        if let Some(Err(e)) = self.sink.deliver(&[event]).await.into_iter().next() {
            tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, error = %e, "Could not tell routing the outbound result; GET /v1/outbound/{{id}} has it.");
        }
        if status == OutboundStatus::Sent {
            tracing::info!(mailbox = %row.mailbox, outbound_id = %row.id, "Outbound message sent.");
        }
    }

    /// The send state machine: build the marked draft (looking before creating), send it,
    /// then confirm.
    async fn advance(&self, ctx: &MailboxCtx, row: &mut OutboundRecord) -> Result<Progress, Failure> {
        let user = format!("users/{}", crate::graph::segment(ctx.config.address.as_str()));
        if matches!(row.step, SendStep::SendRequested | SendStep::Accepted) {
            return self.confirm(ctx, &user, row).await;
        }
        // Taken, not copied: the row is written back without its request.
        let req: OutboundRequest = serde_json::from_str(&std::mem::take(&mut row.request))
            .map_err(|e| Failure::Permanent(format!("stored request unreadable: {e}")))?;
        let mut check_marker = false;
        if !(row.step == SendStep::New && row.attempts <= 1) {
            // An earlier attempt may have created drafts whose outcome it never heard.
            let mut drafts = steps::find(ctx, &user, "drafts", &row.id).await?;
            if drafts.is_empty()
                && let Some(id) = &row.draft_id
                && let Some(found) = steps::get(ctx, &user, id).await?
            {
                // Recorded, but Graph dropped the marker before it could be set.
                drafts.push(found);
                check_marker = true;
            }
            if drafts.is_empty() {
                row.step = SendStep::New;
                row.draft_id = None;
            } else {
                let keep = drafts
                    .iter()
                    .position(|d| Some(&d.id) == row.draft_id.as_ref())
                    .unwrap_or(0);
                let kept = drafts.remove(keep);
                for extra in drafts {
                    steps::discard(ctx, &user, &extra.id).await?;
                }
                row.draft_id = Some(kept.id);
                row.internet_message_id = kept.internet_message_id.or(row.internet_message_id.take());
                row.conversation_id = kept.conversation_id.or(row.conversation_id.take());
                if row.step == SendStep::New {
                    row.step = SendStep::Draft;
                }
            }
        }
        let mut fresh = false;
        if row.step == SendStep::New {
            let draft = steps::create_draft(ctx, &user, &req, &row.id).await?;
            row.draft_id = Some(draft.id);
            row.internet_message_id = draft.internet_message_id;
            row.conversation_id = draft.conversation_id;
            row.step = SendStep::Draft;
            fresh = true;
            check_marker = true;
            self.checkpoint(row).await?;
        }
        let draft = row
            .draft_id
            .clone()
            .ok_or_else(|| Failure::Transient("draft id missing".into()))?;
        if check_marker {
            steps::ensure_marker(ctx, &user, &draft, &row.id).await?;
        }
        if row.step == SendStep::Draft {
            // Only what is missing is added: an earlier attempt may have added some.
            let mut present = if fresh {
                Vec::new()
            } else {
                steps::attachments(ctx, &user, &draft).await?
            };
            if req.kind == Kind::Forward && fresh {
                present.clear();
            }
            for a in &req.attachments {
                if !steps::take_present(&mut present, a) {
                    steps::attach(&self.upload, ctx, &user, &draft, a).await?;
                }
            }
            row.step = SendStep::Attachments;
            self.checkpoint(row).await?;
        }
        drop(req);
        self.submit(ctx, &user, row, &draft).await
    }

    /// Asks Graph to send the draft. From the checkpoint before the request on, no new
    /// draft is ever made for this row.
    async fn submit(
        &self,
        ctx: &MailboxCtx,
        user: &str,
        row: &mut OutboundRecord,
        draft: &str,
    ) -> Result<Progress, Failure> {
        let before = (row.step, row.submitted_at);
        row.step = SendStep::SendRequested;
        row.submitted_at = Some(OffsetDateTime::now_utc());
        if let Err(e) = self.checkpoint(row).await {
            // Not recorded, so not asked: the row stays where it was.
            (row.step, row.submitted_at) = before;
            return Err(e);
        }
        let send = Call {
            body: None,
            // Not idempotent: never repeated blindly.
            retry: false,
            ..Call::post(
                "send",
                format!("{user}/messages/{}/send", crate::graph::segment(draft)),
                serde_json::Value::Null,
            )
            .prefer("IdType=\"ImmutableId\"")
        };
        match ctx.graph.call(&ctx.gate, &ctx.active(), &send).await {
            Ok(_) => {
                row.step = SendStep::Accepted;
                if let Err(e) = self.checkpoint(row).await {
                    // Still `send_requested` in the store: the confirmation finds out anyway.
                    tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, reason = ?e, "Cannot record that Graph accepted the send.");
                }
                Ok(Progress::Wait(
                    self.confirm_wait(row),
                    "accepted by Graph; waiting for its copy in Sent Items".into(),
                ))
            }
            // A 400 is Graph refusing this message: nothing was sent, and it never will be.
            Err(CallError::Graph(g)) if g.kind == GraphErrorKind::Rejected => Err(Failure::Permanent(format!(
                "Graph refused to send the message: {} {}",
                g.code.as_deref().unwrap_or(""),
                g.message
            ))),
            // Refused before anything happened (throttled, or no token to ask with): the
            // draft is complete and unsent, sending it again later is safe.
            Err(e)
                if matches!(&e, CallError::Token(_))
                    || matches!(&e, CallError::Graph(g) if g.kind == GraphErrorKind::Throttled) =>
            {
                row.step = SendStep::Attachments;
                row.submitted_at = None;
                Err(Failure::Transient(format!("send refused for now: {e}")))
            }
            // Sent or not? Unknown: the confirmation finds out before anything else is done.
            Err(e) => Ok(Progress::Wait(
                self.confirm_wait(row),
                format!("send not confirmed: {e}"),
            )),
        }
    }

    /// What became of a message whose `send` was asked for.
    async fn confirm(&self, ctx: &MailboxCtx, user: &str, row: &mut OutboundRecord) -> Result<Progress, Failure> {
        let now = OffsetDateTime::now_utc();
        let submitted = row.submitted_at.unwrap_or(row.updated_at);
        let within = time::Duration::try_from(self.settings.confirm_within).unwrap_or(time::Duration::minutes(10));
        let overdue = now >= submitted + within;
        let in_transit = |row: &OutboundRecord| -> Result<Progress, Failure> {
            if overdue {
                return Ok(Progress::Unconfirmed(format!(
                    "Graph accepted the send, but the message did not reach Sent Items within {}; it is not sent again automatically",
                    humantime::format_duration(self.settings.confirm_within)
                )));
            }
            Ok(Progress::Wait(
                self.confirm_wait(row),
                "accepted by Graph; waiting for its copy in Sent Items".into(),
            ))
        };
        match confirm::locate(ctx, user, &row.id).await? {
            Whereabouts::Sent(copy) => {
                row.internet_message_id = copy.internet_message_id.or(row.internet_message_id.take());
                row.conversation_id = copy.conversation_id.or(row.conversation_id.take());
                if let Some(reason) = self.report(ctx, user, row).await? {
                    return Err(Failure::Permanent(reason));
                }
                Ok(Progress::Sent)
            }
            Whereabouts::Outbox => in_transit(row),
            Whereabouts::Drafts(draft) => {
                let settle = (self.settings.confirm_within / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if row.step == SendStep::SendRequested && now >= submitted + settle {
                    // Never accepted as far as we know, and Graph has not taken it: the request
                    // did not reach Graph. The same draft is sent again, never a new one.
                    tracing::info!(mailbox = %row.mailbox, outbound_id = %row.id, "The draft was not taken by Graph; sending it again.");
                    row.draft_id = Some(draft.id.clone());
                    return self.submit(ctx, user, row, &draft.id).await;
                }
                in_transit(row)
            }
            Whereabouts::Nowhere => {
                if let Some(reason) = self.report(ctx, user, row).await? {
                    return Err(Failure::Permanent(reason));
                }
                in_transit(row)
            }
        }
    }

    /// A non-delivery report's reason, when one came back for this row's message.
    async fn report(&self, ctx: &MailboxCtx, user: &str, row: &OutboundRecord) -> Result<Option<String>, Failure> {
        match (&row.internet_message_id, &row.conversation_id) {
            (Some(message), Some(conversation)) => confirm::non_delivery(ctx, user, message, conversation).await,
            _ => Ok(None),
        }
    }

    /// When to look again for a sent message: soon at first, then less often, and never past
    /// the end of the confirmation period.
    fn confirm_wait(&self, row: &OutboundRecord) -> Duration {
        let now = OffsetDateTime::now_utc();
        let submitted = row.submitted_at.unwrap_or(now);
        let elapsed = Duration::try_from(now - submitted).unwrap_or_default();
        let wait = (elapsed / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let left = Duration::try_from(submitted + self.settings.confirm_within - now).unwrap_or_default();
        wait.min(left.max(Duration::from_millis(200)))
    }

    async fn checkpoint(&self, row: &OutboundRecord) -> Result<(), Failure> {
        let mut saved = row.clone();
        saved.updated_at = OffsetDateTime::now_utc();
        self.store.update_outbound(&saved).await?;
        Ok(())
    }
}
