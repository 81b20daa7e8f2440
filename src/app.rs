//! The supervisor: builds every part from the config, runs one task per mailbox under a
//! cancellation tree, serves the API, and drains on shutdown within the grace period.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::auth::seal::Sealer;
use crate::auth::{AppTokens, DelegatedTokens, TokenEndpoint, TokenSource};
use crate::config::{Access, Config};
use crate::domain::{AppName, MailboxAddress};
use crate::graph::{Graph, MailboxGate};
use crate::mailbox::{self, MailboxCtx, StatusBoard};
use crate::metrics::Metrics;
use crate::outbound::Outbox;
use crate::sink::Sink;
use crate::store::{self, Store};

/// A built daemon, listening, not yet polling.
pub struct App {
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    sink: Arc<Sink>,
    graph: Arc<Graph>,
    tokens: HashMap<AppName, Arc<AppTokens>>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    /// Client for upload URLs (same TLS settings, no Graph token).
    upload: reqwest::Client,
    /// When each app's credential expires (for warnings ahead of time).
    expiries: Vec<(String, time::OffsetDateTime)>,
    /// Seals refresh tokens (None without `store.encryption_key`; config refuses delegated mailboxes then).
    sealer: Option<Arc<Sealer>>,
}

/// The HTTP client for Microsoft: rustls, the extra root of `microsoft.ca_file` if any.
pub fn http_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("inboxd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(config.microsoft.request_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60));
    if let Some(path) = &config.microsoft.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("microsoft.ca_file: cannot read {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("microsoft.ca_file: {} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

impl App {
    /// Opens the store and the sink, builds token caches, binds the API port.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let metrics = Metrics::new();
        let http = http_client(&config)?;
        let store = store::open(&config.store.url).await.context("opening the store")?;
        let sink = Arc::new(
            Sink::open(&config.sink, http.clone())
                .await
                .context("opening the sink")?,
        );
        let graph = Arc::new(Graph::new(
            http.clone(),
            &config.microsoft.graph_url,
            config.microsoft.request_timeout,
            metrics.clone(),
        ));
        let mut tokens = HashMap::new();
        let mut expiries = Vec::new();
        for app in &config.apps {
            let endpoint = TokenEndpoint::new(app, &config.microsoft.authority_host, http.clone(), metrics.clone())
                .map_err(anyhow::Error::msg)?;
            let expiry = app.secret_expires_at.or(endpoint.certificate_not_after());
            if let Some(at) = expiry {
                metrics
                    .credential_expiry
                    .get_or_create(&vec![("app", app.name.0.clone())])
                    .set(at.unix_timestamp() as f64);
                expiries.push((app.name.0.clone(), at));
            }
            tokens.insert(app.name.clone(), Arc::new(AppTokens::new(Arc::new(endpoint))));
        }
        let board = StatusBoard::new(metrics.clone(), store.clone(), sink.clone());
        let config_sealer = config.store.encryption_key.as_ref().map(|k| Arc::new(Sealer::new(k)));
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        Ok(App {
            config,
            listener,
            store,
            sink,
            graph,
            tokens,
            board,
            metrics,
            upload: http,
            sealer: config_sealer,
            expiries,
        })
    }

    /// The bound API address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Runs until `shutdown` resolves, then drains: readiness fails at once, polling stops
    /// at the next page boundary, in-flight deliveries finish within `shutdown_grace`.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let root = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let bound = self.local_addr();
        // One context per enabled mailbox: the poller and the sender share its gate and tokens.
        let mut contexts: HashMap<MailboxAddress, Arc<MailboxCtx>> = HashMap::new();
        for mailbox in &self.config.mailboxes {
            let consent_link =
                (mailbox.access == Access::Delegated).then(|| consent_link(&self.config, bound, &mailbox.address));
            self.board.register(mailbox, consent_link).await;
            let Some(app_tokens) = self.tokens.get(&mailbox.app).filter(|_| mailbox.enabled) else {
                continue;
            };
            let tokens = match (mailbox.access, &self.sealer) {
                (Access::Delegated, Some(sealer)) => TokenSource::Delegated(Arc::new(DelegatedTokens::new(
                    mailbox.address.clone(),
                    app_tokens.endpoint().clone(),
                    self.store.clone(),
                    sealer.clone(),
                ))),
                _ => TokenSource::App(app_tokens.clone()),
            };
            let fallback = mailbox.fallback_app.as_ref().and_then(|name| {
                self.tokens
                    .get(name)
                    .map(|t| (name.0.clone(), TokenSource::App(t.clone())))
            });
            let ctx = Arc::new(MailboxCtx {
                config: mailbox.clone(),
                graph: self.graph.clone(),
                current: arc_swap::ArcSwap::from_pointee(tokens.clone()),
                tokens,
                fallback,
                on_fallback: Default::default(),
                wake: Default::default(),
                gate: MailboxGate::new(mailbox.address.as_str(), mailbox.max_concurrent_requests),
                store: self.store.clone(),
                sink: self.sink.clone(),
                board: self.board.clone(),
                metrics: self.metrics.clone(),
            });
            contexts.insert(mailbox.address.clone(), ctx);
        }
        let outbox = Outbox::new(
            self.store.clone(),
            self.sink.clone(),
            contexts.clone(),
            self.board.clone(),
            self.upload.clone(),
            self.metrics.clone(),
        );
        let state = ApiState {
            board: self.board.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            ready: ready.clone(),
            api_tokens: Arc::new(self.config.server.api_tokens.clone()),
            outbox: outbox.clone(),
            mailboxes: Arc::new(contexts.clone()),
            graph: self.graph.clone(),
            sealer: self.sealer.clone(),
            redirect_uri: redirect_uri(&self.config, bound),
        };
        // Not under `root`: the API keeps answering (readiness 503) while mailboxes drain.
        let server_stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = server_stop.clone();
            let router = api::router(state);
            let listener = self.listener;
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
        });
        let tasks = TaskTracker::new();
        // Mailboxes still running, so a drain that runs out of time can name them.
        let running: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        for (address, ctx) in contexts {
            let cancel = root.child_token();
            let address = address.to_string();
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(address.clone());
            let running = running.clone();
            tasks.spawn(async move {
                mailbox::run(ctx, cancel).await;
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&address);
            });
        }
        tasks.spawn(outbox.run(root.child_token()));
        tasks.spawn(crate::auth::watch_expiry(self.expiries.clone(), root.child_token()));
        tasks.spawn(prune_delivered(self.store.clone(), root.child_token()));
        tasks.close();
        ready.store(true, Ordering::Relaxed);
        tracing::info!(mailboxes = self.config.mailboxes.len(), listen = %self.config.server.listen, "Daemon started.");
        shutdown.await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!(
            grace_seconds = self.config.server.shutdown_grace.as_secs_f64(),
            "Shutting down: finishing in-flight deliveries."
        );
        root.cancel();
        if tokio::time::timeout(self.config.server.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tasks.len(),
                "Shutdown grace period over; stopping mailboxes that were still delivering (their rounds resume after restart)."
            );
        }
        server_stop.cancel();
        let _ = server.await;
        tracing::info!("Daemon stopped.");
        Ok(())
    }
}

/// Keeps the delivered-keys table bounded: keys older than the resync window plus a day go.
async fn prune_delivered(store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let before = time::OffsetDateTime::now_utc() - mailbox::RESYNC_WINDOW - time::Duration::days(1);
        match store.prune_delivered(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "Pruned old delivered keys."),
            Err(e) => tracing::warn!(error = %e, "Pruning delivered keys failed; will retry in an hour."),
        }
    }
}

/// Where the sign-in service sends the browser back: `{server.public_url}/oauth/callback`
/// (without a public URL, the listen address, which only works on the daemon's own host).
pub fn redirect_uri(config: &Config, bound: SocketAddr) -> String {
    match &config.server.public_url {
        Some(u) => format!("{}/oauth/callback", u.as_str().trim_end_matches('/')),
        None => format!("http://{bound}/oauth/callback"),
    }
}

/// The stable consent link shown for a mailbox: it starts a fresh flow each time it is opened.
fn consent_link(config: &Config, bound: SocketAddr, mailbox: &MailboxAddress) -> String {
    let base = redirect_uri(config, bound);
    let base = base.trim_end_matches("/oauth/callback");
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("mailbox", mailbox.as_str())
        .finish();
    format!("{base}/oauth/start?{query}")
}
