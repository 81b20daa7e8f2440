//! The dedup keys the sink acknowledged, per mailbox, and how many there ever were.

use std::collections::HashSet;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

/// Which messages the sink already acknowledged (bounded retention).
#[async_trait]
pub trait DeliveredStore: Send + Sync {
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
}
