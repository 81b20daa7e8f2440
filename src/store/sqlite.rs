//! The SQLite store: one database file in WAL mode with `synchronous = FULL`, so a commit
//! that returned survives `kill -9` and power loss (delta-link checkpoints alone use a
//! `NORMAL` connection: losing the newest to a power cut only replays a round); schema
//! migrations embedded in the binary.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::codec::{db_err, from_stored, to_address, to_stored, unix_millis};
use super::migrate::{Embedded, migrator};
use super::{Store, StoreError};

/// The schema, in version order.
const MIGRATIONS: &[Embedded] = &[
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
        migrator(MIGRATIONS)
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

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err("ping"))?;
        Ok(())
    }
}

mod checkpoints;
mod delegated;
mod delivered;
mod outbox;
mod quarantine;
mod statuses;
mod subscriptions;
#[cfg(test)]
mod tests;
