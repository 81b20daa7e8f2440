//! Every metric name in one place: `inboxd_` prefix, `_total` counters, base units.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::MailboxState;

/// Label set: a list of name/value pairs.
type Labels = Vec<(&'static str, String)>;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// The length of the last rendering: the next one is sized from it, so a scrape of
    /// thousands of mailboxes' series does not double its buffer (and leave holes) as it grows.
    rendered_len: std::sync::atomic::AtomicUsize,
    /// Messages acknowledged by the sink.
    pub messages_delivered: Counter,
    /// Graph requests by operation and status (`429`, `200`, `error` for transport failures).
    pub graph_requests: Family<Labels, Counter>,
    /// Graph answers that were 429.
    pub graph_throttled: Counter,
    /// Token requests by app and outcome (`success`, `transient`, `credential_invalid`, `needs_reconsent`).
    pub token_requests: Family<Labels, Counter>,
    /// Mailboxes per state.
    pub mailboxes: Family<Labels, Gauge>,
    /// Received → acknowledged, seconds.
    pub delivery_lag: Histogram,
    /// Last successful poll per mailbox, Unix seconds; seeded at start from the store (or the
    /// start time for a new mailbox) and absent while the mailbox is flagged or disabled.
    pub last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Each polled mailbox's poll interval, seconds: alert thresholds scale with it.
    pub poll_interval: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Messages quarantined.
    pub quarantined: Counter,
    /// Outbound messages by final status (`sent`, `failed`).
    pub outbound: Family<Labels, Counter>,
    /// When each app's secret or certificate expires, Unix seconds.
    pub credential_expiry: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Configuration reloads by outcome (`applied`, `invalid`).
    pub config_reloads: Family<Labels, Counter>,
    /// 1 while the sink refuses or is down, by sink type.
    pub sink_unavailable: Family<Labels, Gauge>,
    /// Panics caught in supervised tasks, by task kind (`mailbox`, `sender`, …).
    pub task_panics: Family<Labels, Counter>,
    /// 1 while a folder fails although its mailbox's other folders work, by mailbox and folder.
    pub folder_failing: Family<Labels, Gauge>,
    /// Change-notification subscriptions (one per mailbox folder) by state: `active`,
    /// `pending`, `fallback` (none could be created or kept; the folder is polled).
    pub subscriptions: Family<Labels, Gauge>,
    /// Requests to the notification endpoints by outcome: `accepted`, `lifecycle`,
    /// `validation`, `unknown` (no such subscription), `forged` (wrong clientState),
    /// `invalid`, `rate_limited`.
    pub notifications: Family<Labels, Counter>,
    /// Mailbox leases as this replica sees them, by state: `held` (by this replica), `other`
    /// (by another replica), `free` (released or expired). Postgres store only.
    pub leases: Family<Labels, Gauge>,
    /// Leases this replica took over from another replica (expired, or released to it).
    pub lease_handovers: Counter,
    /// Writes refused because this replica's lease epoch was stale.
    pub fencing_rejections: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            rendered_len: Default::default(),
            messages_delivered: Counter::default(),
            graph_requests: Family::default(),
            graph_throttled: Counter::default(),
            token_requests: Family::default(),
            mailboxes: Family::default(),
            delivery_lag: Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0]),
            last_success: Family::default(),
            poll_interval: Family::default(),
            quarantined: Counter::default(),
            outbound: Family::default(),
            credential_expiry: Family::default(),
            config_reloads: Family::default(),
            sink_unavailable: Family::default(),
            task_panics: Family::default(),
            folder_failing: Family::default(),
            subscriptions: Family::default(),
            notifications: Family::default(),
            leases: Family::default(),
            lease_handovers: Counter::default(),
            fencing_rejections: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "inboxd_messages_delivered",
            "Messages acknowledged by the sink",
            m.messages_delivered.clone(),
        );
        registry.register(
            "inboxd_graph_requests",
            "Graph requests by operation and status",
            m.graph_requests.clone(),
        );
        registry.register(
            "inboxd_graph_throttled",
            "Graph answers with status 429",
            m.graph_throttled.clone(),
        );
        registry.register(
            "inboxd_token_requests",
            "Token requests by app and outcome",
            m.token_requests.clone(),
        );
        registry.register("inboxd_mailboxes", "Mailboxes per state", m.mailboxes.clone());
        registry.register(
            "inboxd_delivery_lag_seconds",
            "Time from receipt to sink acknowledgement",
            m.delivery_lag.clone(),
        );
        registry.register(
            "inboxd_last_success_timestamp_seconds",
            "Last successful poll of a mailbox",
            m.last_success.clone(),
        );
        registry.register(
            "inboxd_poll_interval_seconds",
            "Configured poll interval of a polled mailbox",
            m.poll_interval.clone(),
        );
        registry.register(
            "inboxd_quarantined_messages",
            "Messages quarantined",
            m.quarantined.clone(),
        );
        registry.register(
            "inboxd_outbound",
            "Outbound messages by final status",
            m.outbound.clone(),
        );
        registry.register(
            "inboxd_credential_expiry_timestamp_seconds",
            "When each app's client secret or certificate expires",
            m.credential_expiry.clone(),
        );
        registry.register(
            "inboxd_config_reloads",
            "Configuration reloads by outcome",
            m.config_reloads.clone(),
        );
        registry.register(
            "inboxd_sink_unavailable",
            "1 while the sink refuses or is down",
            m.sink_unavailable.clone(),
        );
        registry.register(
            "inboxd_task_panics",
            "Panics caught in supervised tasks, by task",
            m.task_panics.clone(),
        );
        registry.register(
            "inboxd_folder_failing",
            "1 while a folder fails although its mailbox's other folders work",
            m.folder_failing.clone(),
        );
        registry.register(
            "inboxd_subscriptions",
            "Change-notification subscriptions by state",
            m.subscriptions.clone(),
        );
        registry.register(
            "inboxd_notifications",
            "Change notifications received, by outcome",
            m.notifications.clone(),
        );
        registry.register(
            "inboxd_leases",
            "Mailbox leases by state (held by this replica, by another, free)",
            m.leases.clone(),
        );
        registry.register(
            "inboxd_lease_handovers",
            "Leases this replica took over from another replica",
            m.lease_handovers.clone(),
        );
        registry.register(
            "inboxd_fencing_rejections",
            "Writes refused because this replica's lease epoch was stale",
            m.fencing_rejections.clone(),
        );
        // The same counter under a second name, for dashboards that use that one.
        registry.register(
            "inboxd_lease_fencing_refusals",
            "Writes refused because this replica's lease epoch was stale (same as inboxd_fencing_rejections_total)",
            m.fencing_rejections.clone(),
        );
        for state in ["active", "pending", "fallback"] {
            let _ = m.subscriptions.get_or_create(&vec![("state", state.to_string())]);
        }
        for outcome in ["accepted", "forged"] {
            let _ = m.notifications.get_or_create(&vec![("outcome", outcome.to_string())]);
        }
        for task in ["mailbox", "sender"] {
            let _ = m.task_panics.get_or_create(&vec![("task", task.to_string())]);
        }
        // From 0, so that the first refused reload is an increase an alert can see.
        for outcome in ["applied", "invalid"] {
            let _ = m.config_reloads.get_or_create(&vec![("outcome", outcome.to_string())]);
        }
        for status in ["sent", "failed", "unconfirmed"] {
            let _ = m.outbound.get_or_create(&vec![("status", status.to_string())]);
        }
        for state in MailboxState::ALL {
            let _ = m.mailboxes.get_or_create(&vec![("state", state.as_str().to_string())]);
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// Counts one Graph request.
    pub fn graph_request(&self, operation: &'static str, status: &str) {
        self.graph_requests
            .get_or_create(&vec![
                ("operation", operation.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Counts one token request.
    pub fn token_request(&self, app: &str, outcome: &'static str) {
        self.token_requests
            .get_or_create(&vec![("app", app.to_string()), ("outcome", outcome.to_string())])
            .inc();
    }

    /// Moves one mailbox between state gauges.
    pub fn mailbox_state(&self, from: Option<MailboxState>, to: MailboxState) {
        if let Some(from) = from {
            self.mailboxes
                .get_or_create(&vec![("state", from.as_str().to_string())])
                .dec();
        }
        self.mailboxes
            .get_or_create(&vec![("state", to.as_str().to_string())])
            .inc();
    }

    /// Records a successful poll.
    pub fn poll_succeeded(&self, mailbox: &str, unix_seconds: f64) {
        self.last_success
            .get_or_create(&vec![("mailbox", mailbox.to_string())])
            .set(unix_seconds);
    }

    /// Starts a polled mailbox's series: its poll interval and its last success so far.
    pub fn mailbox_polled(&self, mailbox: &str, poll_interval_seconds: f64, last_success_unix_seconds: f64) {
        let labels = vec![("mailbox", mailbox.to_string())];
        self.poll_interval.get_or_create(&labels).set(poll_interval_seconds);
        self.last_success.get_or_create(&labels).set(last_success_unix_seconds);
    }

    /// Drops a flagged mailbox's last success: the flag's own alert speaks for it, and the
    /// "not polled" alert would only repeat it per mailbox.
    pub fn hide_last_success(&self, mailbox: &str) {
        self.last_success.remove(&vec![("mailbox", mailbox.to_string())]);
    }

    /// Drops every series of a mailbox that is no longer polled (removed or disabled), so no
    /// alert fires for it until a restart.
    pub fn forget_mailbox(&self, mailbox: &str) {
        let labels = vec![("mailbox", mailbox.to_string())];
        self.last_success.remove(&labels);
        self.poll_interval.remove(&labels);
    }

    /// Counts one configuration reload.
    pub fn config_reload(&self, outcome: &'static str) {
        self.config_reloads
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.rendered_len.load(Relaxed);
        let mut out = String::with_capacity(last + last / 16);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        self.rendered_len.store(out.len(), Relaxed);
        out
    }
}
