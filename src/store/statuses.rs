//! Each mailbox's last persisted state, and the evidence of its last progress.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::{MailboxAddress, MailboxState};

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

/// Mailbox states across restarts (and, on PostgreSQL, across replicas).
#[async_trait]
pub trait StatusStore: Send + Sync {
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
}
