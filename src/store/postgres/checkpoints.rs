//! Delta links and resync windows on Postgres.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{PgStore, db_err, to_stored, unix_millis};
use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{CheckpointStore, DeltaWindow, StoreError};

#[async_trait]
impl CheckpointStore for PgStore {
    async fn delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<Option<String>, StoreError> {
        self.guard(mailbox)?;
        sqlx::query_scalar::<_, String>("SELECT link FROM delta_links WHERE mailbox = $1 AND folder = $2")
            .bind(mailbox.as_str())
            .bind(folder)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("read delta link"))
    }

    async fn save_delta_link(&self, mailbox: &MailboxAddress, folder: &str, link: &str) -> Result<(), StoreError> {
        const OP: &str = "save delta link";
        let mut tx = self.begin_for(OP, mailbox).await?;
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn begin_delta(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        start_from: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        const OP: &str = "save first delta link";
        let mut tx = self.begin_for(OP, mailbox).await?;
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms)
             VALUES ($1, $2, $3, $4, $5, NULL)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at,
                 start_from_ms = excluded.start_from_ms, checkpoint_ms = NULL",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .bind(start_from.map(unix_millis))
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn save_checkpoint(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        round_began: OffsetDateTime,
    ) -> Result<(), StoreError> {
        const OP: &str = "save delta checkpoint";
        let mut tx = self.begin_for(OP, mailbox).await?;
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms)
             VALUES ($1, $2, $3, $4, NULL, $5)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at,
                 checkpoint_ms = excluded.checkpoint_ms",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .bind(unix_millis(round_began))
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn delta_window(&self, mailbox: &MailboxAddress, folder: &str) -> Result<DeltaWindow, StoreError> {
        const OP: &str = "read delta window";
        let row = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "SELECT start_from_ms, checkpoint_ms FROM delta_links WHERE mailbox = $1 AND folder = $2",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows::delta_window(row)
    }
}
