//! The sink: reachable (the file's directory, the webhook's host, the broker), and, only when
//! asked, accepting one test event.

use std::time::Duration;

use serde::Serialize;

use super::report::Check;
use crate::config::{Config, SinkConfig};
use crate::event::SinkEvent;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// Schema of the test event: consumers ignore schemas they do not handle.
pub const TEST_SCHEMA: &str = "inboxd.doctor_test.v1";

/// How long reaching the sink may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The event `--send-test-event` delivers.
#[derive(Debug, Serialize)]
struct TestEvent {
    schema: String,
    event_id: String,
    dedup_key: String,
    /// A configured mailbox, so broker subjects and routing keys render as for real events.
    mailbox: String,
    at: String,
    note: &'static str,
}

impl SinkEvent for TestEvent {
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn dedup_key(&self) -> &str {
        &self.dedup_key
    }
    fn mailbox(&self) -> &str {
        &self.mailbox
    }
    fn schema(&self) -> &str {
        &self.schema
    }
}

/// Checks the configured sink.
pub async fn check(config: &Config, http: &reqwest::Client, metrics: &Metrics, send_test_event: bool) -> Vec<Check> {
    let kind = match &config.sink {
        SinkConfig::File { .. } => "file",
        SinkConfig::Webhook { .. } => "webhook",
        SinkConfig::Nats(_) => "nats",
        SinkConfig::Rabbitmq(_) => "rabbitmq",
    };
    let mut checks = Vec::new();
    if let SinkConfig::Webhook { url, .. } = &config.sink {
        match reach(url).await {
            Ok(addr) => checks.push(Check::ok(
                "sink",
                kind,
                "reachable",
                format!("{addr} accepts connections"),
            )),
            Err(e) => {
                checks.push(
                    Check::fail(
                        "sink",
                        kind,
                        "reachable",
                        format!("{}: {e}", url.host_str().unwrap_or("?")),
                    )
                    .fix("check sink.url and that the receiver is running and reachable from this host"),
                );
                return checks;
            }
        }
    }
    let opened = tokio::time::timeout(REACH_TIMEOUT, Sink::open(&config.sink, http.clone(), metrics)).await;
    let sink = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            checks.push(Check::fail("sink", kind, "reachable", e.to_string()).fix(fix(kind)));
            return checks;
        }
        Err(_) => {
            checks.push(
                Check::fail(
                    "sink",
                    kind,
                    "reachable",
                    format!("no answer within {} s", REACH_TIMEOUT.as_secs()),
                )
                .fix(fix(kind)),
            );
            return checks;
        }
    };
    if kind != "webhook" {
        checks.push(Check::ok("sink", kind, "reachable", "opened".into()));
    }
    if !send_test_event {
        checks.push(Check::skip(
            "sink",
            kind,
            "accepts",
            "no test event sent (--send-test-event sends one)".into(),
        ));
        return checks;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let event = TestEvent {
        schema: TEST_SCHEMA.into(),
        dedup_key: format!("doctor:{id}"),
        event_id: id,
        mailbox: config
            .mailboxes
            .first()
            .map(|m| m.address.as_str().to_string())
            .unwrap_or_default(),
        at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        note: "sent by inboxd doctor --send-test-event; ignore it",
    };
    let outcome = sink.deliver(std::slice::from_ref(&event)).await.into_iter().next();
    checks.push(match outcome {
        Some(Ok(())) => Check::ok(
            "sink",
            kind,
            "accepts",
            format!(
                "a test event ({TEST_SCHEMA}, dedup_key {}) was acknowledged",
                event.dedup_key
            ),
        ),
        Some(Err(e)) => Check::fail("sink", kind, "accepts", e.to_string()).fix(fix(kind)),
        None => Check::fail("sink", kind, "accepts", "the sink gave no outcome".into()),
    });
    checks
}

/// Connects to the URL's host and port.
async fn reach(url: &url::Url) -> Result<std::net::SocketAddr, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
    match tokio::time::timeout(REACH_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream.peer_addr().map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {} s", REACH_TIMEOUT.as_secs())),
    }
}

fn fix(kind: &str) -> &'static str {
    match kind {
        "file" => "check sink.path: its directory must be writable by inboxd",
        "webhook" => {
            "the receiver must answer 2xx to a signed POST (check sink.url, sink.signing_secret and the receiver's logs)"
        }
        "nats" => "check sink.url, the credentials and that the stream exists (or sink.create_stream = true)",
        _ => "check sink.url, the credentials and that the exchange exists (or sink.declare = true) with a queue bound",
    }
}
