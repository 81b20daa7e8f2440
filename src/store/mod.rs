//! Persistence: delta checkpoints, delivered keys, mailbox states, quarantine, outbox,
//! delegated tokens, subscriptions; and, on PostgreSQL, the mailbox leases of several replicas.
//!
//! One trait per concern, [`Store`] their sum; two implementations: SQLite (one process, the
//! default) and PostgreSQL (shared). Code that calls a concern's methods on a store brings the
//! traits into scope with `use crate::store::prelude::*`.

mod checkpoints;
mod codec;
mod delegated;
mod delivered;
mod housekeeping;
mod migrate;
mod outbox;
pub mod postgres;
mod quarantine;
mod rows;
mod sqlite;
mod statuses;
mod subscriptions;
#[cfg(test)]
mod suite;

use async_trait::async_trait;

pub use checkpoints::{CheckpointStore, DeltaWindow};
pub use delegated::{ConsentState, DelegatedStore, DelegatedToken};
pub use delivered::DeliveredStore;
pub use housekeeping::prune_delivered_keys;
pub use outbox::{OutboundRecord, OutboundStatus, OutboxStore, SendStep};
pub use postgres::PgStore;
pub use quarantine::{QuarantineEntry, QuarantineStore};
pub use sqlite::SqliteStore;
pub use statuses::{MailboxStatus, StatusStore};
pub use subscriptions::{SubscriptionRecord, SubscriptionStore};

use crate::domain::MailboxAddress;

/// Every store trait, for `use crate::store::prelude::*` where a store's methods are called.
pub mod prelude {
    pub use super::{
        CheckpointStore, DelegatedStore, DeliveredStore, OutboxStore, QuarantineStore, StatusStore, Store,
        SubscriptionStore,
    };
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or answered with an error.
    #[error("store: {0}")]
    Database(String),
    /// The store URL is not one this build can open.
    #[error("store url '{0}' is not supported (use sqlite://PATH or postgres://HOST/DATABASE)")]
    UnsupportedUrl(String),
    /// Another process holds the store's lock file: two writers would both poll and send.
    #[error(
        "store: lock file {} is held by another inboxd process; only one instance may use this store (stop the other one first)",
        .0.display()
    )]
    Locked(std::path::PathBuf),
    /// This replica no longer holds the mailbox's lease at the epoch it claimed: another
    /// replica owns the mailbox now, and this write would overwrite its work.
    #[error("store: write for {mailbox} refused: its lease moved on from epoch {epoch} (another replica owns it now)")]
    Fenced {
        /// The mailbox.
        mailbox: MailboxAddress,
        /// The stale epoch the write carried (0: no lease held at all).
        epoch: i64,
    },
}

/// What the daemon needs to remember across restarts: every concern, and a readiness check.
#[async_trait]
pub trait Store:
    CheckpointStore
    + DeliveredStore
    + StatusStore
    + DelegatedStore
    + OutboxStore
    + QuarantineStore
    + SubscriptionStore
    + Send
    + Sync
    + 'static
{
    /// Checks the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// An opened store, by kind: the daemon runs leases only on PostgreSQL.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One process, one file.
    Sqlite(SqliteStore),
    /// Shared by replicas.
    Postgres(PgStore),
}

/// Opens the store a URL names: `sqlite://path` (created if missing) or `postgres://…`,
/// migrated either way.
pub async fn open_backend(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(Backend::Sqlite(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres(PgStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(postgres::redacted(url)))
}

/// Opens the store a URL names, as the trait.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match open_backend(url).await? {
        Backend::Sqlite(s) => std::sync::Arc::new(s),
        Backend::Postgres(p) => std::sync::Arc::new(p),
    })
}
