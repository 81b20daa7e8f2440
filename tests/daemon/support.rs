//! An emulator, a temp dir, a config pointing at both, and the daemon in-process or as the
//! real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inboxd::emulator::{EmulatorOptions, RunningEmulator};
use inboxd::event::MessageEvent;
use serde_json::{Value, json};

pub const TENANT: &str = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b";
pub const CLIENT: &str = "8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b5c";
pub const SECRET: &str = "daemon-test-secret";
/// The env var the generated configs read the client secret from.
pub const SECRET_ENV: &str = "INBOXD_TEST_CLIENT_SECRET";

/// An emulator with the test app registered, and a scratch directory.
pub struct Env {
    /// The emulator.
    pub emu: RunningEmulator,
    /// Its base URL.
    pub url: String,
    /// Client for the control API.
    pub http: reqwest::Client,
    /// Store, event file and config live here.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Emulator over HTTP with the test app (Mail.ReadWrite + Mail.Send).
    pub async fn new() -> Env {
        Self::with(EmulatorOptions::default()).await
    }

    /// Emulator with options (TLS).
    pub async fn with(options: EmulatorOptions) -> Env {
        let emu = inboxd::emulator::spawn("127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("emulator starts");
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = emu.cert_pem() {
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
        }
        let env = Env {
            url: emu.url().to_string(),
            emu,
            http: builder.build().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        env.control(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET, "roles": ["Mail.ReadWrite", "Mail.Send"]}),
        )
        .await;
        env
    }

    /// POSTs to the control API; panics on a non-2xx answer.
    pub async fn control(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// GETs from the control API.
    pub async fn control_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates mailboxes in the test tenant.
    pub async fn mailboxes(&self, addresses: &[String]) {
        for a in addresses {
            self.control("/_emulator/mailboxes", json!({"tenant_id": TENANT, "address": a}))
                .await;
        }
    }

    /// Delivers a text message; returns the control API answer (`id`, `immutable_id`, …).
    pub async fn deliver(&self, address: &str, subject: &str) -> Value {
        self.control(
            &format!("/_emulator/mailboxes/{address}/messages"),
            json!({
                "from": {"name": "Customer", "address": "customer@example.net"},
                "to": [{"name": "", "address": address}],
                "subject": subject,
                "body": {"content_type": "text", "content": format!("Body of {subject}")},
            }),
        )
        .await
    }

    /// The emulator's request log.
    pub async fn requests(&self) -> Vec<Value> {
        self.control_get("/_emulator/requests").await["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Where the file sink writes.
    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("inbound.ndjson")
    }

    /// A config for `mailboxes` (start_at all, fast polling), plus `extra` TOML appended to
    /// `[defaults]`-free tail (e.g. more `[[mailboxes]]`).
    pub fn config(&self, mailboxes: &[String], poll: &str) -> String {
        let mut toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[store]
url = "sqlite://{db}"

[microsoft]
authority_host = "{url}"
graph_url = "{url}"

[sink]
type = "file"
path = "{events}"

[defaults]
poll_interval = "{poll}"
start_at = "all"

[[apps]]
name = "test"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = "env:{SECRET_ENV}"
"#,
            db = self.dir.path().join("inboxd.db").display(),
            url = self.url,
            events = self.events_path().display(),
        );
        for m in mailboxes {
            toml.push_str(&format!("\n[[mailboxes]]\naddress = \"{m}\"\napp = \"test\"\n"));
        }
        toml
    }

    /// Writes a config file into the temp dir.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("inboxd.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts the daemon in-process with this config.
    pub async fn start(&self, toml: &str) -> Daemon {
        let env: HashMap<String, String> = [(SECRET_ENV.to_string(), SECRET.to_string())].into();
        let config =
            inboxd::config::from_sources(toml, &env, self.dir.path()).unwrap_or_else(|e| panic!("config: {e}"));
        let app = inboxd::app::App::build(config).await.expect("daemon builds");
        let addr = app.local_addr();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Daemon { stop, handle, addr }
    }

    /// Events in the file sink so far.
    pub fn events(&self) -> Vec<MessageEvent> {
        read_events(&self.events_path())
    }

    /// Waits (bounded) until at least `n` events are in the file; returns them.
    pub async fn wait_for_events(&self, n: usize, limit: Duration) -> Vec<MessageEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let events = self.events();
            if events.len() >= n || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Parses an NDJSON event file (a torn last line from a killed writer is ignored).
pub fn read_events(path: &Path) -> Vec<MessageEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The daemon running in-process.
pub struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Its API address.
    pub addr: SocketAddr,
}

impl Daemon {
    /// Graceful stop; panics if the daemon failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }

    /// GET on the daemon's API.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new().get(format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}
