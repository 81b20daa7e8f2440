//! One behaviour suite for every store, a module per concern: each check is a function over
//! the trait, run against SQLite (a file in a temporary directory) and PostgreSQL (a schema of
//! its own, created for the test and dropped after it). PostgreSQL must be running: a test that
//! cannot reach it fails, naming the address it tried.

use std::collections::HashSet;
use std::sync::Arc;

use crate::domain::MailboxAddress;
use crate::store::{PgStore, QuarantineEntry, SqliteStore, Store};

/// Runs each named check of the invoking module against both stores.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = crate::store::suite::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _schema) = crate::store::suite::postgres().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

mod checkpoints;
mod delegated;
mod delivered;
mod outbox;
pub(crate) mod pg;
mod quarantine;
mod statuses;
mod subscriptions;

pub(crate) fn addr(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).unwrap()
}

pub(crate) fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A SQLite store in a fresh directory (kept as long as the guard lives).
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data").join("inboxd.db").display());
    (Arc::new(SqliteStore::open(&url).await.unwrap()), dir)
}

/// A Postgres store on a schema of its own (dropped with the guard).
async fn postgres() -> (Arc<dyn Store>, pg::Schema) {
    let schema = pg::Schema::create().await;
    let store: PgStore = schema.open().await;
    (Arc::new(store), schema)
}

/// Entries with the store-assigned ids blanked, to compare with what was quarantined.
pub(crate) fn without_ids(entries: Vec<QuarantineEntry>) -> Vec<QuarantineEntry> {
    entries
        .into_iter()
        .map(|e| QuarantineEntry { id: String::new(), ..e })
        .collect()
}
