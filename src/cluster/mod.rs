//! Replicas sharing a Postgres store: each mailbox is worked by the one replica holding its
//! lease. Every heartbeat a replica records that it is alive, renews all its leases in one
//! statement, and moves towards its fair share of the configured mailboxes among the live
//! replicas: it claims free leases up to that share at once, and gives surplus ones up a few
//! at a time. What it holds is published on a watch channel; the supervisor runs exactly
//! those mailboxes. A lease not confirmed by the database in time is dropped locally before
//! it can expire, so a replica cut off from Postgres stops its mailboxes first.

mod view;

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use view::{annotate, remote};

use crate::config::{ClusterConfig, MailboxConfig};
use crate::domain::MailboxAddress;
use crate::metrics::Metrics;
use crate::store::postgres::{Fence, Wake};
use crate::store::{PgStore, StoreError};

/// The mailboxes this replica holds leases for.
pub type Owned = HashSet<MailboxAddress>;

/// This replica's part in the cluster.
pub struct Cluster {
    /// The fenced store (its fence is this replica's leases).
    store: PgStore,
    fence: Arc<Fence>,
    config: ClusterConfig,
    metrics: Arc<Metrics>,
    /// The configured mailboxes (swapped on reload).
    configured: ArcSwap<Vec<Arc<MailboxConfig>>>,
    /// Set when `configured` changed: their lease rows are created at the next heartbeat.
    rows_missing: std::sync::atomic::AtomicBool,
}

/// This replica's share of `total` mailboxes among `live` replicas (sorted ids): an even
/// split, the remainder going to the first ones, so shares differ by at most one.
pub fn fair_share(total: usize, live: &[String], me: &str) -> usize {
    let Some(rank) = live.iter().position(|r| r == me) else {
        return 0;
    };
    let n = live.len();
    total / n + usize::from(rank < total % n)
}

/// Surplus leases given up per heartbeat: a joining replica takes mailboxes over gradually
/// instead of every mailbox restarting at once.
fn moves_per_round(share: usize) -> usize {
    (share / 4).max(1)
}

impl Cluster {
    /// The cluster part of a replica over `store` (fenced by `fence`).
    pub fn new(store: PgStore, fence: Arc<Fence>, config: ClusterConfig, metrics: Arc<Metrics>) -> Arc<Cluster> {
        Arc::new(Cluster {
            store,
            fence,
            config,
            metrics,
            configured: ArcSwap::from_pointee(Vec::new()),
            rows_missing: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        self.fence.replica()
    }

    /// This replica's leases.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The fenced store.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// The configured mailboxes.
    pub fn configured(&self) -> Arc<Vec<Arc<MailboxConfig>>> {
        self.configured.load_full()
    }

    /// Sets the configured mailboxes (at start and after each reload); leases of removed
    /// ones are released at the next heartbeat.
    pub fn set_configured(&self, mailboxes: &[Arc<MailboxConfig>]) {
        self.configured.store(Arc::new(mailboxes.to_vec()));
        self.rows_missing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Heartbeats until cancelled, publishing the mailboxes held after each one.
    pub async fn run(self: Arc<Self>, owned: watch::Sender<Owned>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first heartbeat only announces this replica: replicas starting together then see
        // each other before anyone claims, and split the mailboxes at once.
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.round(first).await {
                tracing::warn!(error = %e, replica = self.replica(), "Could not reach the store for the lease heartbeat; mailboxes stop before their leases can expire unless it answers.");
            }
            first = false;
            for lost in self.fence.expire(tokio::time::Instant::now()) {
                tracing::warn!(mailbox = %lost, "The lease could not be renewed in time; the mailbox stops here.");
            }
            let held: Owned = self.fence.held().into_keys().collect();
            owned.send_if_modified(|current| {
                let changed = *current != held;
                if changed {
                    *current = held;
                }
                changed
            });
        }
    }

    /// One heartbeat: membership, renewal, then claims or releases towards the fair share.
    async fn round(&self, announce_only: bool) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let ttl = self.config.lease_ttl;
        let configured: Vec<MailboxAddress> = self.configured.load().iter().map(|m| m.address.clone()).collect();
        self.store.heartbeat(now).await?;
        if self.rows_missing.swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = self.store.ensure_leases(&configured).await
        {
            self.rows_missing.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
        self.store.renew(now, ttl).await?;
        let wanted: HashSet<&MailboxAddress> = configured.iter().collect();
        let held: Vec<MailboxAddress> = self.fence.held().into_keys().collect();
        let removed: Vec<MailboxAddress> = held.iter().filter(|m| !wanted.contains(m)).cloned().collect();
        if !removed.is_empty() {
            self.store.release(&removed).await?;
            tracing::info!(
                mailboxes = removed.len(),
                "Released the leases of mailboxes removed from the configuration."
            );
        }
        if !announce_only {
            let live = self.store.live_replicas(now, ttl).await?;
            let share = fair_share(configured.len(), &live, self.replica());
            let holding = held.len() - removed.len();
            if holding > share {
                let mut surplus: Vec<MailboxAddress> = held.into_iter().filter(|m| wanted.contains(m)).collect();
                surplus.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                surplus.truncate((holding - share).min(moves_per_round(share)));
                // The supervisor stops these mailboxes when it sees them gone from the owned set;
                // until then any write they attempt is refused by the fence.
                let n = self.store.release(&surplus).await?;
                tracing::info!(
                    released = n,
                    share,
                    live = live.len(),
                    "Gave up leases towards an even split."
                );
            } else if holding < share {
                let grants = self.store.claim(&configured, now, ttl, share - holding).await?;
                let handovers = grants.iter().filter(|g| g.epoch > 1).count();
                self.metrics.lease_handovers.inc_by(handovers as u64);
                if !grants.is_empty() {
                    tracing::info!(
                        claimed = grants.len(),
                        handovers,
                        share,
                        live = live.len(),
                        "Claimed mailbox leases."
                    );
                }
            }
        }
        let counts = self.store.lease_counts(&configured, now).await?;
        for (state, n) in [("held", counts.held), ("other", counts.other), ("free", counts.free)] {
            self.metrics
                .leases
                .get_or_create(&vec![("state", state.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Gives every lease up and leaves the membership (after the mailboxes stopped, at
    /// shutdown), so the other replicas take over at their next heartbeat.
    pub async fn leave(&self) {
        let held: Vec<MailboxAddress> = self.fence.held().into_keys().collect();
        match self.store.release(&held).await {
            Ok(n) => tracing::info!(released = n, "Released this replica's mailbox leases."),
            Err(e) => tracing::warn!(error = %e, "Could not release the leases; they expire after cluster.lease_ttl."),
        }
        if let Err(e) = self.store.leave().await {
            tracing::warn!(error = %e, "Could not leave the replica membership; it lapses after cluster.lease_ttl.");
        }
    }

    /// Wakes the mailboxes other replicas ask about (a consent completed or a replay was asked
    /// for there), if this replica runs them.
    pub async fn forward_wakes(
        self: Arc<Self>,
        registry: crate::mailbox::supervisor::Registry,
        cancel: CancellationToken,
    ) {
        let mut backoff = std::time::Duration::from_secs(1);
        loop {
            let mut listener = match self.store.wake_listener().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen for wake-ups from other replicas; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                    continue;
                }
            };
            backoff = std::time::Duration::from_secs(1);
            loop {
                let next = tokio::select! {
                    n = listener.recv() => n,
                    _ = cancel.cancelled() => return,
                };
                match next {
                    Ok(n) => {
                        let Some((why, mailbox)) = Wake::parse(n.payload()) else {
                            continue;
                        };
                        if !self.fence.holds(&mailbox) {
                            continue;
                        }
                        let ctx = registry.load().get(&mailbox).cloned();
                        if let Some(ctx) = ctx {
                            // A new grant stored elsewhere: forget a cached failure of the old one.
                            if let (Wake::Grant, crate::auth::TokenSource::Delegated(tokens)) = (why, &ctx.tokens) {
                                tokens.reset().await;
                            }
                            ctx.replay_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                            ctx.wake.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Lost the wake-up listener; reconnecting.");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
