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

use super::machine::Progress;
use crate::auth::Verdict;
use crate::config::OutboundConfig;
use crate::domain::{MailboxAddress, MailboxState};
use crate::event::{OUTBOUND_SCHEMA, OutboundEvent};
use crate::graph::{CallError, GraphErrorKind};
use crate::mailbox::StatusBoard;
use crate::sink::Sink;
use crate::store::{OutboundRecord, OutboundStatus, SendStep, Store, StoreError};

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
            // An answer without a field the step reads: the step is looked up again later.
            CallError::Shape(_) => Failure::Transient(e.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Transient(e.to_string())
    }
}

/// The outbox worker and the API's way in.
pub struct Outbox {
    /// Outbox rows.
    pub(super) store: Arc<dyn Store>,
    /// Where the `inboxd.outbound.v1` events go.
    sink: Arc<Sink>,
    /// The configured mailboxes (their Graph contexts).
    mailboxes: crate::mailbox::supervisor::Registry,
    /// Mailbox states: a flagged mailbox's rows wait.
    board: Arc<StatusBoard>,
    /// Plain client for upload URLs (they carry their own token: no Authorization header).
    pub(super) upload: reqwest::Client,
    /// Wakes the worker when the API stored something.
    wake: Notify,
    /// `inboxd_outbound_total{status}`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Confirmation period and retention.
    pub(super) settings: OutboundConfig,
    /// Mailboxes with a worker running.
    active: Mutex<HashSet<MailboxAddress>>,
}

impl Outbox {
    /// The outbox over the configured mailboxes.
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<Sink>,
        mailboxes: crate::mailbox::supervisor::Registry,
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
                // Another replica owns the mailbox now: this attempt ends here, and whoever holds
                // the lease continues from the stored row (never from this stale copy).
                Err(StoreError::Fenced { .. }) => {
                    tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, "The mailbox's lease moved to another replica; this attempt stops and its new owner carries on.");
                    return false;
                }
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
}
