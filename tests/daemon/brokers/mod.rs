//! The broker sinks and the request intake against real brokers: NATS on 127.0.0.1:4222 or a
//! private `nats-server` a test starts on its own port, RabbitMQ on 127.0.0.1:5672 behind a
//! test-owned TCP proxy that cuts and restores connections. Every test uses its own stream,
//! subjects, exchange and queues, and removes them.

mod intake;
mod nats;
mod rabbitmq;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use inboxd::event::MessageEvent;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::free_port;

/// Bound on every wait for progress.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The config with its `[sink]` section replaced by `sink` (TOML lines without the header).
pub fn with_sink(toml: &str, sink: &str) -> String {
    let start = toml.find("[sink]\n").expect("config has a [sink] section");
    let end = start + toml[start..].find("\n[").expect("a section follows [sink]");
    format!("{}[sink]\n{sink}\n{}", &toml[..start], &toml[end..])
}

/// Every message event in a stream (subject `<prefix>.message.…`), in stream order.
pub async fn stream_events(js: &jetstream::Context, stream: &str, prefix: &str) -> Vec<MessageEvent> {
    let Ok(stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = stream.get_info().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for seq in info.state.first_sequence.max(1)..=info.state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.starts_with(&format!("{prefix}.message."))
        {
            out.push(serde_json::from_slice(&m.payload).expect("stream holds message events"));
        }
    }
    out
}

/// Message events in a stream (subjects `<prefix>.message.…`; 0 when it cannot be asked).
pub async fn stream_len(js: &jetstream::Context, stream: &str, prefix: &str) -> usize {
    use futures_util::StreamExt;
    let Ok(stream) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(mut subjects) = stream.info_with_subjects(format!("{prefix}.message.>")).await else {
        return 0;
    };
    let mut n = 0;
    while let Some(Ok((_, count))) = subjects.next().await {
        n += count;
    }
    n
}

/// Graph ids never delivered, and graph ids delivered under two dedup keys (or the reverse).
pub fn check(events: &[MessageEvent], expected: &HashMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut key_of: HashMap<&str, &str> = HashMap::new();
    for e in events {
        if !expected.contains_key(&e.graph_id) {
            problems.push(format!("unexpected message {}", e.graph_id));
        }
        let first = *key_of.entry(&e.graph_id).or_insert(&e.dedup_key);
        if first != e.dedup_key {
            problems.push(format!("{} under two dedup keys", e.graph_id));
        }
    }
    let missing = expected.keys().filter(|id| !key_of.contains_key(id.as_str())).count();
    if missing > 0 {
        problems.push(format!("{missing} of {} messages never delivered", expected.len()));
    }
    problems
}

/// Graph ids that appear more than once.
pub fn duplicated(events: &[MessageEvent]) -> usize {
    let mut seen = HashSet::new();
    events.iter().filter(|e| !seen.insert(e.graph_id.clone())).count()
}

/// Waits (bounded) until something accepts connections on `port`.
pub async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `nats-server` with JetStream of the test's own, on its own port and store directory.
pub struct PrivateNats {
    /// Its port.
    pub port: u16,
    /// JetStream store: kept across a kill and restart.
    store: tempfile::TempDir,
    /// The process while running.
    child: Option<Child>,
}

impl PrivateNats {
    pub async fn start() -> PrivateNats {
        let mut server = PrivateNats {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to clients, nothing flushed beyond what the OS already has.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store; returns once it listens.
    pub async fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (see .ci/services)");
        self.child = Some(child);
        wait_listening(self.port).await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A TCP proxy to a broker that the test can cut (every connection dropped, new ones refused
/// at once) and restore.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// `true` while connections pass.
    up: watch::Sender<bool>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let mut down = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { addr, up, task }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `inboxd_sink_unavailable{sink="<sink>"}` in a metrics text.
pub fn sink_unavailable(metrics: &str, sink: &str) -> Option<f64> {
    crate::support::metric(metrics, "inboxd_sink_unavailable", &format!("sink=\"{sink}\""))
}
