//! The subscriptions table: one Graph change-notification subscription per mailbox folder.

use async_trait::async_trait;

use super::{SqliteStore, db_err, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{StoreError, SubscriptionRecord, SubscriptionStore};

#[async_trait]
impl SubscriptionStore for SqliteStore {
    async fn subscriptions(&self, mailbox: &MailboxAddress) -> Result<Vec<SubscriptionRecord>, StoreError> {
        const OP: &str = "read subscriptions";
        let found: Vec<rows::SubscriptionRow> = sqlx::query_as(
            "SELECT folder, id, expires_at, sealed_client_state, notification_url FROM subscriptions
             WHERE mailbox = ?1 ORDER BY folder",
        )
        .bind(mailbox.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        found
            .into_iter()
            .map(|row| rows::subscription(OP, mailbox, row))
            .collect()
    }

    async fn save_subscription(&self, r: &SubscriptionRecord) -> Result<(), StoreError> {
        const OP: &str = "save subscription";
        sqlx::query(
            "INSERT INTO subscriptions (mailbox, folder, id, expires_at, sealed_client_state, notification_url, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (mailbox, folder) DO UPDATE SET id = excluded.id, expires_at = excluded.expires_at,
                 sealed_client_state = excluded.sealed_client_state, notification_url = excluded.notification_url,
                 updated_at = excluded.updated_at",
        )
        .bind(r.mailbox.as_str())
        .bind(&r.folder)
        .bind(&r.id)
        .bind(to_stored(OP, r.expires_at)?)
        .bind(&r.sealed_client_state)
        .bind(&r.notification_url)
        .bind(to_stored(OP, time::OffsetDateTime::now_utc())?)
        .execute(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    async fn delete_subscription(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError> {
        const OP: &str = "delete subscription";
        sqlx::query("DELETE FROM subscriptions WHERE mailbox = ?1 AND folder = ?2")
            .bind(mailbox.as_str())
            .bind(folder)
            .execute(&self.pool)
            .await
            .map_err(db_err(OP))?;
        Ok(())
    }
}
