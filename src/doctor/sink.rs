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
    if let SinkConfig::File { path, .. } = &config.sink {
        return file(path, send_test_event.then(|| test_event(config)));
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
        checks.push(Check::ok("sink", kind, "reachable", "connected".into()));
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
    let event = test_event(config);
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

/// The test event, addressed to the first configured mailbox.
fn test_event(config: &Config) -> TestEvent {
    let id = uuid::Uuid::new_v4().to_string();
    TestEvent {
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
    }
}

/// The file sink, opened for appending only: the daemon may be writing it, and the sink's own
/// opening repairs a torn last line, which could cut a line the daemon is writing. The test
/// event is one complete line in one append, synced.
fn file(path: &std::path::Path, event: Option<TestEvent>) -> Vec<Check> {
    use std::io::Write;
    let shown = path.display().to_string();
    let opened = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::OpenOptions::new().append(true).create(true).open(path));
    let mut f = match opened {
        Ok(f) => f,
        Err(e) => {
            return vec![Check::fail("sink", "file", "reachable", format!("{shown}: {e}")).fix(fix("file"))];
        }
    };
    let mut checks = vec![Check::ok(
        "sink",
        "file",
        "reachable",
        format!("{shown} can be appended to"),
    )];
    let Some(event) = event else {
        checks.push(Check::skip(
            "sink",
            "file",
            "accepts",
            "no test event sent (--send-test-event sends one)".into(),
        ));
        return checks;
    };
    let mut line = serde_json::to_vec(&event).unwrap_or_default();
    line.push(b'\n');
    checks.push(match f.write_all(&line).and_then(|()| f.sync_data()) {
        Ok(()) => Check::ok(
            "sink",
            "file",
            "accepts",
            format!(
                "a test event ({TEST_SCHEMA}, dedup_key {}) was appended",
                event.dedup_key
            ),
        ),
        Err(e) => Check::fail("sink", "file", "accepts", format!("{shown}: {e}")).fix(fix("file")),
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
