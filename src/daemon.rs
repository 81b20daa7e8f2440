//! The daemon's wiring: builds every part from the config, serves the API, starts the
//! supervisor, the sender and each part's background tasks, applies reloads, and drains on
//! shutdown within the grace period.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::auth::AppTokens;
use crate::auth::seal::Sealer;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::domain::{AppName, MailboxAddress};
use crate::graph::Graph;
use crate::mailbox::supervisor::{Deps, Supervisor, build_apps};
use crate::mailbox::{self, StatusBoard};
use crate::metrics::Metrics;
use crate::outbound::Outbox;
use crate::sink::Sink;
use crate::store::{self, Store};

/// A built daemon, listening, not yet polling.
pub struct Daemon {
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    sink: Arc<Sink>,
    graph: Arc<Graph>,
    apps: HashMap<AppName, Arc<AppTokens>>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    sealer: Option<Arc<Sealer>>,
    /// The file to reload from on SIGHUP or change (None: no reload).
    config_path: Option<PathBuf>,
    /// Reply requests read from a broker (`[intake]`), checked at start.
    intake: Option<Arc<crate::intake::Source>>,
    /// Leases, when the store is shared (Postgres).
    cluster: Option<Arc<Cluster>>,
}

/// A background task's future, boxed so differently typed tasks share one supervisor helper.
type BoxTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Daemon {
    /// Opens the store and the sink, builds token caches, binds the API port.
    pub async fn build(config: Config) -> anyhow::Result<Daemon> {
        let metrics = Metrics::new();
        let http = crate::http::client(&config)?;
        let (store, cluster): (Arc<dyn Store>, _) = match store::open_backend(&config.store.url)
            .await
            .context("opening the store")?
        {
            store::Backend::Sqlite(s) => (Arc::new(s), None),
            store::Backend::Postgres(pg) => {
                // Every write about a mailbox is fenced by this replica's lease on it.
                let fence = Arc::new(store::postgres::Fence::new(
                    config.cluster.replica_id.clone(),
                    metrics.fencing_rejections.clone(),
                ));
                let pg = pg.fenced(fence.clone());
                let cluster = Cluster::new(pg.clone(), fence, config.cluster.clone(), metrics.clone());
                cluster.set_configured(&config.mailboxes);
                tracing::info!(
                    replica = cluster.replica(),
                    "Shared store: this replica runs the mailboxes whose leases it holds."
                );
                (Arc::new(pg), Some(cluster))
            }
        };
        let sink = Arc::new(
            Sink::open(&config.sink, http.clone(), &metrics)
                .await
                .context("opening the sink")?,
        );
        let graph = Arc::new(Graph::new(
            http.clone(),
            &config.microsoft.graph_url,
            config.microsoft.request_timeout,
            metrics.clone(),
        ));
        let apps = build_apps(&config, &http, &metrics).map_err(anyhow::Error::msg)?;
        let board = StatusBoard::new(metrics.clone(), store.clone(), sink.clone());
        let intake = match &config.intake {
            Some(c) => Some(Arc::new(
                crate::intake::Source::open(c).await.map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        let sealer = config
            .store
            .encryption_key
            .as_ref()
            .map(|k| Arc::new(Sealer::with_previous(k, &config.store.previous_encryption_keys)));
        if let Some(sealer) = sealer.as_ref().filter(|s| s.has_previous()) {
            let delegated: Vec<MailboxAddress> = config
                .mailboxes
                .iter()
                .filter(|m| m.access == crate::config::Access::Delegated)
                .map(|m| m.address.clone())
                .collect();
            match crate::auth::reseal(store.as_ref(), sealer, &delegated).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    tokens = n,
                    "Re-sealed refresh tokens with the current store.encryption_key."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not re-seal refresh tokens; each is re-sealed at its next refresh.")
                }
            }
        }
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        Ok(Daemon {
            config,
            listener,
            store,
            sink,
            graph,
            apps,
            board,
            metrics,
            http,
            sealer,
            config_path: None,
            intake,
            cluster,
        })
    }

    /// Reload the configuration from `path` on SIGHUP and whenever the file changes.
    pub fn reload_from(mut self, path: PathBuf) -> Daemon {
        self.config_path = Some(path);
        self
    }

    /// The bound API address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Runs until `shutdown` resolves, then drains: readiness fails at once, polling stops
    /// at the next page boundary, in-flight deliveries and sends finish within `shutdown_grace`.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let root = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let bound = self.local_addr();
        let expiries = expiries(&self.config, &self.apps);
        let notifications = crate::mailbox::notify::Notifications::new(
            &self.config,
            bound,
            self.store.clone(),
            self.sealer.clone(),
            self.metrics.clone(),
        );
        let deps = Deps {
            graph: self.graph.clone(),
            store: self.store.clone(),
            sink: self.sink.clone(),
            board: self.board.clone(),
            metrics: self.metrics.clone(),
            sealer: self.sealer.clone(),
            http: self.http.clone(),
            bound,
            ingest: Arc::new(crate::mailbox::IngestBudget::new(self.config.microsoft.in_flight_bytes)),
            notifications: notifications.clone(),
            fence: self.cluster.as_ref().map(|c| c.fence().clone()),
        };
        // What the rest needs of the configuration, taken before the supervisor gets it whole
        // (one copy of every mailbox's settings, not two).
        let outbound_config = self.config.outbound.clone();
        let redirect_uri = self.config.server.redirect_uri(bound);
        let limits = api::serve::Limits {
            header_timeout: self.config.server.header_timeout,
            max_connections: self.config.server.max_connections,
        };
        let mailbox_count = self.config.mailboxes.len();
        let delegated: Vec<MailboxAddress> = self
            .config
            .mailboxes
            .iter()
            .filter(|m| m.access == crate::config::Access::Delegated)
            .map(|m| m.address.clone())
            .collect();
        let mut supervisor = Supervisor::new(deps, self.config, self.apps, root.clone());
        if self.cluster.is_some() {
            supervisor.run_only_owned();
        }
        supervisor.start_all().await;
        let outbox = Outbox::new(
            self.store.clone(),
            self.sink.clone(),
            supervisor.registry(),
            self.board.clone(),
            self.http.clone(),
            self.metrics.clone(),
            outbound_config,
        );
        let state = ApiState {
            board: self.board.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            ready: ready.clone(),
            api_tokens: supervisor.api_tokens.clone(),
            outbox: outbox.clone(),
            mailboxes: supervisor.registry(),
            graph: self.graph.clone(),
            sealer: self.sealer.clone(),
            redirect_uri,
            consent_limiter: Arc::new(api::limit::PerClient::new(20, 0.5)),
            cluster: self.cluster.clone(),
        };
        // Not under `root`: the API keeps answering (readiness 503) while mailboxes drain.
        let server_stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = server_stop.clone();
            let mut router = api::router(state);
            if let Some(n) = &notifications {
                // Open like `/oauth/*`: Graph sends no bearer token; clientState authenticates.
                router = router.merge(crate::mailbox::notify::router(n.clone()));
            }
            let listener = self.listener;
            api::serve::serve(listener, router, limits, stop)
        });
        let tasks = TaskTracker::new();
        // Every background task is supervised: a panic is logged, counted and restarted.
        let supervised = |task: &'static str,
                          cancel: CancellationToken,
                          make: Box<dyn FnMut(CancellationToken) -> BoxTask + Send>| {
            let metrics = self.metrics.clone();
            let mut make = make;
            async move {
                crate::task::supervise(
                    task,
                    task,
                    &metrics,
                    cancel.clone(),
                    || make(cancel.clone()),
                    |_| async {},
                )
                .await
            }
        };
        if let Some(source) = self.intake.clone() {
            let intake = Arc::new(crate::intake::Intake {
                outbox: outbox.clone(),
                board: self.board.clone(),
            });
            tasks.spawn(supervised(
                "intake",
                root.child_token(),
                Box::new(move |cancel| {
                    let (source, intake) = (source.clone(), intake.clone());
                    Box::pin(async move { source.run(intake, cancel).await })
                }),
            ));
        }
        tasks.spawn(supervised(
            "sender",
            root.child_token(),
            Box::new(move |cancel| Box::pin(outbox.clone().run(cancel))),
        ));
        tasks.spawn(supervised(
            "credential_expiry",
            root.child_token(),
            Box::new(move |cancel| Box::pin(crate::auth::watch_expiry(expiries.clone(), cancel))),
        ));
        let store = self.store.clone();
        tasks.spawn(supervised(
            "prune_delivered",
            root.child_token(),
            Box::new(move |cancel| {
                Box::pin(store::prune_delivered_keys(
                    store.clone(),
                    mailbox::KEY_RETENTION,
                    mailbox::RESYNC_MARGIN,
                    cancel,
                ))
            }),
        ));
        let store = self.store.clone();
        tasks.spawn(supervised(
            "refresh_inactivity",
            root.child_token(),
            Box::new(move |cancel| {
                Box::pin(crate::auth::watch_refresh_inactivity(
                    store.clone(),
                    delegated.clone(),
                    cancel,
                ))
            }),
        ));
        // Leases: the heartbeat publishes what this replica holds; the loop below applies it.
        let (owned_tx, mut owned_rx) = tokio::sync::watch::channel(crate::cluster::Owned::new());
        if let Some(cluster) = self.cluster.clone() {
            let heartbeat = cluster.clone();
            let owned_tx = owned_tx.clone();
            tasks.spawn(supervised(
                "lease_heartbeat",
                root.child_token(),
                Box::new(move |cancel| Box::pin(heartbeat.clone().run(owned_tx.clone(), cancel))),
            ));
            let registry = supervisor.registry();
            tasks.spawn(supervised(
                "wake_listener",
                root.child_token(),
                Box::new(move |cancel| Box::pin(cluster.clone().forward_wakes(registry.clone(), cancel))),
            ));
        }
        drop(owned_tx);
        let mut leases_open = self.cluster.is_some();
        let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
        if let Some(path) = self.config_path.clone() {
            tasks.spawn(supervised(
                "config_watch",
                root.child_token(),
                Box::new(move |cancel| Box::pin(crate::config::watch_config(path.clone(), reload_tx.clone(), cancel))),
            ));
        }
        tasks.close();
        ready.store(true, Ordering::Relaxed);
        tracing::info!(mailboxes = mailbox_count, listen = %bound, "Daemon started.");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = reload_rx.recv() => {
                    if let Some(path) = &self.config_path {
                        supervisor.reload_file(path, &self.metrics).await;
                        if let Some(cluster) = &self.cluster {
                            cluster.set_configured(&supervisor.config().mailboxes);
                        }
                    }
                }
                changed = owned_rx.changed(), if leases_open => match changed {
                    Ok(()) => {
                        let owned = owned_rx.borrow_and_update().clone();
                        supervisor.set_owned(owned).await;
                    }
                    Err(_) => leases_open = false,
                },
            }
        }
        ready.store(false, Ordering::Relaxed);
        let grace = supervisor.config().server.shutdown_grace;
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "Shutting down: finishing in-flight deliveries and sends."
        );
        let deadline = tokio::time::Instant::now() + grace;
        supervisor.drain(grace).await;
        if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                "Shutdown grace period over while an outbound send was in flight; it resumes after restart."
            );
        }
        if let Some(cluster) = &self.cluster {
            // Mailboxes and sends stopped here: the other replicas may take over at once.
            cluster.leave().await;
        }
        server_stop.cancel();
        let _ = server.await;
        tracing::info!("Daemon stopped.");
        Ok(())
    }
}

/// Each app's credential expiry (configured for secrets, read from certificates).
fn expiries(config: &Config, apps: &HashMap<AppName, Arc<AppTokens>>) -> Vec<(String, time::OffsetDateTime)> {
    config
        .apps
        .iter()
        .filter_map(|a| {
            let cert = apps.get(&a.name).and_then(|t| t.endpoint().certificate_not_after());
            a.secret_expires_at.or(cert).map(|at| (a.name.0.clone(), at))
        })
        .collect()
}
