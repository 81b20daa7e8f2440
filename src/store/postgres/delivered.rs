//! Delivered keys and their totals on Postgres.

use std::collections::HashSet;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{PgStore, db_err, unix_millis};
use crate::domain::MailboxAddress;
use crate::store::{DeliveredStore, StoreError};

/// Rows deleted per statement when pruning.
const PRUNE_BATCH: i64 = 5_000;

#[async_trait]
impl DeliveredStore for PgStore {
    async fn delivered(&self, mailbox: &MailboxAddress, dedup_keys: &[String]) -> Result<HashSet<String>, StoreError> {
        const OP: &str = "look up delivered keys";
        self.guard(mailbox)?;
        if dedup_keys.is_empty() {
            return Ok(HashSet::new());
        }
        let found = sqlx::query_scalar::<_, String>(
            "SELECT dedup_key FROM delivered_keys WHERE mailbox = $1 AND dedup_key = ANY($2)",
        )
        .bind(mailbox.as_str())
        .bind(dedup_keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(found.into_iter().collect())
    }

    async fn mark_delivered(
        &self,
        mailbox: &MailboxAddress,
        dedup_keys: &[String],
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        const OP: &str = "mark delivered";
        if dedup_keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_for(OP, mailbox).await?;
        let inserted = sqlx::query(
            "INSERT INTO delivered_keys (mailbox, dedup_key, delivered_at)
             SELECT DISTINCT $1, k, $2::BIGINT FROM unnest($3::TEXT[]) AS k
             ON CONFLICT (mailbox, dedup_key) DO NOTHING",
        )
        .bind(mailbox.as_str())
        .bind(unix_millis(at))
        .bind(dedup_keys)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?
        .rows_affected();
        if inserted > 0 {
            let inserted = i64::try_from(inserted).map_err(|e| StoreError::Database(format!("{OP}: {e}")))?;
            sqlx::query(
                "INSERT INTO delivered_totals (mailbox, total) VALUES ($1, $2)
                 ON CONFLICT (mailbox) DO UPDATE SET total = delivered_totals.total + excluded.total",
            )
            .bind(mailbox.as_str())
            .bind(inserted)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        }
        tx.commit().await.map_err(db_err(OP))
    }

    async fn delivered_total(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
        const OP: &str = "read delivered total";
        let total = sqlx::query_scalar::<_, i64>("SELECT total FROM delivered_totals WHERE mailbox = $1")
            .bind(mailbox.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?
            .unwrap_or(0);
        u64::try_from(total).map_err(|e| StoreError::Database(format!("{OP}: {e}")))
    }

    async fn prune_delivered(&self, before: OffsetDateTime, margin: time::Duration) -> Result<u64, StoreError> {
        const OP: &str = "prune delivered keys";
        let before = unix_millis(before);
        let margin = i64::try_from(margin.whole_milliseconds()).unwrap_or(i64::MAX);
        let mut pruned = 0;
        loop {
            // A key stays while any folder of its mailbox could resync back to it.
            let deleted = sqlx::query(
                "DELETE FROM delivered_keys WHERE ctid IN
                 (SELECT k.ctid FROM delivered_keys k WHERE k.delivered_at < $1 AND NOT EXISTS
                    (SELECT 1 FROM delta_links d WHERE d.mailbox = k.mailbox
                       AND COALESCE(CASE WHEN d.start_from_ms IS NULL THEN d.checkpoint_ms - $3
                                         WHEN d.checkpoint_ms IS NULL THEN d.start_from_ms
                                         ELSE GREATEST(d.start_from_ms, d.checkpoint_ms - $3) END,
                                    k.delivered_at) <= k.delivered_at)
                  LIMIT $2)",
            )
            .bind(before)
            .bind(PRUNE_BATCH)
            .bind(margin)
            .execute(&self.pool)
            .await
            .map_err(db_err(OP))?
            .rows_affected();
            pruned += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }
}
