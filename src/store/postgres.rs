//! The PostgreSQL store: the same tables as the SQLite one, shared by several replicas. Its
//! own migrations (`migrations/postgres/`) run at start under sqlx's advisory lock, so replicas
//! starting together migrate once. With a [`Fence`] (the daemon's case) every write about a
//! mailbox checks, in the same transaction, that this replica still holds the mailbox's lease
//! at the epoch it claimed; without one (tests, tools) writes are not fenced.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::codec::{db_err, from_stored, to_address, to_stored, unix_millis};
use super::migrate::{Embedded, migrator};
use super::{Store, StoreError};
use crate::domain::MailboxAddress;

pub use fence::Fence;
pub use leases::{LeaseCounts, LeaseGrant, WAKE_CHANNEL, Wake};

/// The schema, in version order (embedded by hand, as for SQLite: no sqlx `macros` feature).
const MIGRATIONS: &[Embedded] = &[
    (1, "store", include_str!("../../migrations/postgres/0001_store.sql")),
    (2, "leases", include_str!("../../migrations/postgres/0002_leases.sql")),
];

/// Connections per replica: mailbox tasks write in short transactions.
const MAX_CONNECTIONS: u32 = 5;
/// How long a caller waits for a connection; short, so an unreachable database shows as
/// store errors (and lost leases) rather than hung mailbox tasks.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared store (`postgres://…`; TLS with `?sslmode=verify-full&sslrootcert=…`).
#[derive(Clone)]
pub struct PgStore {
    /// Connections; cloning the store shares them.
    pub(super) pool: PgPool,
    /// This replica's leases: None while writes are not fenced.
    pub(super) fence: Option<Arc<Fence>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("replica", &self.fence.as_ref().map(|f| f.replica()))
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "the postgres store url".into(),
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names and migrates it.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let shown = redacted(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("open {shown}: {}", scrub(&e.to_string(), url))))?;
        PgStore::connect(options, &shown).await
    }

    /// Connects with explicit options (`shown` names the database in errors) and migrates.
    pub async fn connect(options: PgConnectOptions, shown: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection that went through a Postgres restart is dropped, not reused.
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(format!("open {shown}: {e}")))?;
        // sqlx takes a Postgres advisory lock around the migrations: replicas starting together
        // wait for the first one, then find nothing left to do.
        migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrate {shown}: {e}")))?;
        tracing::debug!(url = shown, "Opened the store.");
        Ok(PgStore { pool, fence: None })
    }

    /// The same store, its writes fenced by the leases `fence` holds.
    pub fn fenced(&self, fence: Arc<Fence>) -> PgStore {
        PgStore {
            pool: self.pool.clone(),
            fence: Some(fence),
        }
    }

    /// The fence in force, if any.
    pub fn fence(&self) -> Option<&Arc<Fence>> {
        self.fence.as_ref()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Refuses work on a mailbox whose lease this replica no longer holds (by its own clock);
    /// reads that start Graph work (a poll round, a send) go through here, so a replica resumed
    /// after a pause does not poll or send before it learns the lease is gone.
    fn guard(&self, mailbox: &MailboxAddress) -> Result<(), StoreError> {
        match &self.fence {
            Some(fence) => fence.epoch(mailbox).map(|_| ()),
            None => Ok(()),
        }
    }

    /// A transaction for a write about `mailbox`: with a fence, it first checks (and holds,
    /// until commit, against a takeover) that the lease is still ours at our epoch.
    async fn begin_for(
        &self,
        operation: &'static str,
        mailbox: &MailboxAddress,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let epoch = match &self.fence {
            Some(fence) => Some((fence, fence.epoch(mailbox)?)),
            None => None,
        };
        let mut tx = self.pool.begin().await.map_err(db_err(operation))?;
        if let Some((fence, epoch)) = epoch {
            let row: Option<(Option<String>, i64)> =
                sqlx::query_as("SELECT owner, epoch FROM mailbox_leases WHERE mailbox = $1 FOR SHARE")
                    .bind(mailbox.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(operation))?;
            match row {
                Some((Some(owner), current)) if owner == fence.replica() && current == epoch => {}
                _ => return Err(fence.refuse(mailbox, epoch, operation)),
            }
        }
        Ok(tx)
    }
}

/// Removes the URL (it may hold a password) from a parse error.
fn scrub(message: &str, url: &str) -> String {
    message.replace(url, "<url>")
}

#[async_trait]
impl Store for PgStore {
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
mod fence;
mod leases;
mod outbox;
mod quarantine;
mod statuses;
mod subscriptions;
#[cfg(test)]
mod tests;
