//! The broker settings: `[sink]` with `type = "nats"` or `"rabbitmq"`, and `[intake]` (reply
//! requests read from a JetStream consumer or a RabbitMQ queue).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::reader::{Errors, Field, Table};
use super::secrets::Secrets;
use super::values::duration;
use super::{IntakeConfig, SinkConfig};

/// A subject or routing-key template: `{mailbox}` is replaced by the mailbox address encoded
/// as one token (see [`mailbox_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// The subject or routing key for one mailbox.
    pub fn render(&self, mailbox: &str) -> String {
        self.0.replace("{mailbox}", &mailbox_token(mailbox))
    }

    /// The template with every `{mailbox}` token as the wildcard `*`: what a stream or a
    /// binding must capture.
    pub fn wildcard(&self) -> String {
        self.0.replace("{mailbox}", "*")
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A template from a test, unchecked.
    #[cfg(test)]
    pub(crate) fn for_tests(text: &str) -> Template {
        Template(text.to_string())
    }
}

/// A mailbox address as one subject / routing-key token: ASCII letters, digits, `@`, `-`,
/// `+` and `_` stay, every other byte becomes `%XX` (so `.` is `%2E`). Reversible, so two
/// mailboxes never share a subject: `support@contoso.com` → `support@contoso%2Ecom`.
pub fn mailbox_token(mailbox: &str) -> String {
    let mut out = String::with_capacity(mailbox.len() + 8);
    for b in mailbox.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'@' | b'-' | b'+' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where each kind of event goes: one template per schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `inboxd.message.v1`.
    pub message: Template,
    /// `inboxd.outbound.v1`.
    pub outbound: Template,
    /// `inboxd.mailbox_state.v1`.
    pub mailbox_state: Template,
}

impl Topics {
    /// The template for an event's schema (messages for anything unknown).
    pub fn for_schema(&self, schema: &str) -> &Template {
        match schema {
            crate::event::OUTBOUND_SCHEMA => &self.outbound,
            crate::event::MAILBOX_STATE_SCHEMA => &self.mailbox_state,
            _ => &self.message,
        }
    }

    /// All three templates.
    pub fn all(&self) -> [&Template; 3] {
        [&self.message, &self.outbound, &self.mailbox_state]
    }
}

/// How inboxd proves itself to NATS.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `user` and `password`.
    UserPassword {
        /// User name (not secret).
        user: String,
        /// Password.
        password: SecretString,
    },
    /// `token`.
    Token(SecretString),
    /// `creds`: the content of a `.creds` file (JWT and NKey seed).
    Creds(SecretString),
}

/// A NATS server and how to log in.
#[derive(Debug, Clone)]
pub struct NatsConnection {
    /// `nats://host:port` or `tls://host:port` (TLS required); several, comma-separated.
    pub url: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// Extra trusted root certificate (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
    /// Require TLS even on a `nats://` URL.
    pub tls: bool,
}

/// JetStream retention policy of a stream inboxd creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept until limits discard them.
    Limits,
    /// Kept while a consumer has not acknowledged them.
    Interest,
    /// Removed once one consumer acknowledged them.
    WorkQueue,
}

/// The stream inboxd creates when `create_stream = true` (and checks otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Subjects the stream captures (default: the three templates with `{mailbox}` as `*`).
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: Retention,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// At most this many messages; a full stream refuses new ones (discard new), so the sink
    /// reports unavailable instead of the stream silently dropping old events.
    pub max_messages: Option<i64>,
}

/// `[sink] type = "nats"`.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    /// Server and credentials.
    pub connection: NatsConnection,
    /// Subject templates.
    pub subjects: Topics,
    /// The JetStream stream that must capture the subjects.
    pub stream: String,
    /// Create the stream at start if it is absent.
    pub create_stream: bool,
    /// The stream's settings (created with them, checked against them).
    pub stream_settings: StreamSettings,
    /// How long a batch waits for its PubAcks.
    pub timeout: Duration,
}

/// A RabbitMQ broker and how to log in.
#[derive(Debug, Clone)]
pub struct AmqpConnection {
    /// `amqp://host:port/vhost` or `amqps://…` (TLS), without a password.
    pub url: String,
    /// User name (default: the URL's, else `guest`).
    pub username: Option<String>,
    /// Password.
    pub password: Option<SecretString>,
    /// Extra trusted root certificate (PEM) for `amqps://`.
    pub ca_file: Option<PathBuf>,
}

/// `[sink] type = "rabbitmq"`.
#[derive(Debug, Clone)]
pub struct RabbitSinkConfig {
    /// Broker and credentials.
    pub connection: AmqpConnection,
    /// The exchange events are published to.
    pub exchange: String,
    /// Routing-key templates.
    pub routing_keys: Topics,
    /// Declare the exchange (durable, topic) at start; otherwise it must exist.
    pub declare: bool,
    /// How long a batch waits for its publisher confirms.
    pub timeout: Duration,
}

/// `[intake] type = "nats"`.
#[derive(Debug, Clone)]
pub struct NatsIntakeConfig {
    /// Server and credentials.
    pub connection: NatsConnection,
    /// The stream holding the requests (must exist).
    pub stream: String,
    /// Durable consumer name (created with explicit ack if absent).
    pub consumer: String,
    /// Subject filter of the consumer.
    pub subject: String,
    /// Where invalid requests go, with their reason.
    pub dead_letter_subject: String,
}

/// `[intake] type = "rabbitmq"`.
#[derive(Debug, Clone)]
pub struct RabbitIntakeConfig {
    /// Broker and credentials.
    pub connection: AmqpConnection,
    /// The queue holding the requests.
    pub queue: String,
    /// Declare the queue (durable) at start; otherwise it must exist.
    pub declare: bool,
    /// Where invalid requests go, with their reason.
    pub dead_letter_exchange: String,
    /// Routing key used on the dead-letter exchange.
    pub dead_letter_routing_key: String,
}

const NATS_ONLY: &str = "applies only to type = \"nats\"";
const RABBIT_ONLY: &str = "applies only to type = \"rabbitmq\"";
/// Keys of the NATS sink, refused on other sinks.
pub(super) const NATS_SINK_KEYS: [&str; 16] = [
    "subject",
    "outbound_subject",
    "mailbox_state_subject",
    "stream",
    "create_stream",
    "stream_subjects",
    "retention",
    "duplicate_window",
    "max_messages",
    "user",
    "password",
    "token",
    "creds",
    "tls",
    "ca_file",
    "timeout",
];
/// Keys of the RabbitMQ sink, refused on other sinks.
pub(super) const RABBIT_SINK_KEYS: [&str; 9] = [
    "exchange",
    "routing_key",
    "outbound_routing_key",
    "mailbox_state_routing_key",
    "declare",
    "username",
    "password",
    "ca_file",
    "timeout",
];

/// Reads `[sink]` for `nats`.
pub(super) fn nats_sink(t: &mut Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<SinkConfig> {
    let connection = nats_connection(t, secrets, errors);
    let subjects = topics(t, ["subject", "outbound_subject", "mailbox_state_subject"], errors);
    let stream = t
        .require("stream", errors, " (type = \"nats\" needs it)")
        .and_then(|f| name(&f, errors));
    let create_stream = t.get("create_stream").map_or(Some(false), |f| f.bool(errors));
    let stream_subjects = match t.get("stream_subjects").map(|f| f.items(errors)) {
        None => Some(None),
        Some(None) => None,
        Some(Some(items)) => items
            .iter()
            .map(|f| f.non_empty(errors).filter(|s| subject_ok(f, s, true, errors)))
            .collect::<Option<Vec<_>>>()
            .map(Some),
    };
    let retention_field = t.get_or("retention", "limits");
    let retention = match retention_field
        .text(errors, "\"limits\", \"interest\" or \"workqueue\"")?
        .trim()
    {
        "limits" => Some(Retention::Limits),
        "interest" => Some(Retention::Interest),
        "workqueue" => Some(Retention::WorkQueue),
        other => {
            retention_field.fail(
                errors,
                format!("'{other}' is not a retention policy; expected \"limits\", \"interest\" or \"workqueue\""),
            );
            None
        }
    };
    let duplicate_window = duration(
        &t.get_or("duplicate_window", "2m"),
        errors,
        false,
        Duration::from_secs(7 * 24 * 3600),
    );
    let max_messages = match t.get("max_messages") {
        None => Some(None),
        Some(f) => f.int_in(errors, 1, i64::MAX).map(Some),
    };
    let timeout = duration(&t.get_or("timeout", "10s"), errors, false, Duration::from_secs(600));
    for key in RABBIT_SINK_KEYS {
        if !NATS_SINK_KEYS.contains(&key) {
            t.refuse(key, errors, RABBIT_ONLY);
        }
    }
    let subjects = subjects?;
    let stream_subjects = stream_subjects?.unwrap_or_else(|| subjects.all().iter().map(|s| s.wildcard()).collect());
    Some(SinkConfig::Nats(NatsSinkConfig {
        connection: connection?,
        stream: stream?,
        create_stream: create_stream?,
        stream_settings: StreamSettings {
            subjects: stream_subjects,
            retention: retention?,
            duplicate_window: duplicate_window?,
            max_messages: max_messages?,
        },
        subjects,
        timeout: timeout?,
    }))
}

/// Reads `[sink]` for `rabbitmq`.
pub(super) fn rabbit_sink(t: &mut Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<SinkConfig> {
    let connection = amqp_connection(t, secrets, errors);
    let exchange = t
        .require("exchange", errors, " (type = \"rabbitmq\" needs it)")
        .and_then(|f| f.text(errors, "an exchange name").map(|s| s.trim().to_string()));
    let routing_keys = topics(
        t,
        ["routing_key", "outbound_routing_key", "mailbox_state_routing_key"],
        errors,
    );
    let declare = t.get("declare").map_or(Some(false), |f| f.bool(errors));
    let timeout = duration(&t.get_or("timeout", "10s"), errors, false, Duration::from_secs(600));
    for key in NATS_SINK_KEYS {
        if !RABBIT_SINK_KEYS.contains(&key) {
            t.refuse(key, errors, NATS_ONLY);
        }
    }
    Some(SinkConfig::Rabbitmq(RabbitSinkConfig {
        connection: connection?,
        exchange: exchange?,
        routing_keys: routing_keys?,
        declare: declare?,
        timeout: timeout?,
    }))
}

/// Reads `[intake]`; `None` inside `Some` when the section is absent.
pub(super) fn intake(mut t: Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<IntakeConfig> {
    let type_field = t.require("type", errors, " (\"nats\" or \"rabbitmq\")")?;
    let intake = match type_field.text(errors, "\"nats\" or \"rabbitmq\"")?.trim() {
        "nats" => {
            let connection = nats_connection(&mut t, secrets, errors);
            let why = " (type = \"nats\" needs it)";
            let stream = t.require("stream", errors, why).and_then(|f| name(&f, errors));
            let consumer = t.require("consumer", errors, why).and_then(|f| name(&f, errors));
            let subject_field = t.get_or("subject", "inboxd.requests.>");
            let subject = subject_field
                .non_empty(errors)
                .filter(|s| subject_ok(&subject_field, s, true, errors));
            let dead_field = t.get_or("dead_letter_subject", "inboxd.requests_dead");
            let dead_letter_subject = dead_field
                .non_empty(errors)
                .filter(|s| subject_ok(&dead_field, s, false, errors));
            for key in [
                "queue",
                "declare",
                "dead_letter_exchange",
                "dead_letter_routing_key",
                "username",
            ] {
                t.refuse(key, errors, RABBIT_ONLY);
            }
            (|| {
                Some(IntakeConfig::Nats(NatsIntakeConfig {
                    connection: connection?,
                    stream: stream?,
                    consumer: consumer?,
                    subject: subject?,
                    dead_letter_subject: dead_letter_subject?,
                }))
            })()
        }
        "rabbitmq" => {
            let connection = amqp_connection(&mut t, secrets, errors);
            let why = " (type = \"rabbitmq\" needs it)";
            let queue = t.require("queue", errors, why).and_then(|f| f.non_empty(errors));
            let declare = t.get("declare").map_or(Some(false), |f| f.bool(errors));
            let dead_letter_exchange = t
                .require("dead_letter_exchange", errors, why)
                .and_then(|f| f.text(errors, "an exchange name").map(|s| s.trim().to_string()));
            let dead_letter_routing_key = t
                .get_or("dead_letter_routing_key", "inboxd.requests_dead")
                .text(errors, "a routing key")
                .map(str::to_string);
            for key in [
                "stream",
                "consumer",
                "subject",
                "dead_letter_subject",
                "user",
                "token",
                "creds",
                "tls",
            ] {
                t.refuse(key, errors, NATS_ONLY);
            }
            (|| {
                Some(IntakeConfig::Rabbitmq(RabbitIntakeConfig {
                    connection: connection?,
                    queue: queue?,
                    declare: declare?,
                    dead_letter_exchange: dead_letter_exchange?,
                    dead_letter_routing_key: dead_letter_routing_key?,
                }))
            })()
        }
        other => {
            type_field.fail(
                errors,
                format!("'{other}' is not an intake type; expected \"nats\" or \"rabbitmq\""),
            );
            None
        }
    };
    t.finish(errors);
    intake
}

fn nats_connection(t: &mut Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<NatsConnection> {
    let url_field = t.get_or("url", "nats://127.0.0.1:4222");
    let url = url_field.non_empty(errors).filter(|url| {
        let ok = url.split(',').all(|u| {
            let u = u.trim();
            !u.is_empty() && !u.contains('@') && ["nats://", "tls://"].iter().any(|s| u.starts_with(s))
        });
        if !ok {
            url_field.fail(
                errors,
                "must be nats://host:port or tls://host:port (comma-separated for several), without credentials \
                 (set user and password, token or creds)",
            );
        }
        ok
    });
    let user = t.get("user").map(|f| f.non_empty(errors));
    let password = t.get("password").map(|f| secrets.resolve(&f, errors));
    let token = t.get("token").map(|f| secrets.resolve(&f, errors));
    let creds = t.get("creds").map(|f| secrets.resolve(&f, errors));
    let auth = match (user, password, token, creds) {
        (None, None, None, None) => Some(NatsAuth::None),
        (Some(user), Some(password), None, None) => Some(NatsAuth::UserPassword {
            user: user?,
            password: password?,
        }),
        (None, None, Some(token), None) => token.map(NatsAuth::Token),
        (None, None, None, Some(creds)) => creds.map(NatsAuth::Creds),
        _ => {
            errors.push(super::ConfigError::new(
                t.path(),
                "set exactly one kind of NATS credentials: user and password, token, or creds",
            ));
            None
        }
    };
    let ca_file = optional_path(t.get("ca_file"), errors);
    let tls = t.get("tls").map_or(Some(false), |f| f.bool(errors));
    Some(NatsConnection {
        url: url?,
        auth: auth?,
        ca_file: ca_file?,
        tls: tls?,
    })
}

fn amqp_connection(t: &mut Table<'_>, secrets: &Secrets<'_>, errors: &mut Errors) -> Option<AmqpConnection> {
    let url_field = t.get_or("url", "amqp://127.0.0.1:5672/%2f");
    let url = url_field.non_empty(errors).filter(|url| {
        let parsed = url::Url::parse(url);
        let ok = matches!(&parsed, Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.password().is_none());
        if !ok {
            url_field.fail(
                errors,
                "must be amqp://host:port/vhost or amqps://… without a password (set password as a secret reference)",
            );
        }
        ok
    });
    let username = t.get("username").map_or(Some(None), |f| f.non_empty(errors).map(Some));
    let password = t
        .get("password")
        .map_or(Some(None), |f| secrets.resolve(&f, errors).map(Some));
    let ca_file = optional_path(t.get("ca_file"), errors);
    Some(AmqpConnection {
        url: url?,
        username: username?,
        password: password?,
        ca_file: ca_file?,
    })
}

fn optional_path(field: Option<Field<'_>>, errors: &mut Errors) -> Option<Option<PathBuf>> {
    match field {
        None => Some(None),
        Some(f) => f.non_empty(errors).map(|p| Some(PathBuf::from(p))),
    }
}

/// Three templates under the given keys, with the `inboxd.<schema>.{mailbox}` defaults.
fn topics(t: &mut Table<'_>, keys: [&'static str; 3], errors: &mut Errors) -> Option<Topics> {
    let defaults = [
        "inboxd.message.{mailbox}",
        "inboxd.outbound.{mailbox}",
        "inboxd.mailbox_state.{mailbox}",
    ];
    let mut read = keys.iter().zip(defaults).map(|(key, default)| {
        let field = t.get_or(key, default);
        let text = field.non_empty(errors)?;
        let rendered = text.replace("{mailbox}", "x");
        if rendered.contains(['{', '}']) {
            field.fail(errors, "the only placeholder is {mailbox}");
            return None;
        }
        subject_ok(&field, &rendered, false, errors).then_some(Template(text))
    });
    let (message, outbound, mailbox_state) = (read.next()?, read.next()?, read.next()?);
    Some(Topics {
        message: message?,
        outbound: outbound?,
        mailbox_state: mailbox_state?,
    })
}

/// A subject: dot-separated non-empty tokens without whitespace; `*` and `>` only where
/// wildcards are allowed, as whole tokens (`>` last).
fn subject_ok(field: &Field<'_>, subject: &str, wildcards: bool, errors: &mut Errors) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    let bad = tokens.iter().enumerate().find_map(|(i, t)| {
        if t.is_empty() {
            Some("has an empty token (two dots in a row, or a dot at an end)")
        } else if t.contains(char::is_whitespace) {
            Some("contains whitespace")
        } else if (*t == "*" || (*t == ">" && i == tokens.len() - 1)) && wildcards {
            None
        } else if t.contains(['*', '>']) {
            Some("contains a wildcard (* or >) where a literal subject is needed")
        } else {
            None
        }
    });
    if let Some(why) = bad {
        field.fail(errors, format!("'{subject}' {why}"));
    }
    bad.is_none()
}

/// A stream or consumer name: no whitespace, dots, wildcards or path separators.
fn name(field: &Field<'_>, errors: &mut Errors) -> Option<String> {
    let name = field.non_empty(errors)?;
    if name.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        field.fail(
            errors,
            format!("'{name}' is not a valid name (no whitespace, '.', '*', '>', '/' or '\\')"),
        );
        return None;
    }
    Some(name)
}
