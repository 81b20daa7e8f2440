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

// Paths spelled out: the browser tests include this file with `#[path]`, which would
// otherwise look for these beside it.
#[path = "support/binary.rs"]
mod binary;
#[path = "support/delegated.rs"]
pub mod delegated;
#[path = "support/json_schema.rs"]
pub mod json_schema;
#[path = "support/outbound.rs"]
pub mod outbound;

// The browser tests include this file too and use none of these.
#[allow(unused_imports)]
pub use binary::{Binary, count_lines, torn_lines};

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

    /// GETs from the control API; panics on a non-2xx or unreadable answer, so a check that
    /// "nothing happened" never passes on an error it did not look at.
    pub async fn control_get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {status}, unreadable body: {e}"));
        assert!(status.is_success(), "GET {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {status}, not JSON ({e}): {text}"))
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
        let answer = self.control_get("/_emulator/requests").await;
        answer["requests"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("request log without a 'requests' array: {answer}"))
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
        let app = inboxd::daemon::Daemon::build(config).await.expect("daemon builds");
        let addr = app.local_addr();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Daemon { stop, handle, addr }
    }

    /// Starts the daemon in-process from a config file it reloads on change.
    pub async fn start_with_reload(&self, path: &Path) -> Daemon {
        let config = inboxd::config::load_file(path).unwrap_or_else(|e| panic!("config: {e}"));
        let app = inboxd::daemon::Daemon::build(config)
            .await
            .expect("daemon builds")
            .reload_from(path.to_path_buf());
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
        eventually(limit, || async { self.events().len() >= n }).await;
        self.events()
    }
}

/// The message events (`inboxd.message.v1`) of an NDJSON event file; other event kinds in the
/// file are skipped. Panics on a complete line that is not a JSON object, or a message event
/// that does not parse: only a last line without its newline (a write cut short by a kill, or
/// still being written) is ignored.
pub fn read_events(path: &Path) -> Vec<MessageEvent> {
    complete_lines(path)
        .into_iter()
        .filter(|e| e["schema"] == "inboxd.message.v1")
        .map(|e| {
            serde_json::from_value(e.clone()).unwrap_or_else(|err| panic!("message event does not parse ({err}): {e}"))
        })
        .collect()
}

/// Every complete (newline-terminated) line of an NDJSON file, parsed; no file yet is no line.
/// Panics when the file cannot be read or a complete line is not a JSON object.
pub fn complete_lines(path: &Path) -> Vec<Value> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| {
                    panic!(
                        "line {} of {} is not a JSON object: {}",
                        i + 1,
                        path.display(),
                        String::from_utf8_lossy(l)
                    )
                })
        })
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

// ---------------------------------------------------------------------------------------
// Helpers for the resilience, token, pipeline and CLI tests (resilience.rs, tokens.rs,
// pipeline.rs, cli.rs).
// ---------------------------------------------------------------------------------------

/// The bearer token the `with_api_token` configs accept on `/v1`.
pub const API_TOKEN: &str = "api-token-7d41c2e9b8";

/// Adds `api_tokens = ["dev:API_TOKEN"]` to the `[server]` section of a generated config.
pub fn with_api_token(toml: &str) -> String {
    insert_after(
        toml,
        "shutdown_grace = \"10s\"\n",
        &format!("api_tokens = [\"dev:{API_TOKEN}\"]\n"),
    )
}

/// Adds `lines` to the `[defaults]` section of a generated config.
pub fn with_defaults(toml: &str, lines: &str) -> String {
    insert_after(toml, "start_at = \"all\"\n", lines)
}

/// Adds `lines` to the `[microsoft]` section of a generated config.
pub fn with_microsoft(toml: &str, lines: &str) -> String {
    let anchor = toml
        .lines()
        .find(|l| l.starts_with("graph_url = "))
        .map(|l| format!("{l}\n"))
        .expect("generated config has graph_url");
    insert_after(toml, &anchor, lines)
}

fn insert_after(toml: &str, anchor: &str, lines: &str) -> String {
    assert!(toml.contains(anchor), "config has no `{}`", anchor.trim());
    let mut lines = lines.to_string();
    if !lines.ends_with('\n') {
        lines.push('\n');
    }
    toml.replacen(anchor, &format!("{anchor}{lines}"), 1)
}

/// Parses an RFC 3339 time of the request log.
pub fn log_time(entry: &Value) -> time::OffsetDateTime {
    let s = entry["time"]
        .as_str()
        .unwrap_or_else(|| panic!("log entry without time: {entry}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("log time {s}: {e}"))
}

/// True for a token request (`…/oauth2/v2.0/token`) in the request log.
pub fn is_token_request(entry: &Value) -> bool {
    entry["path"]
        .as_str()
        .is_some_and(|p| p.ends_with("/oauth2/v2.0/token"))
}

/// True for a Graph request (`/v1.0/…`) in the request log.
pub fn is_graph_request(entry: &Value) -> bool {
    entry["path"].as_str().is_some_and(|p| p.starts_with("/v1.0/"))
}

/// Polls `check` until it yields `Ok`, and returns that. When `limit` passes first, panics
/// saying what was awaited and what `check` saw last (its `Err`).
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `check` holds; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Env {
    /// Injects a fault (`POST /_emulator/faults`).
    pub async fn fault(&self, rule: Value) -> Value {
        self.control("/_emulator/faults", rule).await
    }

    /// Removes every fault rule.
    pub async fn clear_faults(&self) {
        let resp = self
            .http
            .delete(format!("{}/_emulator/faults", self.url))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "clearing faults: {}", resp.status());
    }

    /// Changes emulator settings.
    pub async fn settings(&self, patch: Value) -> Value {
        self.control("/_emulator/settings", patch).await
    }

    /// Events in the file sink as raw JSON (what routing reads, not what our type parses).
    pub fn raw_events(&self) -> Vec<Value> {
        complete_lines(&self.events_path())
    }

    /// The `inboxd.mailbox_state.v1` events of `mailbox` in the file sink, in order.
    pub fn state_events(&self, mailbox: &str) -> Vec<Value> {
        self.raw_events()
            .into_iter()
            .filter(|e| e["schema"] == "inboxd.mailbox_state.v1" && e["mailbox"] == mailbox)
            .collect()
    }

    /// The messages of a folder as the emulator holds them.
    pub async fn folder_messages(&self, address: &str, folder: &str) -> Vec<Value> {
        let listing = self
            .control_get(&format!("/_emulator/mailboxes/{address}/folders/{folder}/messages"))
            .await;
        listing
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("folder listing of {address}/{folder} is not an array: {listing}"))
    }

    /// An app-only access token of the test app, straight from the emulator's token endpoint.
    pub async fn app_token(&self) -> String {
        let resp: Value = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {resp}"))
            .to_string()
    }

    /// A Graph request with an app token; returns the status and the body (JSON or null).
    pub async fn graph(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1.0/{}", self.url, path.trim_start_matches('/')))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Daemon {
    /// `GET /v1/mailboxes` with [`API_TOKEN`]: address → view.
    pub async fn mailbox_views(&self) -> HashMap<String, Value> {
        mailbox_views(self.addr).await
    }

    /// The state of one mailbox in `/v1/mailboxes`.
    pub async fn state(&self, address: &str) -> String {
        let views = self.mailbox_views().await;
        let view = views
            .get(address)
            .unwrap_or_else(|| panic!("{address} not in /v1/mailboxes"));
        view["state"].as_str().unwrap_or_default().to_string()
    }
}

/// The path of a request-log entry, percent-decoded (the daemon may send `a%40b` for `a@b`).
pub fn log_path(entry: &Value) -> String {
    let raw = entry["path"].as_str().unwrap_or_default().as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Env {
    /// Injects `rule` for every request whose path names the mailbox `address`, however the
    /// address is spelled: the daemon builds `users/a%40b` itself but follows Graph's links,
    /// which say `users/a@b`, and fault prefixes match the raw path. The rule's prefix is
    /// `/v1.0/users/{local part}`, so no other mailbox of the test may start with that local part.
    pub async fn fault_for_mailbox(&self, address: &str, mut rule: Value) {
        let local = address.split('@').next().unwrap_or(address);
        rule["path_prefix"] = Value::String(format!("/v1.0/users/{local}"));
        self.fault(rule).await;
    }
}

/// The value of the first sample of metric `name` whose labels contain `labels`, in
/// Prometheus / OpenMetrics text.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let metric = series.split('{').next().unwrap_or_default();
            metric == name && series.contains(labels)
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

impl Daemon {
    /// `GET /v1/quarantine` with [`API_TOKEN`]: the entries, newest first.
    pub async fn quarantine(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/quarantine", Some(API_TOKEN)).await;
        assert_eq!(status, 200, "/v1/quarantine: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["quarantine"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("/v1/quarantine: {body}"))
    }
}

impl Env {
    /// The emulator's clock now.
    pub async fn emulator_now(&self) -> time::OffsetDateTime {
        let now = self.control("/_emulator/clock", json!({"advance_secs": 0})).await["now"]
            .as_str()
            .unwrap()
            .to_string();
        time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339).unwrap()
    }

    /// Delivers a text message whose receipt time is `received_at`.
    pub async fn deliver_received(&self, address: &str, subject: &str, received_at: time::OffsetDateTime) -> Value {
        let at = received_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        self.control(
            &format!("/_emulator/mailboxes/{address}/messages"),
            json!({
                "from": {"name": "Customer", "address": "customer@example.net"},
                "to": [{"name": "", "address": address}],
                "subject": subject,
                "body": {"content_type": "text", "content": format!("Body of {subject}")},
                "received_at": at,
            }),
        )
        .await
    }
}

// ============================================================================================
// Shared small helpers
// ============================================================================================

/// A test mailbox address in the emulator's domain.
pub fn addr(name: &str) -> String {
    format!("{name}@contoso.test")
}

/// A free loopback port (for a listen address that must survive a restart, or one nobody
/// serves; another process could take it in between, which a test can live with).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client that does not follow redirects (the tests look at `Location` themselves).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET with the API token: status, `Location` header, body.
pub async fn api_get(daemon: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    get_url(&format!("http://{daemon}{path}"), true).await
}

/// GET any URL without following redirects: status, `Location` header, body.
pub async fn get_url(url: &str, bearer: bool) -> (u16, Option<String>, String) {
    let mut req = client().get(url);
    if bearer {
        req = req.bearer_auth(API_TOKEN);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| l.to_str().unwrap().to_string());
    (status, location, resp.text().await.unwrap_or_default())
}

/// `GET /v1/mailboxes` of the daemon at `daemon`, with [`API_TOKEN`]: address → view.
pub async fn mailbox_views(daemon: SocketAddr) -> HashMap<String, Value> {
    let (status, _, body) = api_get(daemon, "/v1/mailboxes").await;
    assert_eq!(status, 200, "/v1/mailboxes: {body}");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/v1/mailboxes is not JSON ({e}): {body}"));
    body["mailboxes"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("/v1/mailboxes without a 'mailboxes' array: {body}"))
        .into_iter()
        .map(|v| {
            let address = v["address"]
                .as_str()
                .unwrap_or_else(|| panic!("view without an address: {v}"));
            (address.to_string(), v)
        })
        .collect()
}

/// The last sequence number of the request log (0 when empty).
pub async fn last_seq(env: &Env) -> u64 {
    env.requests()
        .await
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Request-log entries after `since`.
pub async fn requests_since(env: &Env, since: u64) -> Vec<Value> {
    env.requests()
        .await
        .into_iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > since))
        .collect()
}
