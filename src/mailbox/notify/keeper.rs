//! One mailbox's subscriptions, one per configured folder: reused from the store after a
//! restart, created when missing, renewed at half their remaining lifetime, reauthorized or
//! created again on lifecycle events. While every folder is subscribed the mailbox polls only
//! every `safety_poll_interval`; otherwise it falls back to its `poll_interval` and says why.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::calls::{self, Created};
use super::{Lifecycle, Notifications, Route};
use crate::graph::CallError;
use crate::mailbox::{MailboxCtx, NotificationsView};
use crate::store::SubscriptionRecord;

/// First wait before trying again to subscribe a folder that could not be; doubled up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Longest wait between attempts to subscribe a folder.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// A stored subscription closer than this to its expiry is replaced rather than reused.
const REUSE_MARGIN: time::Duration = time::Duration::minutes(1);

/// One folder's subscription state.
struct Folder {
    /// The folder as configured.
    name: String,
    /// The live subscription: id, expiry, when to renew.
    live: Option<(String, OffsetDateTime, Instant)>,
    /// Not before this, try to subscribe again.
    retry_at: Instant,
    /// The next wait after a failure.
    retry_in: Duration,
    /// Why it has no subscription.
    trouble: Option<String>,
    /// Its state in `inboxd_subscriptions`.
    state: &'static str,
}

/// The context the seal of a clientState is bound to.
fn seal_context(ctx: &MailboxCtx, folder: &str) -> String {
    format!("subscription:{}:{folder}", ctx.config.address)
}

/// A fresh random clientState (32 random bytes, hex: 64 characters of Graph's 128).
fn new_client_state() -> SecretString {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// When to renew: at half the remaining lifetime.
fn renew_at(expires_at: OffsetDateTime) -> Instant {
    let left = (expires_at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    let half = Duration::try_from(left / 2).unwrap_or(Duration::ZERO);
    Instant::now() + half
}

/// Why a call failed, for the status and the log.
fn describe(e: &CallError) -> String {
    let hint = match e {
        CallError::Graph(g) if g.status == Some(403) => {
            "the app may not subscribe to this mailbox (Mail.Read and the mailbox's access scope)"
        }
        CallError::Graph(g) if g.message.contains("validation") || g.message.contains("Validation") => {
            "Graph cannot reach notifications.public_url (check that it is public and routes to /graph/notifications)"
        }
        _ => "inboxd tries again later",
    };
    format!("{e}: {hint}")
}

struct Keeper<'a> {
    hub: &'a Arc<Notifications>,
    ctx: &'a Arc<MailboxCtx>,
    events: mpsc::Sender<Lifecycle>,
    folders: Vec<Folder>,
    /// Whether the last published view was the safety poll.
    healthy: bool,
}

/// Keeps the mailbox's subscriptions until cancelled (left alive for the next start).
pub(super) async fn keep(hub: Arc<Notifications>, ctx: Arc<MailboxCtx>, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel(64);
    let now = Instant::now();
    let mut k = Keeper {
        hub: &hub,
        ctx: &ctx,
        events: tx,
        folders: ctx
            .config
            .folders
            .iter()
            .map(|f| Folder {
                name: f.clone(),
                live: None,
                retry_at: now,
                retry_in: FIRST_RETRY,
                trouble: None,
                state: "pending",
            })
            .collect(),
        healthy: false,
    };
    for f in &k.folders {
        k.hub
            .metrics
            .subscriptions
            .get_or_create(&vec![("state", f.state.to_string())])
            .inc();
    }
    k.publish();
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = k.run(&mut rx) => {}
    }
    for f in &k.folders {
        k.hub
            .metrics
            .subscriptions
            .get_or_create(&vec![("state", f.state.to_string())])
            .dec();
        if let Some((id, _, _)) = &f.live {
            k.hub.unroute(id);
        }
    }
    ctx.poll_override.store(0, Ordering::Relaxed);
}

impl Keeper<'_> {
    async fn run(&mut self, rx: &mut mpsc::Receiver<Lifecycle>) {
        self.adopt_stored().await;
        loop {
            self.work().await;
            self.publish();
            let next = self
                .folders
                .iter()
                .map(|f| match &f.live {
                    Some((_, _, at)) => *at,
                    None => f.retry_at,
                })
                .min()
                .unwrap_or_else(|| Instant::now() + MAX_RETRY);
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => self.lifecycle(event).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Reuses what the store holds (after checking Graph still has it); deletes subscriptions
    /// of folders no longer configured, or made for another notification URL.
    async fn adopt_stored(&mut self) {
        let address = &self.ctx.config.address;
        let stored = match self.hub.store.subscriptions(address).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(mailbox = %address, error = %e, "Could not read stored subscriptions; creating new ones.");
                return;
            }
        };
        for record in stored {
            let index = self.folders.iter().position(|f| f.name == record.folder);
            let fresh = record.expires_at > OffsetDateTime::now_utc() + REUSE_MARGIN;
            let same_url = record.notification_url == self.hub.notification_url;
            let secret = self
                .hub
                .sealer
                .open(&seal_context(self.ctx, &record.folder), &record.sealed_client_state);
            match (index, secret) {
                (Some(i), Some(secret)) if fresh && same_url => match calls::read(self.ctx, &record.id).await {
                    Ok(_) => {
                        tracing::info!(mailbox = %address, folder = %record.folder, subscription = %record.id, "Reusing the stored subscription.");
                        self.adopt(i, record.id.clone(), record.expires_at, secret);
                        continue;
                    }
                    Err(e) if calls::is_gone(&e) => {
                        tracing::info!(mailbox = %address, folder = %record.folder, "The stored subscription is gone at Graph; creating a new one.");
                    }
                    Err(e) => {
                        // Unknown yet: keep it; the next renewal tells.
                        tracing::info!(mailbox = %address, folder = %record.folder, error = %e, "Could not check the stored subscription; keeping it until its renewal.");
                        self.adopt(i, record.id.clone(), record.expires_at, secret);
                        continue;
                    }
                },
                _ => {
                    if let Err(e) = calls::delete(self.ctx, &record.id).await {
                        tracing::info!(mailbox = %address, folder = %record.folder, error = %e, "Could not delete an outdated subscription; it expires by itself.");
                    }
                }
            }
            if let Err(e) = self.hub.store.delete_subscription(address, &record.folder).await {
                tracing::warn!(mailbox = %address, error = %e, "Could not forget an outdated subscription.");
            }
        }
    }

    /// Makes `id` the folder's live subscription and routes its notifications.
    fn adopt(&mut self, i: usize, id: String, expires_at: OffsetDateTime, client_state: SecretString) {
        self.hub.route(
            &id,
            Route {
                ctx: self.ctx.clone(),
                client_state,
                events: self.events.clone(),
            },
        );
        let f = &mut self.folders[i];
        f.live = Some((id, expires_at, renew_at(expires_at)));
        f.trouble = None;
        f.retry_in = FIRST_RETRY;
        self.set_state(i, "active");
    }

    /// Drops the folder's subscription (gone or failed); it is created again at once.
    fn drop_live(&mut self, i: usize) {
        if let Some((id, _, _)) = self.folders[i].live.take() {
            self.hub.unroute(&id);
        }
        self.folders[i].retry_at = Instant::now();
        self.set_state(i, "pending");
    }

    fn set_state(&mut self, i: usize, state: &'static str) {
        let f = &mut self.folders[i];
        if f.state != state {
            let gauge = &self.hub.metrics.subscriptions;
            gauge.get_or_create(&vec![("state", f.state.to_string())]).dec();
            gauge.get_or_create(&vec![("state", state.to_string())]).inc();
            f.state = state;
        }
    }

    /// Creates what is missing and renews what is due.
    async fn work(&mut self) {
        for i in 0..self.folders.len() {
            let now = Instant::now();
            match &self.folders[i].live {
                None if self.folders[i].retry_at <= now => self.create(i).await,
                Some((id, _, at)) if *at <= now => {
                    let id = id.clone();
                    self.renew(i, &id).await;
                    if self.folders[i].live.is_none() {
                        self.create(i).await;
                    }
                }
                _ => {}
            }
        }
    }

    async fn create(&mut self, i: usize) {
        let address = &self.ctx.config.address;
        let folder = self.folders[i].name.clone();
        let secret = new_client_state();
        match calls::create(self.hub, self.ctx, &folder, secret.expose_secret()).await {
            Ok(Created { id, expires_at }) => {
                let record = SubscriptionRecord {
                    mailbox: address.clone(),
                    folder: folder.clone(),
                    id: id.clone(),
                    expires_at,
                    sealed_client_state: self
                        .hub
                        .sealer
                        .seal(&seal_context(self.ctx, &folder), secret.expose_secret()),
                    notification_url: self.hub.notification_url.clone(),
                };
                if let Err(e) = self.hub.store.save_subscription(&record).await {
                    tracing::warn!(mailbox = %address, folder, error = %e, "Could not store the subscription; a restart creates a new one.");
                }
                tracing::info!(mailbox = %address, folder, subscription = %id, "Subscribed to new mail.");
                self.adopt(i, id, expires_at, secret);
                // Mail may have arrived while there was no subscription: catch up.
                self.ctx.wake.notify_one();
            }
            Err(e) => {
                let reason = describe(&e);
                let f = &mut self.folders[i];
                if f.trouble.is_none() {
                    tracing::warn!(mailbox = %address, folder, reason, "Could not subscribe to new mail; the folder is polled at its poll_interval meanwhile.");
                }
                f.trouble = Some(reason);
                f.retry_at = Instant::now() + f.retry_in;
                f.retry_in = (f.retry_in * 2).min(MAX_RETRY);
                self.set_state(i, "fallback");
            }
        }
    }

    /// Renews; a subscription Graph no longer has, or that cannot be renewed, is dropped.
    async fn renew(&mut self, i: usize, id: &str) {
        let address = &self.ctx.config.address;
        match calls::renew(self.hub, self.ctx, id).await {
            Ok(Created { expires_at, .. }) => {
                if let Some(live) = &mut self.folders[i].live {
                    live.1 = expires_at;
                    live.2 = renew_at(expires_at);
                }
                self.save_expiry(i, id, expires_at).await;
                tracing::debug!(mailbox = %address, subscription = id, "Subscription renewed.");
            }
            Err(e) => {
                tracing::info!(mailbox = %address, subscription = id, error = %e, "Renewing the subscription failed; creating a new one.");
                if !calls::is_gone(&e) {
                    let _ = calls::delete(self.ctx, id).await;
                }
                self.drop_live(i);
            }
        }
    }

    /// Rewrites the stored expiry of a renewed subscription.
    async fn save_expiry(&self, i: usize, id: &str, expires_at: OffsetDateTime) {
        let address = &self.ctx.config.address;
        let Ok(stored) = self.hub.store.subscriptions(address).await else {
            return;
        };
        let folder = &self.folders[i].name;
        if let Some(mut record) = stored.into_iter().find(|r| &r.folder == folder && r.id == id) {
            record.expires_at = expires_at;
            if let Err(e) = self.hub.store.save_subscription(&record).await {
                tracing::warn!(mailbox = %address, error = %e, "Could not store the renewed expiry.");
            }
        }
    }

    async fn lifecycle(&mut self, event: Lifecycle) {
        let id = match &event {
            Lifecycle::Reauthorize(id) | Lifecycle::Removed(id) => id.clone(),
        };
        let Some(i) = self
            .folders
            .iter()
            .position(|f| f.live.as_ref().is_some_and(|(live, _, _)| *live == id))
        else {
            return;
        };
        let address = &self.ctx.config.address;
        match event {
            Lifecycle::Reauthorize(_) => match calls::reauthorize(self.ctx, &id).await {
                Ok(()) => tracing::info!(mailbox = %address, subscription = %id, "Subscription reauthorized."),
                Err(e) => {
                    tracing::info!(mailbox = %address, subscription = %id, error = %e, "Reauthorizing failed; renewing instead.");
                    self.renew(i, &id).await;
                }
            },
            Lifecycle::Removed(_) => {
                tracing::info!(mailbox = %address, subscription = %id, "Graph removed the subscription; creating a new one.");
                self.drop_live(i);
            }
        }
    }

    /// Sets the poll interval in force and the mailbox's view; wakes the mailbox when it falls
    /// back, so that its shorter interval applies at once.
    fn publish(&mut self) {
        let all_live = self.folders.iter().all(|f| f.live.is_some());
        let pending = self.folders.iter().any(|f| f.live.is_none() && f.trouble.is_none());
        let interval = if all_live {
            self.hub.config.safety_poll_interval
        } else {
            self.ctx.config.poll_interval
        };
        let millis = if all_live {
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1)
        } else {
            0
        };
        self.ctx.poll_override.store(millis, Ordering::Relaxed);
        let reason = self
            .folders
            .iter()
            .filter_map(|f| f.trouble.as_ref().map(|t| format!("folder {}: {t}", f.name)))
            .collect::<Vec<_>>();
        let view = NotificationsView {
            state: if all_live {
                "active"
            } else if pending {
                "pending"
            } else {
                "fallback"
            },
            reason: (!reason.is_empty()).then(|| reason.join("; ")),
            poll_interval_seconds: interval.as_secs_f64(),
        };
        let address = &self.ctx.config.address;
        if self.ctx.board.set_notifications(address, view) {
            self.hub
                .metrics
                .poll_interval
                .get_or_create(&vec![("mailbox", address.to_string())])
                .set(interval.as_secs_f64());
        }
        if self.healthy && !all_live {
            self.ctx.wake.notify_one();
        }
        self.healthy = all_live;
    }
}

/// Deletes every subscription of a mailbox removed from the configuration, at Graph and in
/// the store.
pub(super) async fn unsubscribe_all(hub: &Arc<Notifications>, ctx: &Arc<MailboxCtx>) {
    let address = &ctx.config.address;
    let stored = hub.store.subscriptions(address).await.unwrap_or_default();
    let mut by_folder: HashMap<String, String> = HashMap::new();
    for r in stored {
        by_folder.insert(r.folder, r.id);
    }
    for (folder, id) in by_folder {
        hub.unroute(&id);
        match calls::delete(ctx, &id).await {
            Ok(()) => tracing::info!(mailbox = %address, folder, "Mailbox removed: its subscription was deleted."),
            Err(e) => {
                tracing::info!(mailbox = %address, folder, error = %e, "Mailbox removed: its subscription could not be deleted and expires by itself.")
            }
        }
        if let Err(e) = hub.store.delete_subscription(address, &folder).await {
            tracing::warn!(mailbox = %address, error = %e, "Could not forget a removed mailbox's subscription.");
        }
    }
}
