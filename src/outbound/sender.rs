//! The sender: works through due outbox rows. Before doing anything in Graph for a row
//! that was started before, it looks for the draft or sent item carrying the row's id:
//! a sent item means done, a complete draft means send it, anything else starts over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::request::OutboundRequest;
use super::steps;
use crate::auth::Verdict;
use crate::domain::MailboxState;
use crate::event::{OUTBOUND_SCHEMA, OutboundEvent};
use crate::graph::{Call, CallError, GraphErrorKind};
use crate::mailbox::{MailboxCtx, StatusBoard};
use crate::sink::Sink;
use crate::store::{OutboundRecord, OutboundStatus, SendStep, Store, StoreError};

/// The extended property that marks inboxd's drafts with the outbound id.
pub const MARKER_PROPERTY: &str = "String {8c6f3b1e-2d4a-4b7e-9f15-6a0c2e9d4b31} Name inboxd-outbound-id";
/// Rows taken per pass.
const BATCH: u32 = 64;
/// Mailboxes sending at once.
const PARALLEL_MAILBOXES: usize = 8;

/// Why one attempt stopped.
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
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            store,
            sink,
            mailboxes,
            board,
            upload,
            wake: Notify::new(),
            metrics,
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

    /// Works until cancelled; a pass in progress finishes first.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            match self.store.due_outbound(OffsetDateTime::now_utc(), BATCH).await {
                Ok(rows) if !rows.is_empty() => {
                    let mut per_mailbox: BTreeMap<String, Vec<OutboundRecord>> = BTreeMap::new();
                    for row in rows {
                        per_mailbox.entry(row.mailbox.to_string()).or_default().push(row);
                    }
                    let work: Vec<_> = per_mailbox
                        .into_values()
                        .map(|rows| self.clone().send_all(rows))
                        .collect();
                    futures_util::stream::iter(work)
                        .buffer_unordered(PARALLEL_MAILBOXES)
                        .collect::<Vec<()>>()
                        .await;
                    if cancel.is_cancelled() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "Cannot read the outbox; replies wait until the store answers."),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One mailbox's rows, in order.
    async fn send_all(self: Arc<Self>, rows: Vec<OutboundRecord>) {
        for row in rows {
            self.attempt(row).await;
        }
    }

    /// One attempt at one row, with its bookkeeping.
    async fn attempt(&self, mut row: OutboundRecord) {
        let Some(ctx) = self.mailboxes.load().get(&row.mailbox).cloned() else {
            self.finish(
                &mut row,
                OutboundStatus::Failed,
                Some("the mailbox is no longer configured".into()),
            )
            .await;
            return;
        };
        let state = self.board.get(&row.mailbox).map(|v| v.state);
        let on_fallback = ctx.on_fallback.load(std::sync::atomic::Ordering::Relaxed);
        if !on_fallback && state.is_some_and(MailboxState::is_flagged) {
            row.next_attempt_at = OffsetDateTime::now_utc() + time::Duration::seconds(30);
            row.error = Some(format!(
                "waiting: the mailbox is {}",
                state.map(|s| s.as_str()).unwrap_or("flagged")
            ));
            self.save(&row).await;
            return;
        }
        // Persisted before any Graph work: a restart sees that an attempt began and looks for
        // its draft or sent item before doing anything again.
        row.status = OutboundStatus::Sending;
        row.attempts += 1;
        self.save(&row).await;
        match self.send(&ctx, &mut row).await {
            Ok(()) => self.finish(&mut row, OutboundStatus::Sent, None).await,
            Err(Failure::Permanent(reason)) => {
                tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, reason = %reason, "Outbound message failed for good.");
                self.finish(&mut row, OutboundStatus::Failed, Some(reason)).await;
            }
            Err(Failure::Transient(reason)) => {
                let wait = 2u64.saturating_pow(row.attempts.min(8)).min(300);
                tracing::info!(mailbox = %row.mailbox, outbound_id = %row.id, reason = %reason, retry_in_s = wait, "Outbound message not sent yet; retrying.");
                row.status = OutboundStatus::Queued;
                row.error = Some(reason);
                row.next_attempt_at = OffsetDateTime::now_utc() + time::Duration::seconds(wait as i64);
                self.save(&row).await;
            }
        }
    }

    async fn save(&self, row: &OutboundRecord) {
        let mut row = row.clone();
        row.updated_at = OffsetDateTime::now_utc();
        if let Err(e) = self.store.update_outbound(&row).await {
            tracing::error!(mailbox = %row.mailbox, outbound_id = %row.id, error = %e, "Cannot record outbound progress.");
        }
    }

    /// Records the end state and tells routing through the sink.
    async fn finish(&self, row: &mut OutboundRecord, status: OutboundStatus, error: Option<String>) {
        row.status = status;
        row.error = error.clone();
        self.save(row).await;
        self.metrics
            .outbound
            .get_or_create(&vec![("status", status.as_str().to_string())])
            .inc();
        let kind = serde_json::from_str::<OutboundRequest>(&row.request)
            .map(|r| r.kind.as_str())
            .unwrap_or("unknown");
        let now = OffsetDateTime::now_utc();
        let event = OutboundEvent {
            schema: OUTBOUND_SCHEMA.into(),
            event_id: uuid::Uuid::new_v4().to_string(),
            dedup_key: format!("outbound:{}:{}", row.id, status.as_str()),
            outbound_id: row.id.clone(),
            idempotency_key: row.idempotency_key.clone(),
            mailbox: row.mailbox.to_string(),
            kind: kind.into(),
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

    /// The send state machine.
    async fn send(&self, ctx: &MailboxCtx, row: &mut OutboundRecord) -> Result<(), Failure> {
        let req: OutboundRequest = serde_json::from_str(&row.request)
            .map_err(|e| Failure::Permanent(format!("stored request unreadable: {e}")))?;
        let user = format!("users/{}", crate::graph::segment(ctx.config.address.as_str()));
        if row.attempts > 1 || row.step != SendStep::New {
            if steps::find(ctx, &user, "sentitems", &row.id).await?.is_some() {
                return Ok(()); // sent before the crash, just not recorded
            }
            match steps::find(ctx, &user, "drafts", &row.id).await? {
                Some(draft) if matches!(row.step, SendStep::Attachments | SendStep::SendRequested) => {
                    row.draft_id = Some(draft);
                }
                Some(draft) => {
                    // Attachments may be incomplete: discard and start over.
                    let delete = Call {
                        method: Method::DELETE,
                        ..Call::get(
                            "delete_draft",
                            format!("{user}/messages/{}", crate::graph::segment(&draft)),
                        )
                    };
                    match ctx.graph.call(&ctx.gate, &ctx.active(), &delete).await {
                        Ok(_) => {}
                        Err(CallError::Graph(g)) if g.kind == GraphErrorKind::ItemNotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    row.step = SendStep::New;
                    row.draft_id = None;
                }
                None => {
                    row.step = SendStep::New;
                    row.draft_id = None;
                }
            }
        }
        if row.step == SendStep::New {
            let draft = steps::create_draft(ctx, &user, &req, &row.id).await?;
            row.draft_id = Some(draft);
            row.step = SendStep::Draft;
            self.checkpoint(row).await?;
        }
        let draft = row
            .draft_id
            .clone()
            .ok_or_else(|| Failure::Transient("draft id missing".into()))?;
        if row.step == SendStep::Draft {
            for a in &req.attachments {
                steps::attach(&self.upload, ctx, &user, &draft, a).await?;
            }
            row.step = SendStep::Attachments;
            self.checkpoint(row).await?;
        }
        row.step = SendStep::SendRequested;
        self.checkpoint(row).await?;
        let send = Call {
            body: None,
            // `send` is not idempotent: never repeated blindly; the next attempt looks in Sent Items first.
            retry: false,
            ..Call::post(
                "send",
                format!("{user}/messages/{}/send", crate::graph::segment(&draft)),
                Value::Null,
            )
        };
        match ctx.graph.call(&ctx.gate, &ctx.active(), &send).await {
            Ok(_) => {}
            // A 400 is Graph refusing this message: nothing was sent, and it never will be.
            Err(CallError::Graph(g)) if g.kind == GraphErrorKind::Rejected => {
                return Err(Failure::Permanent(format!(
                    "Graph refused to send the message: {} {}",
                    g.code.as_deref().unwrap_or(""),
                    g.message
                )));
            }
            // Sent or not? Unknown: the next attempt finds out before doing anything.
            Err(e) => return Err(Failure::Transient(format!("send not confirmed: {e}"))),
        }
        Ok(())
    }

    async fn checkpoint(&self, row: &OutboundRecord) -> Result<(), Failure> {
        let mut saved = row.clone();
        saved.updated_at = OffsetDateTime::now_utc();
        self.store.update_outbound(&saved).await?;
        Ok(())
    }
}
