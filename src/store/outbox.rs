//! The outbox: replies, forwards and new messages routing asked for, advanced step by step.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

/// Where an outbound message stands, as `GET /v1/outbound/{id}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundStatus {
    /// Stored, not started (or waiting to retry).
    Queued,
    /// The sender is working on it.
    Sending,
    /// Graph accepted the send and its copy reached Sent Items.
    Sent,
    /// Permanently refused, or a non-delivery report came back; `error` says why.
    Failed,
    /// Graph accepted the send but its copy was never found within `outbound.confirm_within`;
    /// never sent again automatically.
    Unconfirmed,
}

/// How far a send got, so a restart resumes instead of repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStep {
    /// Nothing done in Graph yet (or the draft was discarded).
    New,
    /// The marked draft exists (`draft_id`).
    Draft,
    /// Every attachment is on the draft.
    Attachments,
    /// `send` was called (or is about to be), its answer not yet heard: from here on no
    /// new draft is ever made; the mailbox is searched for the marked item.
    SendRequested,
    /// Graph answered 202 to `send`: waiting for the copy in Sent Items.
    Accepted,
}

impl OutboundStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundStatus::Queued => "queued",
            OutboundStatus::Sending => "sending",
            OutboundStatus::Sent => "sent",
            OutboundStatus::Failed => "failed",
            OutboundStatus::Unconfirmed => "unconfirmed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<OutboundStatus> {
        [
            OutboundStatus::Queued,
            OutboundStatus::Sending,
            OutboundStatus::Sent,
            OutboundStatus::Failed,
            OutboundStatus::Unconfirmed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl SendStep {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SendStep::New => "new",
            SendStep::Draft => "draft",
            SendStep::Attachments => "attachments",
            SendStep::SendRequested => "send_requested",
            SendStep::Accepted => "accepted",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<SendStep> {
        [
            SendStep::New,
            SendStep::Draft,
            SendStep::Attachments,
            SendStep::SendRequested,
            SendStep::Accepted,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// A reply, forward or new message routing asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRecord {
    /// Outbound id (UUID), also the marker on the Graph draft.
    pub id: String,
    /// Sending mailbox.
    pub mailbox: MailboxAddress,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: String,
    /// SHA-256 of the normalized request: the same key with another request is refused.
    pub request_hash: String,
    /// The validated request, JSON; empty once the row is finished and past its retention
    /// (or when loaded for a confirmation, which does not need it).
    pub request: String,
    /// `reply`, `reply_all`, `forward` or `send`.
    pub kind: String,
    /// Where it stands.
    pub status: OutboundStatus,
    /// How far the send got.
    pub step: SendStep,
    /// The marked draft, once created.
    pub draft_id: Option<String>,
    /// Why it failed (or the last transient error while retrying).
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before this time.
    pub next_attempt_at: OffsetDateTime,
    /// When routing asked.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// When `send` was first asked for: the confirmation deadline counts from here.
    pub submitted_at: Option<OffsetDateTime>,
    /// The message's `internetMessageId` (recognises a non-delivery report about it).
    pub internet_message_id: Option<String>,
    /// The message's `conversationId` (where its non-delivery report would be threaded).
    pub conversation_id: Option<String>,
}

impl OutboundRecord {
    /// A new request as the API or the intake stores it: queued, nothing done yet.
    pub fn queued(
        mailbox: &MailboxAddress,
        idempotency_key: String,
        request_hash: String,
        request: String,
        kind: &str,
        now: OffsetDateTime,
    ) -> OutboundRecord {
        OutboundRecord {
            id: uuid::Uuid::new_v4().to_string(),
            mailbox: mailbox.clone(),
            idempotency_key,
            request_hash,
            request,
            kind: kind.to_string(),
            status: OutboundStatus::Queued,
            step: SendStep::New,
            draft_id: None,
            error: None,
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
            submitted_at: None,
            internet_message_id: None,
            conversation_id: None,
        }
    }
}

/// Outbound requests, stored before the API answers and advanced by the sender.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// returns the stored one either way (atomic: concurrent callers get the same row).
    async fn enqueue_outbound(&self, record: &OutboundRecord) -> Result<OutboundRecord, StoreError>;
    /// One outbound request by id.
    async fn outbound(&self, id: &str) -> Result<Option<OutboundRecord>, StoreError>;
    /// Saves the progress of a send (status, step, draft id, error, attempts, next attempt,
    /// submission time and message ids); never the request itself.
    async fn update_outbound(&self, record: &OutboundRecord) -> Result<(), StoreError>;
    /// The newest `limit` outbound requests of every mailbox, newest first, without their
    /// payloads (the status page lists them).
    async fn recent_outbound(&self, limit: u32) -> Result<Vec<OutboundRecord>, StoreError>;
    /// The request a mailbox + idempotency key stored, if any (answered before any other check).
    async fn outbound_by_key(&self, mailbox: &MailboxAddress, key: &str) -> Result<Option<OutboundRecord>, StoreError>;
    /// Mailboxes with a request still to send (`queued` or `sending`) whose next attempt is due.
    async fn outbound_due_mailboxes(&self, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError>;
    /// The mailbox's next due request, oldest first, loaded alone; a request already handed to
    /// Graph comes without its payload (only its confirmation is left to do).
    async fn next_due_outbound(
        &self,
        mailbox: &MailboxAddress,
        now: OffsetDateTime,
    ) -> Result<Option<OutboundRecord>, StoreError>;
    /// Drops the payload of finished requests (sent, failed, unconfirmed) last changed before
    /// `before`, keeping their status and ids; returns how many.
    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}
