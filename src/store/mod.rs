//! Persistence: delta checkpoints, delivered keys, mailbox states, quarantine, outbox,
//! delegated tokens, subscriptions; and, on PostgreSQL, the mailbox leases of several replicas.
//!
//! One trait, two implementations: SQLite (one process, the default) and PostgreSQL (shared).

mod codec;
mod housekeeping;
pub mod postgres;
mod sqlite;
mod subscriptions;
#[cfg(test)]
mod suite;

use std::collections::HashSet;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use housekeeping::prune_delivered_keys;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use subscriptions::{SubscriptionRecord, SubscriptionStore};

use crate::domain::{MailboxAddress, MailboxState};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or answered with an error.
    #[error("store: {0}")]
    Database(String),
    /// The store URL is not one this build can open.
    #[error("store url '{0}' is not supported (use sqlite://PATH or postgres://HOST/DATABASE)")]
    UnsupportedUrl(String),
    /// Another process holds the store's lock file: two writers would both poll and send.
    #[error(
        "store: lock file {} is held by another inboxd process; only one instance may use this store (stop the other one first)",
        .0.display()
    )]
    Locked(std::path::PathBuf),
    /// This replica no longer holds the mailbox's lease at the epoch it claimed: another
    /// replica owns the mailbox now, and this write would overwrite its work.
    #[error("store: write for {mailbox} refused: its lease moved on from epoch {epoch} (another replica owns it now)")]
    Fenced {
        /// The mailbox.
        mailbox: MailboxAddress,
        /// The stale epoch the write carried (0: no lease held at all).
        epoch: i64,
    },
}

/// A mailbox's persisted status.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxStatus {
    /// Current state.
    pub state: MailboxState,
    /// Human-readable reason for the state (None when active).
    pub reason: Option<String>,
    /// AADSTS code behind the state, if any.
    pub aadsts: Option<u32>,
    /// When the mailbox entered this state.
    pub since: OffsetDateTime,
    /// Last successful poll.
    pub last_success_at: Option<OffsetDateTime>,
}

/// What a folder's resync after an expired delta token may reach back to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaWindow {
    /// Where the folder began (`start_at`); `None`: all mail.
    pub start_from: Option<OffsetDateTime>,
    /// When the last completed round began; `None`: no round completed yet.
    pub checkpoint: Option<OffsetDateTime>,
}

impl DeltaWindow {
    /// The earliest receipt time a resync must cover: the later of where the folder began and
    /// the last checkpoint less `margin`; `None` means all mail.
    pub fn resync_from(&self, margin: time::Duration) -> Option<OffsetDateTime> {
        match (self.start_from, self.checkpoint.map(|c| c - margin)) {
            (Some(s), Some(c)) => Some(s.max(c)),
            (s, c) => s.or(c),
        }
    }
}

/// A message that could not be turned into an event or was refused by the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
    /// Stable id for the replay API (assigned by the store; empty when quarantining).
    pub id: String,
    /// Mailbox it came from.
    pub mailbox: MailboxAddress,
    /// Folder it came from.
    pub folder: String,
    /// Immutable Graph id.
    pub graph_id: String,
    /// Why it was quarantined.
    pub reason: String,
    /// When.
    pub at: OffsetDateTime,
}

/// A delegated mailbox's refresh token, sealed with the store key.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegatedToken {
    /// The mailbox.
    pub mailbox: MailboxAddress,
    /// Nonce + AES-256-GCM ciphertext of the refresh token.
    pub sealed_token: Vec<u8>,
    /// Scopes granted, space-separated.
    pub scopes: String,
    /// Last successful refresh (Entra expires tokens unused for 90 days).
    pub last_used_at: OffsetDateTime,
}

/// A consent flow in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentState {
    /// The `state` parameter (random, single use).
    pub state: String,
    /// The mailbox it is for.
    pub mailbox: MailboxAddress,
    /// Sealed PKCE verifier.
    pub sealed_verifier: Vec<u8>,
    /// After this the state is refused.
    pub expires_at: OffsetDateTime,
}

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

/// What the daemon needs to remember across restarts.
#[async_trait]
pub trait Store: SubscriptionStore + Send + Sync + 'static {
    /// Checks the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The last acknowledged delta link of a mailbox folder.
    async fn delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<Option<String>, StoreError>;
    /// Stores the delta link of a finished round (atomically replaces the old one).
    async fn save_delta_link(&self, mailbox: &MailboxAddress, folder: &str, link: &str) -> Result<(), StoreError>;
    /// Forgets the delta link (the token expired: the next round starts fresh).
    async fn clear_delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError>;
    /// Stores the first link of a folder that starts from scratch, and where it starts
    /// (`None`: all mail); forgets any earlier checkpoint.
    async fn begin_delta(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        start_from: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
    /// Stores the delta link of a completed round and when that round began.
    async fn save_checkpoint(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        round_began: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Where a folder started and its last checkpoint: what a resync may reach back to.
    async fn delta_window(&self, mailbox: &MailboxAddress, folder: &str) -> Result<DeltaWindow, StoreError>;

    /// Which of these dedup keys were already delivered for the mailbox.
    async fn delivered(&self, mailbox: &MailboxAddress, dedup_keys: &[String]) -> Result<HashSet<String>, StoreError>;
    /// Records that the sink acknowledged these dedup keys (idempotent).
    async fn mark_delivered(
        &self,
        mailbox: &MailboxAddress,
        dedup_keys: &[String],
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// How many messages of the mailbox were ever acknowledged.
    async fn delivered_total(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError>;
    /// Drops delivered keys older than `before` (bounded retention), except those a resync
    /// could reach (its window less `margin`); returns how many.
    async fn prune_delivered(&self, before: OffsetDateTime, margin: time::Duration) -> Result<u64, StoreError>;

    /// Persists a mailbox's status.
    async fn save_status(&self, mailbox: &MailboxAddress, status: &MailboxStatus) -> Result<(), StoreError>;
    /// Every persisted status.
    async fn statuses(&self) -> Result<Vec<(MailboxAddress, MailboxStatus)>, StoreError>;
    /// The latest evidence that a mailbox was polled, for the last-success gauge at start: its
    /// stored last success, or when every one of `folders` last stored a checkpoint (a finished
    /// round, or the start of its first one), whichever is later. None for a new mailbox.
    async fn last_progress(
        &self,
        mailbox: &MailboxAddress,
        folders: &[String],
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Stores (replaces) a mailbox's sealed refresh token, atomically: a rotation, which only
    /// the mailbox's owner may write.
    async fn save_delegated_token(&self, token: &DelegatedToken) -> Result<(), StoreError>;
    /// Stores a newly granted refresh token (consent, import), which any replica may write,
    /// and wakes the mailbox's owner.
    async fn save_granted_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        self.save_delegated_token(token).await
    }
    /// The sealed refresh token of a mailbox.
    async fn delegated_token(&self, mailbox: &MailboxAddress) -> Result<Option<DelegatedToken>, StoreError>;
    /// Stores a pending consent flow.
    async fn save_consent_state(&self, state: &ConsentState) -> Result<(), StoreError>;
    /// Takes (deletes and returns) a pending consent flow: a state works once.
    async fn take_consent_state(&self, state: &str) -> Result<Option<ConsentState>, StoreError>;

    /// Stores an outbound request unless one with the same mailbox + idempotency key exists;
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
    /// Records that the consent state `state` (expiring at `expires_at`) was used; false when it
    /// already was (a state works once).
    async fn claim_consent_state(
        &self,
        state: &str,
        mailbox: &MailboxAddress,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Drops the payload of finished requests (sent, failed, unconfirmed) last changed before
    /// `before`, keeping their status and ids; returns how many.
    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Quarantines a message (idempotent per mailbox + graph id).
    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError>;
    /// Quarantined messages, newest first, optionally of one mailbox.
    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError>;
    /// Asks for one quarantined message to be delivered again; `None` when no such entry.
    async fn request_replay(&self, id: &str) -> Result<Option<QuarantineEntry>, StoreError>;
    /// Asks for every quarantined message of a mailbox to be delivered again; returns how many.
    async fn request_replays(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError>;
    /// The mailbox's entries whose replay was asked for, oldest first.
    async fn replays_due(&self, mailbox: &MailboxAddress) -> Result<Vec<QuarantineEntry>, StoreError>;
    /// Drops an entry once its message was delivered.
    async fn release_quarantined(&self, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError>;
}

/// An opened store, by kind: the daemon runs leases only on PostgreSQL.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One process, one file.
    Sqlite(SqliteStore),
    /// Shared by replicas.
    Postgres(PgStore),
}

/// Opens the store a URL names: `sqlite://path` (created if missing) or `postgres://…`,
/// migrated either way.
pub async fn open_backend(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(Backend::Sqlite(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres(PgStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(postgres::redacted(url)))
}

/// Opens the store a URL names, as the trait.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match open_backend(url).await? {
        Backend::Sqlite(s) => std::sync::Arc::new(s),
        Backend::Postgres(p) => std::sync::Arc::new(p),
    })
}
