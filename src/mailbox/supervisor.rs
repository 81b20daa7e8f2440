//! One task per mailbox under the root cancellation token; starts, stops and restarts
//! mailboxes, alone, when a reloaded configuration changes them. On a shared store only the
//! mailboxes whose lease this replica holds run here (see `cluster`); every configured one
//! stays in the registry, so the API (consent, replies) works on any replica.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::seal::Sealer;
use crate::auth::{AppTokens, DelegatedTokens, TokenEndpoint, TokenSource};
use crate::config::{Access, AppConfig, AppCredential, Config, MailboxConfig};
use crate::domain::{AppName, MailboxAddress, MailboxState};
use crate::graph::{Graph, MailboxGate};
use crate::mailbox::{self, MailboxCtx, StatusBoard};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::Store;

/// Every polled mailbox's context, swapped whole on reload; the API and the sender read it.
pub type Registry = Arc<ArcSwap<HashMap<MailboxAddress, Arc<MailboxCtx>>>>;

/// What building mailbox contexts needs.
pub struct Deps {
    /// Graph client.
    pub graph: Arc<Graph>,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Delivery.
    pub sink: Arc<Sink>,
    /// States.
    pub board: Arc<StatusBoard>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Seals refresh tokens.
    pub sealer: Option<Arc<Sealer>>,
    /// Client for the token endpoint.
    pub http: reqwest::Client,
    /// The API's bound address (consent links without `server.public_url`).
    pub bound: SocketAddr,
    /// Pages in memory at once across mailboxes.
    pub ingest: Arc<crate::mailbox::IngestBudget>,
    /// Change-notification subscriptions (None while `[notifications]` is off).
    pub notifications: Option<Arc<crate::mailbox::notify::Notifications>>,
    /// This replica's leases (a shared store): no Graph request for a mailbox without one.
    pub fence: Option<Arc<crate::store::postgres::Fence>>,
}

/// How long a reload waits for a stopped mailbox's round to finish before cutting it off.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Token caches per app registration.
pub fn build_apps(
    config: &Config,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Result<HashMap<AppName, Arc<AppTokens>>, String> {
    let mut apps = HashMap::new();
    for app in &config.apps {
        let endpoint = TokenEndpoint::new(app, &config.microsoft.authority_host, http.clone(), metrics.clone())?;
        if let Some(at) = app.secret_expires_at.or(endpoint.certificate_not_after()) {
            metrics
                .credential_expiry
                .get_or_create(&vec![("app", app.name.0.clone())])
                .set(at.unix_timestamp() as f64);
        }
        apps.insert(app.name.clone(), Arc::new(AppTokens::new(Arc::new(endpoint))));
    }
    Ok(apps)
}

/// Same registration and credential (a changed secret means new tokens).
fn same_app(a: &AppConfig, b: &AppConfig) -> bool {
    let credential = match (&a.credential, &b.credential) {
        (AppCredential::Secret(x), AppCredential::Secret(y))
        | (AppCredential::Certificate(x), AppCredential::Certificate(y)) => x.expose_secret() == y.expose_secret(),
        _ => false,
    };
    credential && a.tenant_id == b.tenant_id && a.client_id == b.client_id && a.secret_expires_at == b.secret_expires_at
}

/// The mailbox tasks.
pub struct Supervisor {
    deps: Deps,
    config: Config,
    apps: HashMap<AppName, Arc<AppTokens>>,
    registry: Registry,
    running: HashMap<MailboxAddress, (CancellationToken, JoinHandle<()>)>,
    /// The mailboxes this replica may run (their leases); None: all (one process).
    owned: Option<HashSet<MailboxAddress>>,
    root: CancellationToken,
    /// Bearer tokens of `/v1`, swapped on reload.
    pub api_tokens: Arc<ArcSwap<crate::config::ApiTokens>>,
}

impl Supervisor {
    /// Loads and applies the file; a bad file changes nothing and is reported at ERROR.
    pub async fn reload_file(&mut self, path: &std::path::Path, metrics: &Metrics) {
        match crate::config::load_file(path) {
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!(key = %e.path, problem = %e.message, "Configuration reload refused; the running configuration stays.");
                }
                metrics.config_reload("invalid");
            }
            Ok(config) => match self.reload(config).await {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "Configuration reloaded.");
                    metrics.config_reload("applied");
                }
                Err(e) => {
                    tracing::error!(problem = %e, "Configuration reload refused; the running configuration stays.");
                    metrics.config_reload("invalid");
                }
            },
        }
    }

    /// A supervisor for `config`; nothing runs until `start_all`.
    pub fn new(
        deps: Deps,
        config: Config,
        apps: HashMap<AppName, Arc<AppTokens>>,
        root: CancellationToken,
    ) -> Supervisor {
        let api_tokens = Arc::new(ArcSwap::from_pointee(config.server.api_tokens.clone()));
        Supervisor {
            deps,
            config,
            apps,
            registry: Registry::default(),
            running: HashMap::new(),
            owned: None,
            root,
            api_tokens,
        }
    }

    /// The registry the API and the sender read.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Builds the context of an enabled mailbox (None for disabled ones or unknown apps).
    fn context(&self, mailbox: &Arc<MailboxConfig>) -> Option<Arc<MailboxCtx>> {
        let app_tokens = self.apps.get(&mailbox.app).filter(|_| mailbox.enabled)?;
        let tokens = match (mailbox.access, &self.deps.sealer) {
            (Access::Delegated, Some(sealer)) => TokenSource::Delegated(Arc::new(DelegatedTokens::new(
                mailbox.address.clone(),
                app_tokens.endpoint().clone(),
                self.deps.store.clone(),
                sealer.clone(),
            ))),
            _ => TokenSource::App(app_tokens.clone()),
        };
        let fallback = mailbox.fallback_app.as_ref().and_then(|name| {
            self.apps
                .get(name)
                .map(|t| (name.0.clone(), TokenSource::App(t.clone())))
        });
        let gate = MailboxGate::new(mailbox.address.as_str(), mailbox.max_concurrent_requests);
        if let Some(fence) = &self.deps.fence {
            let (fence, address) = (fence.clone(), mailbox.address.clone());
            gate.require_lease(move || fence.holds(&address));
        }
        Some(Arc::new(MailboxCtx {
            config: mailbox.clone(),
            graph: self.deps.graph.clone(),
            current: ArcSwap::from_pointee(tokens.clone()),
            tokens,
            fallback,
            on_fallback: Default::default(),
            wake: Default::default(),
            // Replays asked for before a restart are found by the first round.
            replay_pending: std::sync::atomic::AtomicBool::new(true),
            poll_override: Default::default(),
            gate,
            store: self.deps.store.clone(),
            sink: self.deps.sink.clone(),
            board: self.deps.board.clone(),
            metrics: self.deps.metrics.clone(),
            ingest: self.deps.ingest.clone(),
            page_size: Default::default(),
            delta_links: Default::default(),
            filtered_delta_cap: self.config.microsoft.filtered_delta_cap,
        }))
    }

    /// Registers and starts one mailbox.
    async fn start(&mut self, mailbox: &Arc<MailboxConfig>) {
        self.start_many(std::slice::from_ref(mailbox)).await;
    }

    /// Registers and starts mailboxes; the registry is swapped once for all of them (swapping
    /// it per mailbox made starting n mailboxes cost n² copies).
    async fn start_many(&mut self, mailboxes: &[Arc<MailboxConfig>]) {
        let mut map = (**self.registry.load()).clone();
        for mailbox in mailboxes {
            let ctx = self.context(mailbox);
            if let Some(ctx) = &ctx {
                map.insert(mailbox.address.clone(), ctx.clone());
            }
            if self.owned.as_ref().is_none_or(|o| o.contains(&mailbox.address)) {
                // Each task starts as soon as its mailbox is registered: first rounds spread over
                // the start-up instead of all beginning at once (10,000 idle mailboxes peaked at
                // 182 MB that way, 107 MB this way).
                self.run(mailbox, ctx).await;
            }
        }
        self.registry.store(Arc::new(map));
    }

    /// Shows a mailbox on the board and, when enabled, starts its task.
    async fn run(&mut self, mailbox: &MailboxConfig, ctx: Option<Arc<MailboxCtx>>) {
        let link = (mailbox.access == Access::Delegated)
            .then(|| self.config.server.consent_link(self.deps.bound, &mailbox.address));
        self.deps.board.register(mailbox, link).await;
        let Some(ctx) = ctx else { return };
        let cancel = self.root.child_token();
        if let Some(notifications) = &self.deps.notifications {
            notifications.start(ctx.clone(), cancel.child_token());
        }
        let handle = tokio::spawn(supervised_mailbox(ctx, self.deps.metrics.clone(), cancel.clone()));
        self.running.insert(mailbox.address.clone(), (cancel, handle));
    }

    /// Runs exactly the mailboxes whose leases this replica holds now: newly held ones start,
    /// lost or released ones stop (another replica carries on from their checkpoints).
    pub async fn set_owned(&mut self, owned: HashSet<MailboxAddress>) {
        let previous = self.owned.replace(owned.clone()).unwrap_or_default();
        let configured: HashSet<MailboxAddress> = self.config.mailboxes.iter().map(|m| m.address.clone()).collect();
        let gone: Vec<MailboxAddress> = previous
            .difference(&owned)
            .filter(|a| configured.contains(*a))
            .cloned()
            .collect();
        // All cancelled first, then awaited together: a lost lease stops every mailbox at once.
        let stopping: Vec<_> = gone
            .iter()
            .filter_map(|a| {
                self.running
                    .remove(a)
                    .map(|(cancel, handle)| (a.clone(), cancel, handle))
            })
            .collect();
        for (_, cancel, _) in &stopping {
            cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        for (address, _, mut handle) in stopping {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                tracing::warn!(mailbox = %address, "The mailbox did not stop in time after its lease moved; its round was cut off (its writes are refused anyway).");
                handle.abort();
                let _ = handle.await;
            }
        }
        for address in &gone {
            self.deps.board.remove(address);
            if let Some(notifications) = &self.deps.notifications {
                notifications.remove(address);
            }
        }
        let registry = self.registry.load_full();
        let mut started = 0;
        for mailbox in self.config.mailboxes.clone() {
            if owned.contains(&mailbox.address) && !previous.contains(&mailbox.address) {
                self.run(&mailbox, registry.get(&mailbox.address).cloned()).await;
                started += 1;
            }
        }
        if started + gone.len() > 0 {
            tracing::info!(
                started,
                stopped = gone.len(),
                running = self.running.len(),
                "Mailboxes follow this replica's leases."
            );
        }
    }

    /// Limits this supervisor to leased mailboxes, before `start_all` (a shared store).
    pub fn run_only_owned(&mut self) {
        self.owned = Some(HashSet::new());
    }

    /// Stops one mailbox after its current page (its checkpoints stay in the store).
    async fn stop(&mut self, address: &MailboxAddress) {
        let mut map = (**self.registry.load()).clone();
        map.remove(address);
        self.registry.store(Arc::new(map));
        self.halt(address).await;
    }

    /// Stops a mailbox's task, keeping it in the registry.
    async fn halt(&mut self, address: &MailboxAddress) {
        if let Some((cancel, mut handle)) = self.running.remove(address) {
            cancel.cancel();
            // A round stops at its next page; one stuck in Graph retries is cut off rather than
            // holding up the reload (what it had not recorded is delivered again, same keys).
            if tokio::time::timeout(STOP_WAIT, &mut handle).await.is_err() {
                tracing::warn!(mailbox = %address, "The mailbox did not stop within {}s; its round was cut off.", STOP_WAIT.as_secs());
                handle.abort();
                let _ = handle.await;
            }
        }
    }

    /// Starts every configured mailbox.
    pub async fn start_all(&mut self) {
        let mailboxes = self.config.mailboxes.clone();
        self.start_many(&mailboxes).await;
    }

    /// Applies a new, valid configuration: new mailboxes start, removed ones stop, changed
    /// ones (or ones whose app credential changed) restart alone; the rest keep running.
    pub async fn reload(&mut self, new: Config) -> Result<(), String> {
        for (key, old, now) in [
            (
                "server.listen",
                self.config.server.listen.to_string(),
                new.server.listen.to_string(),
            ),
            (
                "store.url",
                crate::store::postgres::redacted(&self.config.store.url),
                crate::store::postgres::redacted(&new.store.url),
            ),
            (
                "cluster",
                format!("{:?}", self.config.cluster),
                format!("{:?}", new.cluster),
            ),
            (
                "microsoft.graph_url",
                self.config.microsoft.graph_url.to_string(),
                new.microsoft.graph_url.to_string(),
            ),
            (
                "microsoft.authority_host",
                self.config.microsoft.authority_host.to_string(),
                new.microsoft.authority_host.to_string(),
            ),
            (
                "sink",
                format!("{:?}", sink_shape(&self.config)),
                format!("{:?}", sink_shape(&new)),
            ),
            (
                "outbound",
                format!("{:?}", self.config.outbound),
                format!("{:?}", new.outbound),
            ),
            (
                "store.encryption_key",
                key_fingerprint(&self.config),
                key_fingerprint(&new),
            ),
        ] {
            if old != now {
                tracing::warn!(
                    key,
                    "This setting changes only with a restart; the reload keeps the running value."
                );
            }
        }
        let fresh = build_apps(&new, &self.deps.http, &self.deps.metrics)?;
        let mut apps = HashMap::new();
        let mut changed_apps = Vec::new();
        for app in &new.apps {
            match self.config.apps.iter().find(|a| a.name == app.name) {
                Some(old) if same_app(old, app) => {
                    apps.insert(app.name.clone(), self.apps[&app.name].clone());
                }
                _ => {
                    changed_apps.push(app.name.clone());
                    apps.insert(app.name.clone(), fresh[&app.name].clone());
                }
            }
        }
        let old_mailboxes: HashMap<MailboxAddress, Arc<MailboxConfig>> = self
            .config
            .mailboxes
            .iter()
            .map(|m| (m.address.clone(), m.clone()))
            .collect();
        let new_addresses: Vec<MailboxAddress> = new.mailboxes.iter().map(|m| m.address.clone()).collect();
        for address in old_mailboxes.keys().filter(|a| !new_addresses.contains(a)) {
            tracing::info!(mailbox = %address, "Mailbox removed from the configuration; stopping it (its checkpoints are kept).");
            self.stop(address).await;
            self.deps.board.remove(address);
            if let Some(notifications) = &self.deps.notifications {
                notifications.remove(address);
            }
        }
        self.apps = apps;
        self.api_tokens.store(Arc::new(new.server.api_tokens.clone()));
        let previous = std::mem::replace(&mut self.config, new);
        let _ = previous;
        for mailbox in self.config.mailboxes.clone() {
            let uses_changed_app = changed_apps.contains(&mailbox.app)
                || mailbox.fallback_app.as_ref().is_some_and(|f| changed_apps.contains(f));
            match old_mailboxes.get(&mailbox.address) {
                Some(old) if *old == mailbox && !uses_changed_app => {}
                Some(_) => {
                    tracing::info!(mailbox = %mailbox.address, "Mailbox configuration changed; restarting it alone.");
                    self.stop(&mailbox.address).await;
                    self.start(&mailbox).await;
                }
                None => {
                    tracing::info!(mailbox = %mailbox.address, "Mailbox added; starting it.");
                    self.start(&mailbox).await;
                }
            }
        }
        Ok(())
    }

    /// Cancels everything and waits up to `grace`; names the mailboxes still running then.
    pub async fn drain(self, grace: Duration) {
        self.root.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        for (address, (_, handle)) in self.running {
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!(mailbox = %address, "Shutdown grace period over while this mailbox was still delivering; its round resumes after restart.");
            }
        }
    }
}

/// A mailbox task that survives its own panics: the mailbox shows `backoff` with the reason and
/// polls again after a pause.
async fn supervised_mailbox(ctx: Arc<MailboxCtx>, metrics: Arc<Metrics>, cancel: CancellationToken) {
    crate::task::supervise(
        "mailbox",
        ctx.config.address.as_str(),
        &metrics,
        cancel.clone(),
        || mailbox::run(ctx.clone(), cancel.clone()),
        |panic| {
            let ctx = ctx.clone();
            async move {
                let reason = format!("inboxd hit an internal error ({panic}); the mailbox restarts by itself");
                // Boxed: inline, this rarely used future (it holds a sink delivery) would size
                // every sleeping mailbox task by several kilobytes.
                Box::pin(
                    ctx.board
                        .set(&ctx.config.address, MailboxState::Backoff, Some(reason), None),
                )
                .await;
            }
        },
    )
    .await;
}

/// The sink settings that need a restart, without secrets.
fn sink_shape(config: &Config) -> String {
    match &config.sink {
        crate::config::SinkConfig::File { path, max_bytes } => format!("file {} {max_bytes:?}", path.display()),
        crate::config::SinkConfig::Webhook { url, timeout, .. } => format!("webhook {url} {timeout:?}"),
        // Secrets print as redacted, so a rotated password is not seen as a change here.
        crate::config::SinkConfig::Nats(c) => format!("nats {c:?}"),
        crate::config::SinkConfig::Rabbitmq(c) => format!("rabbitmq {c:?}"),
    }
}

/// A digest of `store.encryption_key` and `store.previous_encryption_keys` (never the keys).
fn key_fingerprint(config: &Config) -> String {
    use secrecy::ExposeSecret;
    let mut all = String::new();
    for key in config
        .store
        .encryption_key
        .iter()
        .chain(&config.store.previous_encryption_keys)
    {
        all.push_str(key.expose_secret());
        all.push('\n');
    }
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, all.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
