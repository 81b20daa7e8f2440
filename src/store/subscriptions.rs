//! What the store keeps about change-notification subscriptions.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

/// One subscription of a mailbox folder, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRecord {
    /// The mailbox.
    pub mailbox: MailboxAddress,
    /// The folder as configured.
    pub folder: String,
    /// Graph's subscription id.
    pub id: String,
    /// When Graph expires it.
    pub expires_at: OffsetDateTime,
    /// The clientState, sealed with `store.encryption_key`.
    pub sealed_client_state: Vec<u8>,
    /// The notification URL it was created with.
    pub notification_url: String,
}

/// Subscriptions survive restarts: a restart reuses them instead of creating new ones.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Every stored subscription of a mailbox.
    async fn subscriptions(&self, mailbox: &MailboxAddress) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Inserts or replaces the subscription of the record's mailbox folder.
    async fn save_subscription(&self, record: &SubscriptionRecord) -> Result<(), StoreError>;
    /// Forgets the subscription of a mailbox folder.
    async fn delete_subscription(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError>;
}
