//! Mailbox statuses and last progress on SQLite.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{SqliteStore, db_err, from_stored, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{MailboxStatus, StatusStore, StoreError};

#[async_trait]
impl StatusStore for SqliteStore {
    async fn save_status(&self, mailbox: &MailboxAddress, status: &MailboxStatus) -> Result<(), StoreError> {
        const OP: &str = "save mailbox status";
        let last_success_at = status.last_success_at.map(|t| to_stored(OP, t)).transpose()?;
        sqlx::query(
            "INSERT INTO mailbox_statuses (mailbox, state, reason, aadsts, since, last_success_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (mailbox) DO UPDATE SET state = excluded.state, reason = excluded.reason,
                 aadsts = excluded.aadsts, since = excluded.since, last_success_at = excluded.last_success_at",
        )
        .bind(mailbox.as_str())
        .bind(status.state.as_str())
        .bind(status.reason.as_deref())
        .bind(status.aadsts.map(i64::from))
        .bind(to_stored(OP, status.since)?)
        .bind(last_success_at)
        .execute(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    async fn statuses(&self) -> Result<Vec<(MailboxAddress, MailboxStatus)>, StoreError> {
        const OP: &str = "read mailbox statuses";
        let rows = sqlx::query_as::<_, rows::StatusRow>(
            "SELECT mailbox, state, reason, aadsts, since, last_success_at FROM mailbox_statuses ORDER BY mailbox",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.into_iter().map(|row| rows::status(OP, row)).collect()
    }

    async fn last_progress(
        &self,
        mailbox: &MailboxAddress,
        folders: &[String],
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        const OP: &str = "read last progress";
        let success: Option<(Option<String>,)> =
            sqlx::query_as("SELECT last_success_at FROM mailbox_statuses WHERE mailbox = ?1")
                .bind(mailbox.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err(OP))?;
        let success = success.and_then(|(t,)| t).map(|t| from_stored(OP, &t)).transpose()?;
        // A mailbox has progressed as far as its least recent folder.
        let mut oldest: Option<OffsetDateTime> = None;
        for folder in folders {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT updated_at FROM delta_links WHERE mailbox = ?1 AND folder = ?2")
                    .bind(mailbox.as_str())
                    .bind(folder)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
            let Some((at,)) = row else {
                oldest = None;
                break;
            };
            let at = from_stored(OP, &at)?;
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        Ok(success.max(oldest))
    }
}
