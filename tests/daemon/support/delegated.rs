//! Helpers of the delegated-mailbox tests: config, emulator set-up, the daemon's API as
//! those tests read it, the sink, captured logs and the store file.

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::time::Duration;

use inboxd::auth::seal::Sealer;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::support::{
    API_TOKEN, CLIENT, Daemon, Env, TENANT, addr, client, eventually, get_url, is_graph_request, is_token_request,
    log_path, mailbox_views, metric, with_api_token,
};

/// `store.encryption_key` of every config here (as `dev:`), so the tests can open the store.
pub const STORE_KEY: &str = "delegated-test-store-key";
/// What the emulator grants to minted refresh tokens.
pub const SCOPES: &str = "offline_access Mail.ReadWrite Mail.Send";
/// Schema of the state-change events in the sink.
pub const STATE_SCHEMA: &str = "inboxd.mailbox_state.v1";
/// Schema of the message events in the sink.
pub const MESSAGE_SCHEMA: &str = "inboxd.message.v1";
/// A second app registration (in the test tenant unless said otherwise).
pub const OTHER_CLIENT: &str = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716";
pub const OTHER_SECRET: &str = "other-app-secret";
/// A second tenant, so token-endpoint faults can target one app's requests only.
pub const TENANT2: &str = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";
/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
pub const LIMIT: Duration = Duration::from_secs(30);
/// States that are flags (a human must act).
pub const FLAGS: [&str; 4] = ["needs_reconsent", "credential_invalid", "access_denied", "not_found"];

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// The generated config (app-only `app_only` mailboxes of app `test`, 250 ms polling) with the
/// API token and the store key, then `extra` (more apps and mailboxes).
pub fn config(env: &Env, app_only: &[String], extra: &str) -> String {
    let toml = with_api_token(&env.config(app_only, "250ms"));
    assert!(toml.contains("[store]\n"), "generated config has a [store] section");
    let toml = toml.replacen(
        "[store]\n",
        &format!("[store]\nencryption_key = \"dev:{STORE_KEY}\"\n"),
        1,
    );
    format!("{toml}{extra}")
}

pub fn delegated(address: &str, app: &str) -> String {
    format!("\n[[mailboxes]]\naddress = \"{address}\"\napp = \"{app}\"\naccess = \"delegated\"\n")
}

pub fn app_only(address: &str, app: &str) -> String {
    format!("\n[[mailboxes]]\naddress = \"{address}\"\napp = \"{app}\"\n")
}

pub fn app(name: &str, tenant: &str, client_id: &str, secret: &str) -> String {
    format!(
        "\n[[apps]]\nname = \"{name}\"\ntenant_id = \"{tenant}\"\nclient_id = \"{client_id}\"\nclient_secret = \"dev:{secret}\"\n"
    )
}

// ---------------------------------------------------------------------------------------
// Emulator
// ---------------------------------------------------------------------------------------

pub async fn register_app(env: &Env, tenant: &str, client_id: &str, secret: &str) {
    env.control(
        "/_emulator/apps",
        json!({"tenant_id": tenant, "client_id": client_id, "client_secret": secret, "roles": ["Mail.ReadWrite", "Mail.Send"]}),
    )
    .await;
}

/// A refresh token issued by the emulator, as another connector would hand it over.
pub async fn mint(env: &Env, tenant: &str, client_id: &str, address: &str) -> String {
    let answer = env
        .control(
            "/_emulator/refresh-tokens",
            json!({"tenant_id": tenant, "client_id": client_id, "address": address, "scopes": SCOPES}),
        )
        .await;
    answer["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {answer}"))
        .to_string()
}

/// Three active mailboxes over two apps, as the app-credential tests need them.
pub struct TwoApps {
    /// App-only, app `test`.
    pub own: String,
    /// Delegated, app `test`, its grant imported.
    pub user: String,
    /// App-only, app `other` (registered here).
    pub other: String,
    /// The config the daemon runs with.
    pub toml: String,
    /// The daemon, with all three mailboxes active.
    pub daemon: Daemon,
}

/// Starts [`TwoApps`] with mailboxes `{prefix}-own`, `{prefix}-user` and `{prefix}-other`.
pub async fn two_apps(env: &Env, prefix: &str) -> TwoApps {
    register_app(env, TENANT, OTHER_CLIENT, OTHER_SECRET).await;
    let (own, user, other) = (
        addr(&format!("{prefix}-own")),
        addr(&format!("{prefix}-user")),
        addr(&format!("{prefix}-other")),
    );
    env.mailboxes(&[own.clone(), user.clone(), other.clone()]).await;
    let extra = format!(
        "{}{}{}",
        app("other", TENANT, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "test"),
        app_only(&other, "other")
    );
    let toml = config(env, std::slice::from_ref(&own), &extra);
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    for m in [&own, &user, &other] {
        wait_state(env, daemon.addr, m, "active", LIMIT).await;
    }
    TwoApps {
        own,
        user,
        other,
        toml,
        daemon,
    }
}

// ---------------------------------------------------------------------------------------
// The daemon's API
// ---------------------------------------------------------------------------------------

/// `POST /v1/mailboxes/{mailbox}/refresh-token`.
pub async fn import(daemon: SocketAddr, mailbox: &str, token: &str) -> (u16, String) {
    let resp = client()
        .post(format!("http://{daemon}/v1/mailboxes/{mailbox}/refresh-token"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

pub async fn view(daemon: SocketAddr, mailbox: &str) -> Value {
    mailbox_views(daemon)
        .await
        .remove(mailbox)
        .unwrap_or_else(|| panic!("{mailbox} not in /v1/mailboxes"))
}

/// Waits (bounded) until `mailbox` is in `state`; returns its view, or panics with what it
/// showed instead and the state events so far.
pub async fn wait_state(env: &Env, daemon: SocketAddr, mailbox: &str, state: &str, limit: Duration) -> Value {
    let reached = eventually(limit, || async { view(daemon, mailbox).await["state"] == state }).await;
    let v = view(daemon, mailbox).await;
    assert!(
        reached,
        "{mailbox} did not reach {state} within {limit:?}; it shows {v:#}\nstate events: {:#?}",
        state_events(env, mailbox)
    );
    v
}

pub async fn metrics(daemon: SocketAddr) -> String {
    let (status, _, body) = get_url(&format!("http://{daemon}/metrics"), false).await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// `inboxd_mailboxes{state}` (absent counts as 0).
pub async fn in_state(daemon: SocketAddr, state: &str) -> f64 {
    metric(
        &metrics(daemon).await,
        "inboxd_mailboxes",
        &format!("state=\"{state}\""),
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// The sink
// ---------------------------------------------------------------------------------------

/// `inboxd.mailbox_state.v1` events of `mailbox`, raw, in file order.
pub fn state_events(env: &Env, mailbox: &str) -> Vec<Value> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == STATE_SCHEMA && e["mailbox"] == mailbox)
        .collect()
}

/// How many state events moved `mailbox` into `state`.
pub fn events_into(env: &Env, mailbox: &str, state: &str) -> usize {
    state_events(env, mailbox)
        .iter()
        .filter(|e| e["state"] == state)
        .count()
}

/// Subjects of the messages of `mailbox` delivered to the sink.
pub fn delivered(env: &Env, mailbox: &str) -> Vec<String> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == MESSAGE_SCHEMA && e["mailbox"] == mailbox)
        .filter_map(|e| e["subject"].as_str().map(str::to_string))
        .collect()
}

/// Waits (bounded) until a message with `subject` of `mailbox` is in the sink.
pub async fn wait_delivered(env: &Env, mailbox: &str, subject: &str, limit: Duration) -> bool {
    eventually(limit, || async { delivered(env, mailbox).iter().any(|s| s == subject) }).await
}

// ---------------------------------------------------------------------------------------
// Logs of the in-process daemon
// ---------------------------------------------------------------------------------------

/// JSON log lines of this test process (the daemon runs in-process).
pub static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

pub struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a process-wide subscriber writing JSON lines (as the binary does) into [`LOGS`].
/// Tests filter by mailbox address, which is unique per test, so sharing a process is fine.
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// Captured WARN lines about `mailbox` that announce a state change into `state`.
pub fn warn_lines(mailbox: &str, state: &str) -> Vec<Value> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    logs.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|l| l["level"] == "WARN" && l["mailbox"] == mailbox)
        .filter(|l| l["to"] == state || l["state"] == state)
        .collect()
}

// ---------------------------------------------------------------------------------------

pub fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// A token request the endpoint refused (a re-probe of a token-class flag).
pub fn refused_token_request(e: &Value) -> bool {
    is_token_request(e) && e["status"].as_u64().is_some_and(|s| s >= 400)
}

/// A Graph request naming `mailbox` (a re-probe of a Graph-class flag).
pub fn graph_request_for(mailbox: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e: &Value| is_graph_request(e) && log_path(e).contains(mailbox)
}

// ---------------------------------------------------------------------------------------
// The store file
// ---------------------------------------------------------------------------------------

/// The SQLite store of a test, opened beside the daemon, and the key its tokens are sealed with.
pub struct StoreFile {
    pub pool: sqlx::SqlitePool,
    pub sealer: Sealer,
}

impl StoreFile {
    pub async fn open(env: &Env) -> StoreFile {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(env.dir.path().join("inboxd.db"))
            .busy_timeout(Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("the store file opens");
        StoreFile {
            pool,
            sealer: Sealer::new(&SecretString::from(STORE_KEY)),
        }
    }

    /// The refresh token stored for `mailbox`, unsealed (None before the first one).
    pub async fn refresh_token(&self, mailbox: &str) -> Option<String> {
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed_token FROM delegated_tokens WHERE mailbox = ?1")
                .bind(mailbox)
                .fetch_optional(&self.pool)
                .await
                .expect("delegated_tokens readable");
        let sealed = sealed?;
        let token = self
            .sealer
            .open(mailbox, &sealed)
            .unwrap_or_else(|| panic!("the stored token of {mailbox} does not open with store.encryption_key"));
        Some(token.expose_secret().to_string())
    }
}

/// Every refresh token the store held, in order, as observed by polling.
#[derive(Default)]
pub struct Rotations {
    pub seen: Vec<String>,
}

impl Rotations {
    /// Polls the store until it held `n` distinct tokens (bounded); returns whether it did.
    pub async fn until(&mut self, store: &StoreFile, mailbox: &str, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.observe(store, mailbox).await;
            if self.seen.len() >= n {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn observe(&mut self, store: &StoreFile, mailbox: &str) {
        if let Some(t) = store.refresh_token(mailbox).await
            && self.seen.last() != Some(&t)
        {
            self.seen.push(t);
        }
    }
}
