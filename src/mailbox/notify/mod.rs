//! Graph change notifications as a wake-up, never the data: one subscription per mailbox
//! folder, kept alive by a keeper task per mailbox; the open endpoints `POST
//! /graph/notifications` and `POST /graph/lifecycle` check each notification's clientState
//! and wake the mailbox's delta round at once. Delta stays the only thing that advances the
//! checkpoint; while every folder of a mailbox is subscribed, it is polled only every
//! `notifications.safety_poll_interval`, otherwise at its own `poll_interval`.

mod calls;
mod endpoint;
mod keeper;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use endpoint::router;

use crate::auth::seal::Sealer;
use crate::config::{Config, NotificationsConfig};
use crate::domain::MailboxAddress;
use crate::mailbox::MailboxCtx;
use crate::metrics::Metrics;
use crate::store::Store;

/// A lifecycle event for a mailbox's keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lifecycle {
    /// `reauthorizationRequired`: reauthorize (or renew) the subscription.
    Reauthorize(String),
    /// `subscriptionRemoved`: create it again.
    Removed(String),
}

/// Where a subscription's notifications go.
struct Route {
    /// Its mailbox.
    ctx: Arc<MailboxCtx>,
    /// The secret Graph echoes in every notification.
    client_state: SecretString,
    /// The mailbox keeper's events.
    events: mpsc::Sender<Lifecycle>,
}

/// A running keeper.
struct Keeper {
    ctx: Arc<MailboxCtx>,
    task: JoinHandle<()>,
}

/// Subscriptions of every mailbox and the routing table of the endpoints.
pub struct Notifications {
    /// `[notifications]`.
    config: NotificationsConfig,
    /// `{base}/graph/notifications`.
    notification_url: String,
    /// `{base}/graph/lifecycle`.
    lifecycle_url: String,
    /// Persistence of subscriptions.
    store: Arc<dyn Store>,
    /// Seals clientStates at rest.
    sealer: Arc<Sealer>,
    /// Metrics.
    metrics: Arc<Metrics>,
    /// Subscription id → route; read by every notification.
    routes: RwLock<HashMap<String, Route>>,
    /// The keeper of each mailbox.
    keepers: Mutex<HashMap<MailboxAddress, Keeper>>,
    /// The lifetime cap Graph announced ("can only be N minutes in the future"), minutes; 0: none yet.
    learned_cap_minutes: AtomicU64,
    /// The endpoints' token bucket: (tokens, last refill).
    bucket: Mutex<(f64, std::time::Instant)>,
}

impl Notifications {
    /// The subscriptions manager, or None when `[notifications]` is off (or nothing can seal).
    pub fn new(
        config: &Config,
        bound: SocketAddr,
        store: Arc<dyn Store>,
        sealer: Option<Arc<Sealer>>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Notifications>> {
        let n = &config.notifications;
        if !n.enabled {
            return None;
        }
        let sealer = sealer?;
        let base = match (&n.public_url, &config.server.public_url) {
            (Some(u), _) | (None, Some(u)) => u.as_str().trim_end_matches('/').to_string(),
            (None, None) => format!("http://{bound}"),
        };
        Some(Arc::new(Notifications {
            config: n.clone(),
            notification_url: format!("{base}/graph/notifications"),
            lifecycle_url: format!("{base}/graph/lifecycle"),
            store,
            sealer,
            metrics,
            routes: RwLock::new(HashMap::new()),
            keepers: Mutex::new(HashMap::new()),
            learned_cap_minutes: AtomicU64::new(0),
            bucket: Mutex::new((f64::from(n.rate_limit) * 2.0, std::time::Instant::now())),
        }))
    }

    /// Starts keeping a mailbox's subscriptions (replacing a keeper left from a restart of it);
    /// the keeper survives its own panics like every background task.
    pub fn start(self: &Arc<Self>, ctx: Arc<MailboxCtx>, cancel: CancellationToken) {
        let (hub, mailbox) = (self.clone(), ctx.clone());
        let task = tokio::spawn(async move {
            let metrics = hub.metrics.clone();
            crate::task::supervise(
                "subscriptions",
                mailbox.config.address.as_str(),
                &metrics,
                cancel.clone(),
                || keeper::keep(hub.clone(), mailbox.clone(), cancel.clone()),
                |_| async {},
            )
            .await
        });
        let old = self
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.config.address.clone(), Keeper { ctx, task });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// The mailbox left the configuration: its subscriptions are deleted at Graph and forgotten.
    pub fn remove(self: &Arc<Self>, address: &MailboxAddress) {
        let Some(keeper) = self.keepers.lock().unwrap_or_else(|p| p.into_inner()).remove(address) else {
            return;
        };
        // Its task was cancelled with the mailbox; the subscriptions outlive it until deleted here.
        let hub = self.clone();
        tokio::spawn(async move { keeper::unsubscribe_all(&hub, &keeper.ctx).await });
    }

    /// The lifetime to ask for: the configured one, under the cap Graph announced.
    fn lifetime(&self) -> time::Duration {
        let asked = time::Duration::try_from(self.config.subscription_lifetime).unwrap_or(time::Duration::days(2));
        match self.learned_cap_minutes.load(Ordering::Relaxed) {
            0 => asked,
            cap => asked.min(time::Duration::minutes(cap as i64)),
        }
    }

    /// Adds a subscription's route.
    fn route(&self, id: &str, route: Route) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), route);
    }

    /// Removes a subscription's route.
    fn unroute(&self, id: &str) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Counts one request to the endpoints by outcome.
    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.metrics
                .notifications
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .inc_by(n);
        }
    }

    /// Takes a token from the endpoints' bucket (`rate_limit` per second, twice that in a burst).
    fn admit(&self) -> bool {
        let rate = f64::from(self.config.rate_limit);
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * rate;
        bucket.0 = (bucket.0 + refill).min(rate * 2.0);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }
}
