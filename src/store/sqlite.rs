//! The SQLite store: one database file in WAL mode with `synchronous = FULL`, so a commit
//! that returned survives `kill -9` and power loss (delta-link checkpoints alone use a
//! `NORMAL` connection: losing the newest to a power cut only replays a round); schema
//! migrations embedded in the binary.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;

use super::codec::{db_err, from_stored, from_unix_millis, to_address, to_stored, unix_millis};
use super::{
    ConsentState, DelegatedToken, DeltaWindow, MailboxStatus, OutboundRecord, QuarantineEntry, Store, StoreError,
};
use crate::domain::{MailboxAddress, MailboxState};

/// The schema, in version order. Embedded by hand rather than with `sqlx::migrate!()`, which
/// needs sqlx's `macros` feature; file names follow `migrate!()`'s `<version>_<description>.sql`
/// so the two stay interchangeable (same versions, same checksums).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "store", include_str!("../../migrations/0001_store.sql")),
    (2, "outbox", include_str!("../../migrations/0002_outbox.sql")),
    (3, "delegated", include_str!("../../migrations/0003_delegated.sql")),
    (
        4,
        "quarantine_replay",
        include_str!("../../migrations/0004_quarantine_replay.sql"),
    ),
    (
        5,
        "resync_window",
        include_str!("../../migrations/0005_resync_window.sql"),
    ),
    (
        6,
        "outbound_confirm",
        include_str!("../../migrations/0006_outbound_confirm.sql"),
    ),
    (
        7,
        "subscriptions",
        include_str!("../../migrations/0007_subscriptions.sql"),
    ),
    (
        8,
        "outbox_payloads",
        include_str!("../../migrations/0008_outbox_payloads.sql"),
    ),
];

/// Connections of a file-backed pool: SQLite has one writer at a time, a few readers suffice.
const MAX_CONNECTIONS: u32 = 4;
/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free connection of the pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows deleted per statement when pruning, so deliveries are not blocked behind one long delete.
const PRUNE_BATCH: i64 = 5_000;

/// The default store: a SQLite database (`sqlite://PATH` or `sqlite::memory:`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connections to the database (`synchronous = FULL`); cloning the store shares them.
    pool: SqlitePool,
    /// One connection with `synchronous = NORMAL`, only for delta-link checkpoints: one is
    /// written per polled folder and round, and losing the last ones to a power cut only
    /// replays a round (deduplicated by the delivered keys, which stay FULL).
    checkpoints: SqlitePool,
    /// The exclusive lock on `<database>.lock`, held while any clone lives (None in memory).
    /// SQLite's own locking serialises writes but lets two daemons poll and send at once.
    lock: Option<Arc<File>>,
}

/// Takes the exclusive lock next to the database file, or says which file is held.
/// An advisory `flock`: the OS releases it when the process dies, even on SIGKILL.
fn lock_next_to(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Database(format!("open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(path)),
        Err(TryLockError::Error(e)) => Err(StoreError::Database(format!("lock {}: {e}", path.display()))),
    }
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) and migrates the database a URL names.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("open {url}: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool_options = if in_memory {
            // An in-memory database lives as long as its last connection: keep exactly one,
            // forever (several would contend on shared-cache table locks, which busy_timeout
            // does not cover).
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| StoreError::Database(format!("open {url}: cannot create {}: {e}", dir.display())))?;
            }
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        // Before the first connection: a second instance must not even run migrations.
        let lock = if in_memory {
            None
        } else {
            Some(Arc::new(lock_next_to(options.get_filename())?))
        };
        let pool = pool_options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Database(format!("open {url}: {e}")))?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrate {url}: {e}")))?;
        let checkpoints = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.synchronous(SqliteSynchronous::Normal))
                .await
                .map_err(|e| StoreError::Database(format!("open {url}: {e}")))?
        };
        tracing::debug!(url, "Opened the store.");
        Ok(SqliteStore {
            pool,
            checkpoints,
            lock,
        })
    }

    /// Closes every connection, waiting for them to finish (checkpoints the WAL on the way out),
    /// then releases the lock so another process may open the store.
    pub async fn close(&self) {
        self.checkpoints.close().await;
        self.pool.close().await;
        if let Some(lock) = &self.lock {
            let _ = lock.unlock();
        }
    }
}

/// The embedded migrations, ready to run.
fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Encodes keys as one JSON array bound to a single parameter and expanded with `json_each`,
/// so a slice of any length fits SQLite's limit on bound variables.
fn json_keys(operation: &'static str, keys: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(keys).map_err(|e| StoreError::Database(format!("{operation}: {e}")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err("ping"))?;
        Ok(())
    }

    async fn delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar::<_, String>("SELECT link FROM delta_links WHERE mailbox = ?1 AND folder = ?2")
            .bind(mailbox.as_str())
            .bind(folder)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("read delta link"))
    }

    async fn save_delta_link(&self, mailbox: &MailboxAddress, folder: &str, link: &str) -> Result<(), StoreError> {
        const OP: &str = "save delta link";
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .execute(&self.checkpoints)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    async fn begin_delta(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        start_from: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        const OP: &str = "save first delta link";
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at,
                 start_from_ms = excluded.start_from_ms, checkpoint_ms = NULL",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .bind(start_from.map(unix_millis))
        .execute(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    async fn save_checkpoint(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        round_began: OffsetDateTime,
    ) -> Result<(), StoreError> {
        const OP: &str = "save delta checkpoint";
        sqlx::query(
            "INSERT INTO delta_links (mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5)
             ON CONFLICT (mailbox, folder) DO UPDATE SET link = excluded.link, updated_at = excluded.updated_at,
                 checkpoint_ms = excluded.checkpoint_ms",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .bind(link)
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .bind(unix_millis(round_began))
        .execute(&self.checkpoints)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    async fn delta_window(&self, mailbox: &MailboxAddress, folder: &str) -> Result<DeltaWindow, StoreError> {
        const OP: &str = "read delta window";
        let row = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "SELECT start_from_ms, checkpoint_ms FROM delta_links WHERE mailbox = ?1 AND folder = ?2",
        )
        .bind(mailbox.as_str())
        .bind(folder)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err(OP))?;
        let (start, checkpoint) = row.unwrap_or_default();
        Ok(DeltaWindow {
            start_from: start.map(from_unix_millis).transpose()?,
            checkpoint: checkpoint.map(from_unix_millis).transpose()?,
        })
    }

    async fn clear_delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM delta_links WHERE mailbox = ?1 AND folder = ?2")
            .bind(mailbox.as_str())
            .bind(folder)
            .execute(&self.pool)
            .await
            .map_err(db_err("clear delta link"))?;
        Ok(())
    }

    async fn delivered(&self, mailbox: &MailboxAddress, dedup_keys: &[String]) -> Result<HashSet<String>, StoreError> {
        const OP: &str = "look up delivered keys";
        if dedup_keys.is_empty() {
            return Ok(HashSet::new());
        }
        let found = sqlx::query_scalar::<_, String>(
            "SELECT dedup_key FROM delivered_keys
             WHERE mailbox = ?1 AND dedup_key IN (SELECT value FROM json_each(?2))",
        )
        .bind(mailbox.as_str())
        .bind(json_keys(OP, dedup_keys)?)
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
        let keys = json_keys(OP, dedup_keys)?;
        // IMMEDIATE takes the write lock up front, where busy_timeout applies, instead of
        // failing on a lock upgrade halfway through.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err(OP))?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO delivered_keys (mailbox, dedup_key, delivered_at)
             SELECT ?1, value, ?2 FROM json_each(?3)",
        )
        .bind(mailbox.as_str())
        .bind(unix_millis(at))
        .bind(keys)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?
        .rows_affected();
        if inserted > 0 {
            let inserted = i64::try_from(inserted).map_err(|e| StoreError::Database(format!("{OP}: {e}")))?;
            sqlx::query(
                "INSERT INTO delivered_totals (mailbox, total) VALUES (?1, ?2)
                 ON CONFLICT (mailbox) DO UPDATE SET total = total + excluded.total",
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
        let total = sqlx::query_scalar::<_, i64>("SELECT total FROM delivered_totals WHERE mailbox = ?1")
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
            // A key stays while any folder of its mailbox could resync back to it (see
            // `delta_window`): a message in that window must not be announced again.
            let deleted = sqlx::query(
                "DELETE FROM delivered_keys WHERE rowid IN
                 (SELECT k.rowid FROM delivered_keys k WHERE k.delivered_at < ?1 AND NOT EXISTS
                    (SELECT 1 FROM delta_links d WHERE d.mailbox = k.mailbox
                       -- The folder's resync lower bound; NULL (no start, no checkpoint) is all mail.
                       AND COALESCE(CASE WHEN d.start_from_ms IS NULL THEN d.checkpoint_ms - ?3
                                         WHEN d.checkpoint_ms IS NULL THEN d.start_from_ms
                                         ELSE max(d.start_from_ms, d.checkpoint_ms - ?3) END,
                                    k.delivered_at) <= k.delivered_at)
                  LIMIT ?2)",
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

    async fn statuses(&self) -> Result<Vec<(MailboxAddress, MailboxStatus)>, StoreError> {
        const OP: &str = "read mailbox statuses";
        type StatusRow = (String, String, Option<String>, Option<i64>, String, Option<String>);
        let rows = sqlx::query_as::<_, StatusRow>(
            "SELECT mailbox, state, reason, aadsts, since, last_success_at FROM mailbox_statuses ORDER BY mailbox",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.into_iter()
            .map(|(mailbox, state, reason, aadsts, since, last_success_at)| {
                let status = MailboxStatus {
                    state: MailboxState::parse(&state)
                        .ok_or_else(|| StoreError::Database(format!("{OP}: unknown state '{state}' of {mailbox}")))?,
                    reason,
                    aadsts: aadsts
                        .map(u32::try_from)
                        .transpose()
                        .map_err(|e| StoreError::Database(format!("{OP}: bad aadsts of {mailbox}: {e}")))?,
                    since: from_stored(OP, &since)?,
                    last_success_at: last_success_at.as_deref().map(|t| from_stored(OP, t)).transpose()?,
                };
                Ok((to_address(OP, &mailbox)?, status))
            })
            .collect()
    }

    async fn save_delegated_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        delegated::save_token(&self.pool, token).await
    }

    async fn delegated_token(&self, mailbox: &MailboxAddress) -> Result<Option<DelegatedToken>, StoreError> {
        delegated::token(&self.pool, mailbox).await
    }

    async fn save_consent_state(&self, state: &ConsentState) -> Result<(), StoreError> {
        delegated::save_state(&self.pool, state).await
    }

    async fn take_consent_state(&self, state: &str) -> Result<Option<ConsentState>, StoreError> {
        delegated::take_state(&self.pool, state).await
    }

    async fn enqueue_outbound(&self, record: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
        outbox::enqueue(&self.pool, record).await
    }

    async fn outbound(&self, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
        outbox::get(&self.pool, id).await
    }

    async fn recent_outbound(&self, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
        outbox::recent(&self.pool, limit).await
    }

    async fn outbound_by_key(&self, mailbox: &MailboxAddress, key: &str) -> Result<Option<OutboundRecord>, StoreError> {
        outbox::by_key(&self.pool, mailbox, key).await
    }

    async fn outbound_due_mailboxes(&self, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError> {
        outbox::due_mailboxes(&self.pool, now).await
    }

    async fn next_due_outbound(
        &self,
        mailbox: &MailboxAddress,
        now: OffsetDateTime,
    ) -> Result<Option<OutboundRecord>, StoreError> {
        outbox::next_due(&self.pool, mailbox, now).await
    }

    async fn claim_consent_state(
        &self,
        state: &str,
        mailbox: &MailboxAddress,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        delegated::claim_state(&self.pool, state, mailbox, expires_at).await
    }

    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        outbox::prune(&self.pool, before).await
    }

    async fn update_outbound(&self, record: &OutboundRecord) -> Result<(), StoreError> {
        outbox::update(&self.pool, record).await
    }

    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        quarantine::put(&self.pool, entry).await
    }

    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError> {
        quarantine::list(&self.pool, mailbox, false).await
    }

    async fn request_replay(&self, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
        quarantine::request_one(&self.pool, id).await
    }

    async fn request_replays(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
        quarantine::request_all(&self.pool, mailbox).await
    }

    async fn replays_due(&self, mailbox: &MailboxAddress) -> Result<Vec<QuarantineEntry>, StoreError> {
        quarantine::list(&self.pool, Some(mailbox), true).await
    }

    async fn release_quarantined(&self, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError> {
        quarantine::release(&self.pool, mailbox, graph_id).await
    }
}

mod delegated;
mod outbox;
mod quarantine;
mod subscriptions;
#[cfg(test)]
mod tests;
