//! The PostgreSQL store: the same tables as the SQLite one, shared by several replicas. Its
//! own migrations (`migrations/postgres/`) run at start under sqlx's advisory lock, so replicas
//! starting together migrate once. With a [`Fence`] (the daemon's case) every write about a
//! mailbox checks, in the same transaction, that this replica still holds the mailbox's lease
//! at the epoch it claimed; without one (tests, tools) writes are not fenced.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, SqlSafeStr, Transaction};
use time::OffsetDateTime;

use super::codec::{db_err, from_stored, from_unix_millis, to_address, to_stored, unix_millis};
use super::{
    ConsentState, DelegatedToken, DeltaWindow, MailboxStatus, OutboundRecord, QuarantineEntry, Store, StoreError,
};
use crate::domain::{MailboxAddress, MailboxState};

pub use fence::Fence;
pub use leases::{LeaseCounts, LeaseGrant, WAKE_CHANNEL, Wake};

/// The schema, in version order (embedded by hand, as for SQLite: no sqlx `macros` feature).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "store", include_str!("../../migrations/postgres/0001_store.sql")),
    (2, "leases", include_str!("../../migrations/postgres/0002_leases.sql")),
];

/// Connections per replica: mailbox tasks write in short transactions.
const MAX_CONNECTIONS: u32 = 5;
/// How long a caller waits for a connection; short, so an unreachable database shows as
/// store errors (and lost leases) rather than hung mailbox tasks.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows deleted per statement when pruning.
const PRUNE_BATCH: i64 = 5_000;

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
        migrator()
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

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err("ping"))?;
        Ok(())
    }

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

    async fn clear_delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<(), StoreError> {
        const OP: &str = "clear delta link";
        let mut tx = self.begin_for(OP, mailbox).await?;
        sqlx::query("DELETE FROM delta_links WHERE mailbox = $1 AND folder = $2")
            .bind(mailbox.as_str())
            .bind(folder)
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
        let (start, checkpoint) = row.unwrap_or_default();
        Ok(DeltaWindow {
            start_from: start.map(from_unix_millis).transpose()?,
            checkpoint: checkpoint.map(from_unix_millis).transpose()?,
        })
    }

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

    async fn save_status(&self, mailbox: &MailboxAddress, status: &MailboxStatus) -> Result<(), StoreError> {
        const OP: &str = "save mailbox status";
        let last_success_at = status.last_success_at.map(|t| to_stored(OP, t)).transpose()?;
        let mut tx = self.begin_for(OP, mailbox).await?;
        sqlx::query(
            "INSERT INTO mailbox_statuses (mailbox, state, reason, aadsts, since, last_success_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (mailbox) DO UPDATE SET state = excluded.state, reason = excluded.reason,
                 aadsts = excluded.aadsts, since = excluded.since, last_success_at = excluded.last_success_at",
        )
        .bind(mailbox.as_str())
        .bind(status.state.as_str())
        .bind(status.reason.as_deref())
        .bind(status.aadsts.map(i64::from))
        .bind(to_stored(OP, status.since)?)
        .bind(last_success_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
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

    async fn last_progress(
        &self,
        mailbox: &MailboxAddress,
        folders: &[String],
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        const OP: &str = "read last progress";
        let success: Option<(Option<String>,)> =
            sqlx::query_as("SELECT last_success_at FROM mailbox_statuses WHERE mailbox = $1")
                .bind(mailbox.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err(OP))?;
        let success = success.and_then(|(t,)| t).map(|t| from_stored(OP, &t)).transpose()?;
        // A mailbox has progressed as far as its least recent folder.
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT folder, updated_at FROM delta_links WHERE mailbox = $1 AND folder = ANY($2)")
                .bind(mailbox.as_str())
                .bind(folders)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
        let distinct: HashSet<&String> = folders.iter().collect();
        let oldest = if rows.len() < distinct.len() {
            None
        } else {
            let mut oldest: Option<OffsetDateTime> = None;
            for (_, at) in &rows {
                let at = from_stored(OP, at)?;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            oldest
        };
        Ok(success.max(oldest))
    }

    async fn save_delegated_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        let tx = self.begin_for("save delegated token", &token.mailbox).await?;
        delegated::save_token(tx, token).await
    }

    async fn save_granted_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        // A new grant (consent, import) may complete on any replica; rotations are fenced.
        let tx = self.pool.begin().await.map_err(db_err("save delegated token"))?;
        delegated::save_token(tx, token).await?;
        self.notify_wake(&token.mailbox, Wake::Grant).await
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

    async fn claim_consent_state(
        &self,
        state: &str,
        mailbox: &MailboxAddress,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        delegated::claim_state(&self.pool, state, mailbox, expires_at).await
    }

    async fn enqueue_outbound(&self, record: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
        outbox::enqueue(&self.pool, record).await
    }

    async fn outbound(&self, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
        outbox::get(&self.pool, id).await
    }

    async fn update_outbound(&self, record: &OutboundRecord) -> Result<(), StoreError> {
        let tx = self.begin_for("update outbound", &record.mailbox).await?;
        outbox::update(tx, record).await
    }

    async fn recent_outbound(&self, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
        outbox::recent(&self.pool, limit).await
    }

    async fn outbound_by_key(&self, mailbox: &MailboxAddress, key: &str) -> Result<Option<OutboundRecord>, StoreError> {
        outbox::by_key(&self.pool, mailbox, key).await
    }

    async fn outbound_due_mailboxes(&self, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError> {
        // Each replica's sender sees only the mailboxes whose lease it holds.
        let held = self.fence.as_ref().map(|f| f.held_addresses());
        outbox::due_mailboxes(&self.pool, now, held.as_deref()).await
    }

    async fn next_due_outbound(
        &self,
        mailbox: &MailboxAddress,
        now: OffsetDateTime,
    ) -> Result<Option<OutboundRecord>, StoreError> {
        // Nothing is due here for a mailbox another replica owns: the sender's worker for it
        // ends (rather than retrying an error) and a new one starts if the lease comes back.
        if self.fence.as_ref().is_some_and(|f| !f.holds(mailbox)) {
            return Ok(None);
        }
        outbox::next_due(&self.pool, mailbox, now).await
    }

    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        outbox::prune(&self.pool, before).await
    }

    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        let tx = self.begin_for("quarantine message", &entry.mailbox).await?;
        quarantine::put(tx, entry).await
    }

    async fn quarantined(&self, mailbox: Option<&MailboxAddress>) -> Result<Vec<QuarantineEntry>, StoreError> {
        quarantine::list(&self.pool, mailbox, false).await
    }

    async fn request_replay(&self, id: &str) -> Result<Option<QuarantineEntry>, StoreError> {
        let entry = quarantine::request_one(&self.pool, id).await?;
        if let Some(e) = &entry {
            self.notify_wake(&e.mailbox, Wake::Replay).await?;
        }
        Ok(entry)
    }

    async fn request_replays(&self, mailbox: &MailboxAddress) -> Result<u64, StoreError> {
        let n = quarantine::request_all(&self.pool, mailbox).await?;
        self.notify_wake(mailbox, Wake::Replay).await?;
        Ok(n)
    }

    async fn replays_due(&self, mailbox: &MailboxAddress) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.guard(mailbox)?;
        quarantine::list(&self.pool, Some(mailbox), true).await
    }

    async fn release_quarantined(&self, mailbox: &MailboxAddress, graph_id: &str) -> Result<(), StoreError> {
        let tx = self.begin_for("release quarantined message", mailbox).await?;
        quarantine::release(tx, mailbox, graph_id).await
    }
}

mod delegated;
mod fence;
mod leases;
mod outbox;
mod quarantine;
mod subscriptions;
#[cfg(test)]
mod tests;
