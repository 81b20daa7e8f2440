//! The quarantine table: messages that could not become events or that the receiver refused,
//! and the replays asked for through the API.

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::{PgStore, Wake, db_err, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows::{QuarantineRow, quarantine_entry};
use crate::store::{QuarantineEntry, QuarantineStore, StoreError};

/// Quarantines a message. A message quarantined again (a replay that failed) keeps its id and
/// first time, takes the new reason and is no longer due for replay.
pub(super) async fn put(mut tx: Transaction<'static, Postgres>, entry: &QuarantineEntry) -> Result<(), StoreError> {
    const OP: &str = "quarantine message";
    sqlx::query(
        "INSERT INTO quarantine (mailbox, graph_id, folder, reason, at, id, replay_requested)
         VALUES ($1, $2, $3, $4, $5, replace(gen_random_uuid()::TEXT, '-', ''), FALSE)
         ON CONFLICT (mailbox, graph_id) DO UPDATE SET reason = excluded.reason, replay_requested = FALSE",
    )
    .bind(entry.mailbox.as_str())
    .bind(&entry.graph_id)
    .bind(&entry.folder)
    .bind(&entry.reason)
    .bind(to_stored(OP, entry.at)?)
    .execute(&mut *tx)
    .await
    .map_err(db_err(OP))?;
    tx.commit().await.map_err(db_err(OP))
}

/// Entries, newest first (or, for `due`, only those awaiting replay, oldest first).
pub(super) async fn list(
    pool: &PgPool,
    mailbox: Option<&MailboxAddress>,
    due: bool,
) -> Result<Vec<QuarantineEntry>, StoreError> {
    const OP: &str = "read quarantine";
    let sql = if due {
        "SELECT id, mailbox, folder, graph_id, reason, at FROM quarantine
         WHERE mailbox = $1 AND replay_requested = TRUE ORDER BY at, seq"
    } else {
        "SELECT id, mailbox, folder, graph_id, reason, at FROM quarantine
         WHERE $1::TEXT IS NULL OR mailbox = $1 ORDER BY at DESC, seq DESC"
    };
    let rows = sqlx::query_as::<_, QuarantineRow>(sql)
        .bind(mailbox.map(MailboxAddress::as_str))
        .fetch_all(pool)
        .await
        .map_err(db_err(OP))?;
    rows.into_iter().map(|row| quarantine_entry(OP, row)).collect()
}

/// Flags one entry for replay and returns it.
pub(super) async fn request_one(pool: &PgPool, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
    const OP: &str = "request replay";
    let row = sqlx::query_as::<_, QuarantineRow>(
        "UPDATE quarantine SET replay_requested = TRUE WHERE id = $1
         RETURNING id, mailbox, folder, graph_id, reason, at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|row| quarantine_entry(OP, row)).transpose()
}

/// Flags every entry of a mailbox for replay.
pub(super) async fn request_all(pool: &PgPool, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
    const OP: &str = "request replays";
    let done = sqlx::query("UPDATE quarantine SET replay_requested = TRUE WHERE mailbox = $1")
        .bind(mailbox.as_str())
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    Ok(done.rows_affected())
}

/// Drops an entry whose message was delivered.
pub(super) async fn release(
    mut tx: Transaction<'static, Postgres>,
    mailbox: &MailboxAddress,
    graph_id: &str,
) -> Result<(), StoreError> {
    const OP: &str = "release quarantined message";
    sqlx::query("DELETE FROM quarantine WHERE mailbox = $1 AND graph_id = $2")
        .bind(mailbox.as_str())
        .bind(graph_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
    tx.commit().await.map_err(db_err(OP))
}

#[async_trait]
impl QuarantineStore for PgStore {
    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        let tx = self.begin_for("quarantine message", &entry.mailbox).await?;
        put(tx, entry).await
    }

    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError> {
        list(&self.pool, mailbox, false).await
    }

    async fn request_replay(&self, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
        let entry = request_one(&self.pool, id).await?;
        if let Some(e) = &entry {
            self.notify_wake(&e.mailbox, Wake::Replay).await?;
        }
        Ok(entry)
    }

    async fn request_replays(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
        let n = request_all(&self.pool, mailbox).await?;
        self.notify_wake(mailbox, Wake::Replay).await?;
        Ok(n)
    }

    async fn replays_due(&self, mailbox: &MailboxAddress) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.guard(mailbox)?;
        list(&self.pool, Some(mailbox), true).await
    }

    async fn release_quarantined(&self, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError> {
        let tx = self.begin_for("release quarantined message", mailbox).await?;
        release(tx, mailbox, graph_id).await
    }
}
