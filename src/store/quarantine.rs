//! Messages that could not become events or that the sink refused, and their replays.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

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

/// Quarantined messages and the replays asked for through the API.
#[async_trait]
pub trait QuarantineStore: Send + Sync {
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
