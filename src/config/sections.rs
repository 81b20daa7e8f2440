//! The sections of the file, read into the schema: `[server]`, `[store]`, `[microsoft]`,
//! `[sink]`, `[[apps]]`, then `[defaults]` and `[[mailboxes]]` (in `mailboxes.rs`).

use std::path::PathBuf;
use std::time::Duration;

use super::brokers;
use super::mailboxes;
use super::reader::{Errors, Table};
use super::secrets::Secrets;
use super::tree::Node;
use super::values::{duration, https_url, socket_addr};
use super::{
    ApiTokens, AppConfig, AppCredential, ClusterConfig, Config, MicrosoftConfig, OutboundConfig, ServerConfig,
    SinkConfig, StoreConfig,
};
use crate::domain::AppName;
use secrecy::ExposeSecret;

/// Reads and checks the whole tree; `None` when anything is wrong (all of it is in `errors`).
pub(super) fn build(root: &Node, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<Config> {
    let mut root = Table::root(root);
    let server = root.section("server", errors).and_then(|t| server(t, secrets, errors));
    let (store, encryption_key_given) = match root.section("store", errors) {
        Some(t) => store(t, secrets, errors),
        None => (None, true),
    };
    let microsoft = root.section("microsoft", errors).and_then(|t| microsoft(t, errors));
    let sink = root.section("sink", errors).and_then(|t| sink(t, secrets, errors));
    let notifications = {
        let table = root.section("notifications", errors);
        super::notifications::notifications(table, encryption_key_given, errors)
    };
    let outbound = root.section("outbound", errors).and_then(|t| outbound(t, errors));
    let cluster = root.section("cluster", errors).and_then(|t| cluster(t, errors));
    let intake = match root.get("intake") {
        None => Some(None),
        Some(field) => field
            .table(errors)
            .and_then(|t| brokers::intake(t, secrets, errors))
            .map(Some),
    };
    let defaults = {
        let mut table = root
            .section("defaults", errors)
            .unwrap_or_else(|| Table::empty("defaults"));
        let defaults = mailboxes::settings(&mut table, None, errors);
        table.finish(errors);
        defaults
    };
    let (apps, app_names) = match root.get("apps").map(|f| f.tables(errors)) {
        None => (Some(Vec::new()), Vec::new()),
        Some(None) => (None, Vec::new()),
        Some(Some(tables)) => apps(tables, secrets, errors),
    };
    let mailboxes = match root.get("mailboxes").map(|f| f.tables(errors)) {
        None => Some(Vec::new()),
        Some(None) => None,
        Some(Some(tables)) => mailboxes::mailboxes(tables, &defaults, &app_names, encryption_key_given, errors),
    };
    root.finish(errors);
    if let (Some(server), Some(mailboxes)) = (&server, &mailboxes)
        && server.public_url.is_none()
        && server.listen.ip().is_unspecified()
        && mailboxes.iter().any(|m| m.access == super::Access::Delegated)
    {
        errors.push(super::ConfigError::new(
            "server.public_url",
            format!(
                "required with a delegated mailbox when server.listen ({}) is not one address: the sign-in service must send browsers back to a real address, e.g. \"https://inboxd.example.com\"",
                server.listen
            ),
        ));
    }
    Some(Config {
        server: server?,
        store: store?,
        microsoft: microsoft?,
        sink: sink?,
        intake: intake?,
        apps: apps?,
        mailboxes: mailboxes?,
        notifications: notifications?,
        outbound: outbound?,
        cluster: cluster?,
    })
}

/// `[cluster]`: only used with a Postgres store.
fn cluster(mut t: Table<'_>, errors: &mut Errors) -> Option<ClusterConfig> {
    let replica_id = match t.get("replica_id") {
        None => Some(ClusterConfig::default_replica_id()),
        Some(field) => field.non_empty(errors),
    };
    let ttl_field = t.get_or("lease_ttl", "15s");
    let lease_ttl = duration(&ttl_field, errors, false, Duration::from_secs(600));
    if lease_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
        ttl_field.fail(errors, "must be at least 1s");
    }
    let heartbeat_field = t.get("heartbeat_interval");
    let heartbeat_interval = match (&heartbeat_field, lease_ttl) {
        (None, Some(ttl)) => Some(ttl / 3),
        (None, None) => None,
        (Some(field), ttl) => {
            let d = duration(field, errors, false, Duration::from_secs(600));
            match (d, ttl) {
                (Some(d), Some(ttl)) if d > ttl / 3 => {
                    field.fail(
                        errors,
                        format!(
                            "must be at most a third of lease_ttl ({}), so a lease is renewed twice before it may expire",
                            humantime::format_duration(ttl)
                        ),
                    );
                    None
                }
                (d, _) => d,
            }
        }
    };
    t.finish(errors);
    let lease_ttl = lease_ttl.filter(|d| *d >= Duration::from_secs(1));
    Some(ClusterConfig {
        replica_id: replica_id?,
        lease_ttl: lease_ttl?,
        heartbeat_interval: heartbeat_interval?,
    })
}

fn outbound(mut t: Table<'_>, errors: &mut Errors) -> Option<OutboundConfig> {
    let confirm_within = duration(
        &t.get_or("confirm_within", "10m"),
        errors,
        false,
        Duration::from_secs(7 * 24 * 3600),
    );
    let retention = duration(
        &t.get_or("retention", "7days"),
        errors,
        false,
        Duration::from_secs(3650 * 24 * 3600),
    );
    t.finish(errors);
    Some(OutboundConfig {
        confirm_within: confirm_within?,
        retention: retention?,
    })
}

fn server(mut t: Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<ServerConfig> {
    let listen = socket_addr(&t.get_or("listen", "0.0.0.0:8080"), errors);
    let public_url = match t.get("public_url") {
        None => Some(None),
        Some(field) => https_url(&field, errors).map(Some),
    };
    let act = secret_list(&mut t, "api_tokens", secrets, errors);
    let read_only = secret_list(&mut t, "read_only_api_tokens", secrets, errors);
    let shutdown_grace = duration(
        &t.get_or("shutdown_grace", "20s"),
        errors,
        true,
        Duration::from_secs(600),
    );
    let log_level_field = t.get_or("log_level", "info");
    let log_level = log_level_field.non_empty(errors).and_then(|level| {
        if tracing_subscriber::EnvFilter::try_new(&level).is_ok() {
            Some(level)
        } else {
            log_level_field.fail(
                errors,
                format!("'{level}' is not a log level (trace, debug, info, warn, error) or filter"),
            );
            None
        }
    });
    let header_timeout = duration(
        &t.get_or("header_timeout", "10s"),
        errors,
        false,
        Duration::from_secs(300),
    );
    let max_connections = match t.get("max_connections") {
        None => Some(4096),
        Some(field) => field.int_in(errors, 1, 1_000_000).and_then(|v| usize::try_from(v).ok()),
    };
    t.finish(errors);
    Some(ServerConfig {
        header_timeout: header_timeout?,
        max_connections: max_connections?,
        listen: listen?,
        public_url: public_url?,
        api_tokens: ApiTokens {
            act: act?,
            read_only: read_only?,
        },
        shutdown_grace: shutdown_grace?,
        log_level: log_level?,
    })
}

/// A list of secret references (`["env:A", "file:/run/b"]`); absent is empty.
fn secret_list(
    t: &mut Table<'_>,
    key: &'static str,
    secrets: &Secrets<'_>,
    errors: &mut Errors,
) -> Option<Vec<secrecy::SecretString>> {
    match t.get(key).map(|f| f.items(errors)) {
        None => Some(Vec::new()),
        Some(None) => None,
        Some(Some(items)) => {
            let tokens: Vec<_> = items.iter().map(|item| secrets.resolve(item, errors)).collect();
            tokens.into_iter().collect()
        }
    }
}

/// Also says whether `encryption_key` was given at all (even if it did not resolve), so a
/// delegated mailbox is not reported a second time for a key that is merely broken.
fn store(mut t: Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> (Option<StoreConfig>, bool) {
    let url_field = t.get_or("url", "sqlite://./data/inboxd.db");
    let url = url_field.non_empty(errors).and_then(|url| {
        // A Postgres URL may carry a password: it may come from a secret reference.
        let url = if url.starts_with("env:") || url.starts_with("file:") {
            secrets.resolve(&url_field, errors)?.expose_secret().to_string()
        } else {
            url
        };
        if ["sqlite:", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p)) {
            return Some(url);
        }
        url_field.fail(
            errors,
            "store URLs are sqlite: or postgres:, e.g. \"sqlite://./data/inboxd.db\" or \"postgres://inboxd@db.example/inboxd?sslmode=verify-full\"",
        );
        None
    });
    let key_field = t.get("encryption_key");
    let given = key_field.is_some();
    let encryption_key = match key_field {
        None => Some(None),
        Some(field) => secrets.resolve(&field, errors).map(Some),
    };
    let previous_encryption_keys = match t.get("previous_encryption_keys").map(|f| f.items(errors)) {
        None => Some(Vec::new()),
        Some(None) => None,
        Some(Some(items)) => {
            let keys: Vec<_> = items.iter().map(|item| secrets.resolve(item, errors)).collect();
            keys.into_iter().collect()
        }
    };
    t.finish(errors);
    let store = (|| {
        Some(StoreConfig {
            url: url?,
            encryption_key: encryption_key?,
            previous_encryption_keys: previous_encryption_keys?,
        })
    })();
    (store, given)
}

/// `microsoft.in_flight_bytes` when not set: 64 MiB.
pub const DEFAULT_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Below this a single ordinary message would not fit.
const MIN_IN_FLIGHT_BYTES: u64 = 4 << 20;

fn microsoft(mut t: Table<'_>, errors: &mut Errors) -> Option<MicrosoftConfig> {
    let authority_host = https_url(&t.get_or("authority_host", "https://login.microsoftonline.com"), errors);
    let graph_url = https_url(&t.get_or("graph_url", "https://graph.microsoft.com"), errors);
    let ca_file = match t.get("ca_file") {
        None => Some(None),
        Some(field) => field.non_empty(errors).map(|p| Some(PathBuf::from(p))),
    };
    let request_timeout = duration(
        &t.get_or("request_timeout", "60s"),
        errors,
        false,
        Duration::from_secs(600),
    );
    let filtered_delta_cap = match t.get("filtered_delta_cap") {
        None => Some(5_000),
        Some(field) => field.int_in(errors, 1, 1_000_000).and_then(|v| usize::try_from(v).ok()),
    };
    let in_flight_bytes = match t.get("in_flight_bytes") {
        None => Some(DEFAULT_IN_FLIGHT_BYTES),
        Some(field) => field
            .int_in(errors, MIN_IN_FLIGHT_BYTES as i64, 1 << 40)
            .and_then(|v| u64::try_from(v).ok()),
    };
    t.finish(errors);
    Some(MicrosoftConfig {
        in_flight_bytes: in_flight_bytes?,
        authority_host: authority_host?,
        graph_url: graph_url?,
        ca_file: ca_file?,
        request_timeout: request_timeout?,
        filtered_delta_cap: filtered_delta_cap?,
    })
}

const FILE_ONLY: &str = "applies only to type = \"file\"";
const WEBHOOK_ONLY: &str = "applies only to type = \"webhook\"";
const SINK_TYPES: &str = "\"file\", \"webhook\", \"nats\" or \"rabbitmq\"";

/// Broker keys on a file or webhook sink (`url` and `timeout` are shared with the webhook).
fn refuse_broker_keys(t: &mut Table<'_>, errors: &mut Errors) {
    let rabbit_only = brokers::RABBIT_SINK_KEYS
        .into_iter()
        .filter(|k| !brokers::NATS_SINK_KEYS.contains(k));
    for key in brokers::NATS_SINK_KEYS.into_iter().chain(rabbit_only) {
        if key != "timeout" {
            t.refuse(key, errors, "applies only to type = \"nats\" or \"rabbitmq\"");
        }
    }
}

fn sink(mut t: Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<SinkConfig> {
    let type_field = t.get_or("type", "file");
    let sink = match type_field.text(errors, SINK_TYPES)?.trim() {
        "file" => {
            let path = t.get_or("path", "./data/inbound.ndjson").non_empty(errors);
            let max_bytes = match t.get("max_bytes") {
                None => Some(None),
                Some(field) => field
                    .int_in(errors, 1, i64::MAX)
                    .and_then(|v| u64::try_from(v).ok())
                    .map(Some),
            };
            for key in ["url", "signing_secret", "timeout"] {
                t.refuse(key, errors, WEBHOOK_ONLY);
            }
            refuse_broker_keys(&mut t, errors);
            (|| {
                Some(SinkConfig::File {
                    path: PathBuf::from(path?),
                    max_bytes: max_bytes?,
                })
            })()
        }
        "webhook" => {
            let why = " (type = \"webhook\" needs it)";
            let url = t.require("url", errors, why).and_then(|f| https_url(&f, errors));
            let signing_secret = t
                .require("signing_secret", errors, why)
                .and_then(|f| secrets.resolve(&f, errors));
            let timeout = duration(&t.get_or("timeout", "10s"), errors, false, Duration::from_secs(600));
            for key in ["path", "max_bytes"] {
                t.refuse(key, errors, FILE_ONLY);
            }
            refuse_broker_keys(&mut t, errors);
            (|| {
                Some(SinkConfig::Webhook {
                    url: url?,
                    signing_secret: signing_secret?,
                    timeout: timeout?,
                })
            })()
        }
        "nats" => {
            for key in ["path", "max_bytes", "signing_secret"] {
                t.refuse(key, errors, "applies only to type = \"file\" or \"webhook\"");
            }
            brokers::nats_sink(&mut t, secrets, errors)
        }
        "rabbitmq" => {
            for key in ["path", "max_bytes", "signing_secret"] {
                t.refuse(key, errors, "applies only to type = \"file\" or \"webhook\"");
            }
            brokers::rabbit_sink(&mut t, secrets, errors)
        }
        other => {
            type_field.fail(errors, format!("'{other}' is not a sink type; expected {SINK_TYPES}"));
            // The other keys are known; they just cannot be checked without a type.
            for key in ["path", "max_bytes", "url", "signing_secret", "timeout"]
                .into_iter()
                .chain(brokers::NATS_SINK_KEYS)
                .chain(brokers::RABBIT_SINK_KEYS)
            {
                let _ = t.get(key);
            }
            None
        }
    };
    t.finish(errors);
    sink
}

/// Reads `[[apps]]`; also returns every name that was readable, so mailboxes referring to an
/// app that is otherwise broken are not reported twice.
fn apps(tables: Vec<Table<'_>>, secrets: &Secrets<'_>, errors: &mut Errors) -> (Option<Vec<AppConfig>>, Vec<String>) {
    let mut out = Vec::with_capacity(tables.len());
    let mut names: Vec<(String, String)> = Vec::new();
    let mut ok = true;
    for mut t in tables {
        let name = t.require("name", errors, "").and_then(|field| {
            let name = field.non_empty(errors)?;
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                field.fail(errors, format!("duplicate app name '{name}', already used by {first}"));
                return None;
            }
            names.push((name.clone(), t.path().to_string()));
            Some(name)
        });
        let tenant_id = t.require("tenant_id", errors, "").and_then(|f| f.non_empty(errors));
        let client_id = t.require("client_id", errors, "").and_then(|f| f.non_empty(errors));
        let secret = t.get("client_secret").map(|f| secrets.resolve(&f, errors));
        let certificate = t.get("certificate").map(|f| {
            let pem = secrets.resolve(&f, errors)?;
            check_pem(&pem, &f, errors).then_some(pem)
        });
        let credential = match (secret, certificate) {
            (Some(secret), None) => secret.map(AppCredential::Secret),
            (None, Some(pem)) => pem.map(AppCredential::Certificate),
            (Some(_), Some(_)) => {
                errors.push(super::ConfigError::new(
                    t.path(),
                    "has both client_secret and certificate; keep exactly one",
                ));
                None
            }
            (None, None) => {
                errors.push(super::ConfigError::new(
                    t.path(),
                    "needs a credential: set client_secret or certificate",
                ));
                None
            }
        };
        let secret_expires_at = match t.get("secret_expires_at") {
            None => Some(None),
            Some(f) => super::values::time(&f, errors).map(Some),
        };
        t.finish(errors);
        let app = (|| {
            Some(AppConfig {
                name: AppName(name?),
                tenant_id: tenant_id?,
                client_id: client_id?,
                credential: credential?,
                secret_expires_at: secret_expires_at?,
            })
        })();
        match app {
            Some(app) => out.push(app),
            None => ok = false,
        }
    }
    (ok.then_some(out), names.into_iter().map(|(n, _)| n).collect())
}

/// A certificate credential must hold both the private key and the certificate.
fn check_pem(pem: &secrecy::SecretString, field: &super::reader::Field<'_>, errors: &mut Errors) -> bool {
    use secrecy::ExposeSecret;
    let text = pem.expose_secret();
    let has_key = text.contains("PRIVATE KEY-----");
    let has_cert = text.contains("-----BEGIN CERTIFICATE-----");
    if !has_key || !has_cert {
        let missing = match (has_key, has_cert) {
            (false, false) => "a PEM private key and certificate",
            (false, true) => "a PEM private key",
            _ => "a PEM certificate",
        };
        field.fail(errors, format!("the certificate credential must contain {missing}"));
        return false;
    }
    true
}
