//! The quarantine table: messages that could not become events or that the receiver refused,
//! and the replays asked for through the API.

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::{SqliteStore, db_err, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows::{QuarantineRow, quarantine_entry};
use crate::store::{QuarantineEntry, QuarantineStore, StoreError};

/// Quarantines a message. A message quarantined again (a replay that failed) keeps its id and
/// first time, takes the new reason and is no longer due for replay.
pub(super) async fn put(pool: &SqlitePool, entry: &QuarantineEntry) -> Result<(), StoreError> {
    const OP: &str = "quarantine message";
    sqlx::query(
        "INSERT INTO quarantine (mailbox, graph_id, folder, reason, at, id, replay_requested)
         VALUES (?1, ?2, ?3, ?4, ?5, lower(hex(randomblob(16))), 0)
         ON CONFLICT (mailbox, graph_id) DO UPDATE SET reason = excluded.reason, replay_requested = 0",
    )
    .bind(entry.mailbox.as_str())
    .bind(&entry.graph_id)
    .bind(&entry.folder)
    .bind(&entry.reason)
    .bind(to_stored(OP, entry.at)?)
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(())
}

/// Entries, newest first (or, for `due`, only those awaiting replay, oldest first).
pub(super) async fn list(
    pool: &SqlitePool,
    mailbox: Option<&MailboxAddress>,
    due: bool,
) -> Result<Vec<QuarantineEntry>, StoreError> {
    const OP: &str = "read quarantine";
    let sql = if due {
        "SELECT id, mailbox, folder, graph_id, reason, at FROM quarantine
         WHERE mailbox = ?1 AND replay_requested = 1 ORDER BY at, rowid"
    } else {
        "SELECT id, mailbox, folder, graph_id, reason, at FROM quarantine
         WHERE ?1 IS NULL OR mailbox = ?1 ORDER BY at DESC, rowid DESC"
    };
    let rows = sqlx::query_as::<_, QuarantineRow>(sql)
        .bind(mailbox.map(MailboxAddress::as_str))
        .fetch_all(pool)
        .await
        .map_err(db_err(OP))?;
    rows.into_iter().map(|row| quarantine_entry(OP, row)).collect()
}

/// Flags one entry for replay and returns it.
pub(super) async fn request_one(pool: &SqlitePool, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
    const OP: &str = "request replay";
    let row = sqlx::query_as::<_, QuarantineRow>(
        "UPDATE quarantine SET replay_requested = 1 WHERE id = ?1
         RETURNING id, mailbox, folder, graph_id, reason, at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|row| quarantine_entry(OP, row)).transpose()
}

/// Flags every entry of a mailbox for replay.
pub(super) async fn request_all(pool: &SqlitePool, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
    const OP: &str = "request replays";
    let done = sqlx::query("UPDATE quarantine SET replay_requested = 1 WHERE mailbox = ?1")
        .bind(mailbox.as_str())
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    Ok(done.rows_affected())
}

/// Drops an entry whose message was delivered.
pub(super) async fn release(pool: &SqlitePool, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError> {
    const OP: &str = "release quarantined message";
    sqlx::query("DELETE FROM quarantine WHERE mailbox = ?1 AND graph_id = ?2")
        .bind(mailbox.as_str())
        .bind(graph_id)
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    Ok(())
}

#[async_trait]
impl QuarantineStore for SqliteStore {
    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        put(&self.pool, entry).await
    }

    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError> {
        list(&self.pool, mailbox, false).await
    }

    async fn request_replay(&self, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
        request_one(&self.pool, id).await
    }

    async fn request_replays(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
        request_all(&self.pool, mailbox).await
    }

    async fn replays_due(&self, mailbox: &MailboxAddress) -> Result<Vec<QuarantineEntry>, StoreError> {
        list(&self.pool, Some(mailbox), true).await
    }

    async fn release_quarantined(&self, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError> {
        release(&self.pool, mailbox, graph_id).await
    }
}
