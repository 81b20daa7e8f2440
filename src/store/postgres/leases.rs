//! Membership and mailbox leases. Times are passed in (unix time from the caller's clock), so
//! tests drive expiry without sleeping; the local validity of a lease (see [`Held`]) is
//! measured from before each statement was sent.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::fence::Held;
use super::{PgStore, db_err, to_address, unix_millis};
use crate::domain::MailboxAddress;
use crate::store::StoreError;

/// A lease this replica got or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The mailbox.
    pub mailbox: MailboxAddress,
    /// Its epoch: one more than the previous owner's.
    pub epoch: i64,
}

/// The channel on which a replica asks a mailbox's owner to look at it now (a consent
/// completed or a replay was asked for on another replica).
pub const WAKE_CHANNEL: &str = "inboxd_wake";

/// Why a mailbox's owner is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A consent or import stored a new refresh token: forget the old one's failures.
    Grant,
    /// A quarantine replay was asked for.
    Replay,
}

impl Wake {
    fn as_str(self) -> &'static str {
        match self {
            Wake::Grant => "grant",
            Wake::Replay => "replay",
        }
    }

    /// Reads a notification's payload: why, and which mailbox.
    pub fn parse(payload: &str) -> Option<(Wake, MailboxAddress)> {
        let (why, mailbox) = payload.split_once(' ')?;
        let why = [Wake::Grant, Wake::Replay].into_iter().find(|w| w.as_str() == why)?;
        Some((why, MailboxAddress::parse(mailbox).ok()?))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    fn fence_or_err(&self, operation: &'static str) -> Result<&super::Fence, StoreError> {
        self.fence
            .as_deref()
            .ok_or_else(|| StoreError::Database(format!("{operation}: the store has no replica identity")))
    }

    /// How long after sending a claim or renewal the replica may act on its leases: the TTL
    /// less a third, so work stops well before another replica may take over.
    fn validity(ttl: Duration) -> Duration {
        ttl - ttl / 3
    }

    /// Records that this replica is alive.
    pub async fn heartbeat(&self, now: OffsetDateTime) -> Result<(), StoreError> {
        const OP: &str = "heartbeat";
        let fence = self.fence_or_err(OP)?;
        sqlx::query(
            "INSERT INTO replicas (replica_id, heartbeat_ms, started_ms) VALUES ($1, $2, $2)
             ON CONFLICT (replica_id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
        )
        .bind(fence.replica())
        .bind(unix_millis(now))
        .execute(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(())
    }

    /// Removes this replica from the membership (a clean shutdown).
    pub async fn leave(&self) -> Result<(), StoreError> {
        const OP: &str = "leave the cluster";
        let fence = self.fence_or_err(OP)?;
        sqlx::query("DELETE FROM replicas WHERE replica_id = $1")
            .bind(fence.replica())
            .execute(&self.pool)
            .await
            .map_err(db_err(OP))?;
        Ok(())
    }

    /// Replicas whose heartbeat is younger than `ttl`, sorted.
    pub async fn live_replicas(&self, now: OffsetDateTime, ttl: Duration) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT replica_id FROM replicas WHERE heartbeat_ms > $1 ORDER BY replica_id")
            .bind(unix_millis(now) - millis(ttl))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("read live replicas"))
    }

    /// Makes sure every configured mailbox has a lease row (unowned when new).
    pub async fn ensure_leases(&self, mailboxes: &[MailboxAddress]) -> Result<(), StoreError> {
        let names: Vec<&str> = mailboxes.iter().map(MailboxAddress::as_str).collect();
        sqlx::query(
            "INSERT INTO mailbox_leases (mailbox) SELECT m FROM unnest($1::TEXT[]) AS m
             ON CONFLICT (mailbox) DO NOTHING",
        )
        .bind(&names)
        .execute(&self.pool)
        .await
        .map_err(db_err("create leases"))?;
        Ok(())
    }

    /// Claims up to `max` of `mailboxes` that nobody holds (released, or expired at `now`);
    /// each gets a new epoch. Rows another replica is claiming at the same moment are skipped.
    pub async fn claim(
        &self,
        mailboxes: &[MailboxAddress],
        now: OffsetDateTime,
        ttl: Duration,
        max: usize,
    ) -> Result<Vec<LeaseGrant>, StoreError> {
        const OP: &str = "claim leases";
        let fence = self.fence_or_err(OP)?;
        if max == 0 || mailboxes.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = mailboxes.iter().map(MailboxAddress::as_str).collect();
        let sent = Instant::now();
        // Each replica prefers a different order (hashed with its id): replicas claiming at
        // once mostly want different rows.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE mailbox_leases SET owner = $1, epoch = epoch + 1, expires_ms = $2 + $3, claimed_ms = $2
             WHERE mailbox IN (
                 SELECT mailbox FROM mailbox_leases
                 WHERE mailbox = ANY($4) AND (owner IS NULL OR expires_ms <= $2)
                 ORDER BY md5(mailbox || $1) LIMIT $5 FOR UPDATE SKIP LOCKED)
             RETURNING mailbox, epoch",
        )
        .bind(fence.replica())
        .bind(unix_millis(now))
        .bind(millis(ttl))
        .bind(&names)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        let valid_until = sent + Self::validity(ttl);
        let mut grants = Vec::with_capacity(rows.len());
        for (mailbox, epoch) in rows {
            let mailbox = to_address(OP, &mailbox)?;
            fence.hold(mailbox.clone(), Held { epoch, valid_until });
            grants.push(LeaseGrant { mailbox, epoch });
        }
        Ok(grants)
    }

    /// Extends every lease this replica holds, in one statement; returns those it still holds.
    /// A lease missing from the answer was lost (expired and taken over, or fenced): it is
    /// forgotten here, and the caller stops its work.
    pub async fn renew(&self, now: OffsetDateTime, ttl: Duration) -> Result<Vec<LeaseGrant>, StoreError> {
        const OP: &str = "renew leases";
        let fence = self.fence_or_err(OP)?;
        let held = fence.held();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (names, epochs): (Vec<&str>, Vec<i64>) = held.iter().map(|(m, h)| (m.as_str(), h.epoch)).unzip();
        let sent = Instant::now();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE mailbox_leases l SET expires_ms = $2 + $3
             FROM unnest($4::TEXT[], $5::BIGINT[]) AS h(mailbox, epoch)
             WHERE l.mailbox = h.mailbox AND l.epoch = h.epoch AND l.owner = $1 AND l.expires_ms > $2
             RETURNING l.mailbox, l.epoch",
        )
        .bind(fence.replica())
        .bind(unix_millis(now))
        .bind(millis(ttl))
        .bind(&names)
        .bind(&epochs)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        let valid_until = sent + Self::validity(ttl);
        let kept: HashMap<String, i64> = rows.into_iter().collect();
        let mut grants = Vec::with_capacity(kept.len());
        for (mailbox, h) in held {
            match kept.get(mailbox.as_str()) {
                Some(&epoch) => {
                    fence.hold(mailbox.clone(), Held { epoch, valid_until });
                    grants.push(LeaseGrant { mailbox, epoch });
                }
                None => {
                    tracing::warn!(mailbox = %mailbox, epoch = h.epoch, "Lost the mailbox's lease (it expired or another replica took it over).");
                    fence.forget(&mailbox);
                }
            }
        }
        Ok(grants)
    }

    /// Gives leases up (rebalance, removed from the config, shutdown) so another replica may
    /// claim them at once; the caller has stopped their work first.
    pub async fn release(&self, mailboxes: &[MailboxAddress]) -> Result<u64, StoreError> {
        const OP: &str = "release leases";
        let fence = self.fence_or_err(OP)?;
        let held = fence.held();
        let (names, epochs): (Vec<&str>, Vec<i64>) = mailboxes
            .iter()
            .filter_map(|m| held.get(m).map(|h| (m.as_str(), h.epoch)))
            .unzip();
        for m in mailboxes {
            fence.forget(m);
        }
        if names.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE mailbox_leases l SET owner = NULL, expires_ms = 0
             FROM unnest($2::TEXT[], $3::BIGINT[]) AS h(mailbox, epoch)
             WHERE l.mailbox = h.mailbox AND l.epoch = h.epoch AND l.owner = $1",
        )
        .bind(fence.replica())
        .bind(&names)
        .bind(&epochs)
        .execute(&self.pool)
        .await
        .map_err(db_err(OP))?;
        Ok(done.rows_affected())
    }

    /// Each leased mailbox's owner while its lease runs at `now` (None: nobody right now).
    pub async fn owners(&self, now: OffsetDateTime) -> Result<HashMap<MailboxAddress, Option<String>>, StoreError> {
        const OP: &str = "read lease owners";
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT mailbox, CASE WHEN expires_ms > $1 THEN owner END FROM mailbox_leases")
                .bind(unix_millis(now))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
        rows.into_iter()
            .map(|(m, owner)| Ok((to_address(OP, &m)?, owner)))
            .collect()
    }

    /// Asks the mailbox's owner, wherever it runs, to look at the mailbox now: `why` is
    /// [`Wake::Grant`] (a new refresh token was stored) or [`Wake::Replay`].
    pub async fn notify_wake(&self, mailbox: &MailboxAddress, why: Wake) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(format!("{} {mailbox}", why.as_str()))
            .execute(&self.pool)
            .await
            .map_err(db_err("notify the mailbox's owner"))?;
        Ok(())
    }

    /// A listener on the wake channel (its own connection, reconnecting by itself).
    pub async fn wake_listener(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        const OP: &str = "listen for wake-ups";
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db_err(OP))?;
        listener.listen(WAKE_CHANNEL).await.map_err(db_err(OP))?;
        Ok(listener)
    }
}

/// How the leases of the configured mailboxes stand, as one replica sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Held by this replica.
    pub held: u64,
    /// Held by another replica.
    pub other: u64,
    /// Released or expired (or never claimed).
    pub free: u64,
}

impl PgStore {
    /// Counts the leases of `mailboxes` by state at `now`.
    pub async fn lease_counts(
        &self,
        mailboxes: &[MailboxAddress],
        now: OffsetDateTime,
    ) -> Result<LeaseCounts, StoreError> {
        const OP: &str = "count leases";
        let fence = self.fence_or_err(OP)?;
        let names: Vec<&str> = mailboxes.iter().map(MailboxAddress::as_str).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT CASE WHEN owner IS NULL OR expires_ms <= $2 THEN 'free'
                         WHEN owner = $1 THEN 'held' ELSE 'other' END AS state, count(*)
             FROM mailbox_leases WHERE mailbox = ANY($3) GROUP BY 1",
        )
        .bind(fence.replica())
        .bind(unix_millis(now))
        .bind(&names)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        let mut counts = LeaseCounts::default();
        for (state, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "held" => counts.held = n,
                "other" => counts.other = n,
                _ => counts.free += n,
            }
        }
        // Mailboxes without a row yet are free too.
        let known = counts.held + counts.other + counts.free;
        counts.free += (mailboxes.len() as u64).saturating_sub(known);
        Ok(counts)
    }

    /// Every mailbox's acknowledged total, in one query (for `/v1/mailboxes` on any replica).
    pub async fn delivered_totals(&self) -> Result<HashMap<MailboxAddress, u64>, StoreError> {
        const OP: &str = "read delivered totals";
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT mailbox, total FROM delivered_totals")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        rows.into_iter()
            .map(|(m, n)| Ok((to_address(OP, &m)?, u64::try_from(n).unwrap_or(0))))
            .collect()
    }
}
