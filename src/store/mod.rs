//! Persistence: delta checkpoints, delivered keys, mailbox states, quarantine.
//!
//! A trait, so a Postgres store can follow the SQLite one.

mod sqlite;

use std::collections::HashSet;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use sqlite::SqliteStore;

use crate::domain::{MailboxAddress, MailboxState};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or answered with an error.
    #[error("store: {0}")]
    Database(String),
    /// The store URL is not one this build can open.
    #[error("store url '{0}' is not supported (use sqlite://PATH)")]
    UnsupportedUrl(String),
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

/// A message that could not be turned into an event or was refused by the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
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

/// What the daemon needs to remember across restarts.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The last acknowledged delta link of a mailbox folder.
    async fn delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<Option<String>, StoreError>;
    /// Stores the delta link of a finished round (atomically replaces the old one).
    async fn save_delta_link(&self, mailbox: &MailboxAddress, folder: &str, link: &str) -> Result<(), StoreError>;
    /// Forgets the delta link (the token expired: the next round starts fresh).
    async fn clear_delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError>;

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
    /// Drops delivered keys older than `before` (bounded retention); returns how many.
    async fn prune_delivered(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Persists a mailbox's status.
    async fn save_status(&self, mailbox: &MailboxAddress, status: &MailboxStatus) -> Result<(), StoreError>;
    /// Every persisted status.
    async fn statuses(&self) -> Result<Vec<(MailboxAddress, MailboxStatus)>, StoreError>;

    /// Quarantines a message (idempotent per mailbox + graph id).
    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError>;
    /// Quarantined messages, newest first, optionally of one mailbox.
    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError>;
}

/// Opens the store a URL names (`sqlite://path`, created if missing, migrated).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(url.to_string()))
}
