//! Configuration: the schema (this file), loading from TOML + environment, and validation
//! that reports every problem with its key path.

mod brokers;
mod error;
mod load;
mod mailboxes;
mod notifications;
mod reader;
mod secrets;
mod sections;
#[cfg(test)]
mod tests;
mod tree;
mod values;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;
use url::Url;

pub use brokers::{
    AmqpConnection, NatsAuth, NatsConnection, NatsIntakeConfig, NatsSinkConfig, RabbitIntakeConfig, RabbitSinkConfig,
    Retention, StreamSettings, Template, Topics, mailbox_token,
};
pub use error::{ConfigError, ConfigErrors};
pub use load::{from_sources, load_file};
pub use mailboxes::DEFAULT_MAX_INLINE_ATTACHMENT_BYTES;
pub use sections::DEFAULT_IN_FLIGHT_BYTES;
pub use watch::watch_config;

use crate::domain::{AppName, MailboxAddress};

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Persistence.
    pub store: StoreConfig,
    /// Microsoft endpoints.
    pub microsoft: MicrosoftConfig,
    /// Where events go.
    pub sink: SinkConfig,
    /// Reply requests read from a broker, if configured.
    pub intake: Option<IntakeConfig>,
    /// App registrations.
    pub apps: Vec<AppConfig>,
    /// Mailboxes, with `[defaults]` already applied; shared with the mailboxes' tasks (one
    /// copy of each, however many parts of the daemon hold it).
    pub mailboxes: Vec<std::sync::Arc<MailboxConfig>>,
    /// Graph change notifications (off unless enabled).
    pub notifications: NotificationsConfig,
    /// Replies and new mail.
    pub outbound: OutboundConfig,
    /// Replicas sharing a Postgres store.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: how replicas sharing a Postgres store split the mailboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This replica's name in the lease table (default: hostname and process id).
    pub replica_id: String,
    /// How long a lease lasts without renewal: a dead replica's mailboxes move after at most
    /// this long.
    pub lease_ttl: Duration,
    /// How often leases are renewed and membership refreshed (default: a third of the TTL).
    pub heartbeat_interval: Duration,
}

impl ClusterConfig {
    /// `hostname-pid`: unique per process, readable in `/v1/mailboxes`.
    pub fn default_replica_id() -> String {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "inboxd".into());
        format!("{host}-{}", std::process::id())
    }
}

/// `[notifications]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationsConfig {
    /// Subscribe to changes and poll only every `safety_poll_interval` while subscribed.
    pub enabled: bool,
    /// Base URL where Graph reaches `/graph/notifications` (default: `server.public_url`, then
    /// the bound address).
    pub public_url: Option<Url>,
    /// The poll interval while every folder of a mailbox has a healthy subscription.
    pub safety_poll_interval: Duration,
    /// The subscription lifetime asked for (Graph may answer with a lower cap, which is used).
    pub subscription_lifetime: Duration,
    /// Requests per second the notification endpoints accept (twice as many in a burst).
    pub rate_limit: u32,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            enabled: false,
            public_url: None,
            safety_poll_interval: Duration::from_secs(300),
            subscription_lifetime: Duration::from_secs(4230 * 60),
            rate_limit: 200,
        }
    }
}

/// `[outbound]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// How long after `send` inboxd keeps looking for the message's copy before it calls
    /// the message `unconfirmed` (never sent again automatically).
    pub confirm_within: Duration,
    /// How long a finished request keeps its payload (its status and ids stay).
    pub retention: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            confirm_within: Duration::from_secs(600),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Health, metrics, status and reply API.
    pub listen: SocketAddr,
    /// Where browsers reach `/oauth/callback`.
    pub public_url: Option<Url>,
    /// Bearer tokens accepted on `/v1` and by the status page's sign-in.
    pub api_tokens: ApiTokens,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// Log level or filter (`info`, `inboxd=debug`); `RUST_LOG` overrides it.
    pub log_level: String,
    /// A connection must send its request headers within this (also the longest idle keep-alive).
    pub header_timeout: Duration,
    /// API connections served at once.
    pub max_connections: usize,
}

/// `server.api_tokens` (may read and act) and `server.read_only_api_tokens` (may only read).
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    /// May read and act: replies, replays, refresh-token imports.
    pub act: Vec<SecretString>,
    /// May only read: `GET` on `/v1`, the status page without its buttons (a wall display,
    /// a support desk).
    pub read_only: Vec<SecretString>,
}

impl ApiTokens {
    /// No token at all: `/v1` and the status page refuse everyone.
    pub fn is_empty(&self) -> bool {
        self.act.is_empty() && self.read_only.is_empty()
    }
}

impl ServerConfig {
    /// Where the sign-in service sends the browser back: `{public_url}/oauth/callback`
    /// (without a public URL, the bound address, which only works on the daemon's own host).
    pub fn redirect_uri(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => format!("{}/oauth/callback", u.as_str().trim_end_matches('/')),
            None => format!("http://{bound}/oauth/callback"),
        }
    }

    /// The stable consent link shown for a mailbox: it starts a fresh flow each time it is opened.
    pub fn consent_link(&self, bound: SocketAddr, mailbox: &crate::domain::MailboxAddress) -> String {
        let base = self.redirect_uri(bound);
        let base = base.trim_end_matches("/oauth/callback");
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("mailbox", mailbox.as_str())
            .finish();
        format!("{base}/oauth/start?{query}")
    }
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path` or `postgres://…` (then shared by replicas).
    pub url: String,
    /// Seals delegated refresh tokens at rest.
    pub encryption_key: Option<SecretString>,
    /// Keys `encryption_key` replaced: they only open, and what they sealed is re-sealed.
    pub previous_encryption_keys: Vec<SecretString>,
}

/// `[microsoft]`.
#[derive(Debug, Clone)]
pub struct MicrosoftConfig {
    /// Identity platform host, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Graph host, e.g. `https://graph.microsoft.com`.
    pub graph_url: Url,
    /// Extra trusted root certificate (PEM), e.g. the emulator's.
    pub ca_file: Option<PathBuf>,
    /// A Graph or token request that takes longer fails (transient) and is retried.
    pub request_timeout: Duration,
    /// Items after which Graph ends a delta filtered on receipt time (5,000 as documented; an
    /// emulator may use fewer). A round that reaches it is split so nothing is skipped.
    pub filtered_delta_cap: usize,
    /// Bytes of mail (bodies and attachments, with the copies made while turning them into
    /// events) held in process at once, all mailboxes together; pages are sized to fit.
    pub in_flight_bytes: u64,
}

/// `[sink]`.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Append NDJSON to a file.
    File {
        /// The file.
        path: PathBuf,
        /// Rotate when the file grows past this many bytes.
        max_bytes: Option<u64>,
    },
    /// POST each event, signed.
    Webhook {
        /// Receiver.
        url: Url,
        /// HMAC-SHA256 key.
        signing_secret: SecretString,
        /// Per-request timeout.
        timeout: Duration,
    },
    /// Publish to a NATS JetStream stream.
    Nats(NatsSinkConfig),
    /// Publish to a RabbitMQ exchange.
    Rabbitmq(RabbitSinkConfig),
}

/// `[intake]`: where reply requests are read from, besides the HTTP API.
#[derive(Debug, Clone)]
pub enum IntakeConfig {
    /// A durable JetStream consumer.
    Nats(NatsIntakeConfig),
    /// A RabbitMQ queue.
    Rabbitmq(RabbitIntakeConfig),
}

/// An `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Name mailboxes refer to.
    pub name: AppName,
    /// Directory (tenant) id or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: AppCredential,
    /// When the client secret expires (Entra shows it; inboxd warns ahead). A certificate's
    /// own notAfter is read from the PEM.
    pub secret_expires_at: Option<OffsetDateTime>,
}

/// How an app proves itself.
#[derive(Debug, Clone)]
pub enum AppCredential {
    /// A client secret.
    Secret(SecretString),
    /// A PEM holding the private key and the certificate.
    Certificate(SecretString),
}

/// `access = "app" | "delegated"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Client credentials.
    App,
    /// A user's refresh token.
    Delegated,
}

/// `after_ingest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterIngest {
    /// Leave the message alone.
    None,
    /// Mark it read.
    MarkRead,
    /// Move it to a folder (well-known name or id).
    Move(String),
}

/// `start_at`: where a new mailbox's first delta round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only mail that arrives from now on.
    Now,
    /// Everything in the folder.
    All,
    /// Mail received at or after this time.
    Since(OffsetDateTime),
}

/// A `[[mailboxes]]` entry with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxConfig {
    /// The mailbox.
    pub address: MailboxAddress,
    /// App registration used.
    pub app: AppName,
    /// App-only or delegated.
    pub access: Access,
    /// Delegated only: app-only registration used while re-consent is pending.
    pub fallback_app: Option<AppName>,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Folders to watch (well-known names or ids).
    pub folders: Vec<String>,
    /// What to do once routing acknowledged a message.
    pub after_ingest: AfterIngest,
    /// Attachments up to this size are embedded in the event.
    pub max_inline_attachment_bytes: u64,
    /// Concurrent Graph requests for this mailbox (at most 4).
    pub max_concurrent_requests: usize,
    /// Where the first round starts.
    pub start_at: StartAt,
    /// `enabled = false` keeps the mailbox configured but idle (`disabled`).
    pub enabled: bool,
}
