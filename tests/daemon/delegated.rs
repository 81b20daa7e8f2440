//! Delegated mailboxes and flags: one case per class of the
//! classification table (state, reason, `aadsts`, API, metric, one state event, one WARN
//! line), refresh-token rotation across `kill -9` and 92 emulated days, transient token
//! failures that only back off, the consent flow without restart, an expired secret, the
//! fallback app, and refresh tokens kept out of the store file and TRACE logs.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use inboxd::auth::seal::Sealer;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::support::{
    API_TOKEN, CLIENT, Env, SECRET, SECRET_ENV, TENANT, eventually, is_graph_request, is_token_request, log_path,
    metric, with_api_token, with_microsoft,
};

/// `store.encryption_key` of every config here (as `dev:`), so the tests can open the store.
const STORE_KEY: &str = "delegated-test-store-key";
/// What the emulator grants to minted refresh tokens.
const SCOPES: &str = "offline_access Mail.ReadWrite Mail.Send";
/// Schema of the state-change events in the sink.
const STATE_SCHEMA: &str = "inboxd.mailbox_state.v1";
/// Schema of the message events in the sink.
const MESSAGE_SCHEMA: &str = "inboxd.message.v1";
/// A second app registration (in the test tenant unless said otherwise).
const OTHER_CLIENT: &str = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716";
const OTHER_SECRET: &str = "other-app-secret";
/// A second tenant, so token-endpoint faults can target one app's requests only.
const TENANT2: &str = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";
/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(30);
/// States that are flags (a human must act).
const FLAGS: [&str; 4] = ["needs_reconsent", "credential_invalid", "access_denied", "not_found"];

fn addr(name: &str) -> String {
    format!("{name}@contoso.test")
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// The generated config (app-only `app_only` mailboxes of app `test`, 250 ms polling) with the
/// API token and the store key, then `extra` (more apps and mailboxes).
fn config(env: &Env, app_only: &[String], extra: &str) -> String {
    let toml = with_api_token(&env.config(app_only, "250ms"));
    assert!(toml.contains("[store]\n"), "generated config has a [store] section");
    let toml = toml.replacen(
        "[store]\n",
        &format!("[store]\nencryption_key = \"dev:{STORE_KEY}\"\n"),
        1,
    );
    format!("{toml}{extra}")
}

fn delegated(address: &str, app: &str) -> String {
    format!("\n[[mailboxes]]\naddress = \"{address}\"\napp = \"{app}\"\naccess = \"delegated\"\n")
}

fn app_only(address: &str, app: &str) -> String {
    format!("\n[[mailboxes]]\naddress = \"{address}\"\napp = \"{app}\"\n")
}

fn app(name: &str, tenant: &str, client_id: &str, secret: &str) -> String {
    format!(
        "\n[[apps]]\nname = \"{name}\"\ntenant_id = \"{tenant}\"\nclient_id = \"{client_id}\"\nclient_secret = \"dev:{secret}\"\n"
    )
}

// ---------------------------------------------------------------------------------------
// Emulator
// ---------------------------------------------------------------------------------------

async fn register_app(env: &Env, tenant: &str, client_id: &str, secret: &str) {
    env.control(
        "/_emulator/apps",
        json!({"tenant_id": tenant, "client_id": client_id, "client_secret": secret, "roles": ["Mail.ReadWrite", "Mail.Send"]}),
    )
    .await;
}

/// A refresh token issued by the emulator, as another connector would hand it over.
async fn mint(env: &Env, tenant: &str, client_id: &str, address: &str) -> String {
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

/// The last sequence number of the request log (0 when empty).
async fn last_seq(env: &Env) -> u64 {
    env.requests()
        .await
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Request-log entries after `since`.
async fn requests_since(env: &Env, since: u64) -> Vec<Value> {
    env.requests()
        .await
        .into_iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > since))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The daemon's API
// ---------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET with the API token: status, `Location` header, body.
async fn api_get(daemon: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    get_url(&format!("http://{daemon}{path}"), true).await
}

/// GET any URL without following redirects: status, `Location` header, body.
async fn get_url(url: &str, bearer: bool) -> (u16, Option<String>, String) {
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

/// `POST /v1/mailboxes/{mailbox}/refresh-token`.
async fn import(daemon: SocketAddr, mailbox: &str, token: &str) -> (u16, String) {
    let resp = client()
        .post(format!("http://{daemon}/v1/mailboxes/{mailbox}/refresh-token"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

/// `GET /v1/mailboxes`: address → view.
async fn views(daemon: SocketAddr) -> HashMap<String, Value> {
    let (status, _, body) = api_get(daemon, "/v1/mailboxes").await;
    assert_eq!(status, 200, "/v1/mailboxes: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["mailboxes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v["address"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

async fn view(daemon: SocketAddr, mailbox: &str) -> Value {
    views(daemon)
        .await
        .remove(mailbox)
        .unwrap_or_else(|| panic!("{mailbox} not in /v1/mailboxes"))
}

/// Waits (bounded) until `mailbox` is in `state`; returns its view, or panics with what it
/// showed instead and the state events so far.
async fn wait_state(env: &Env, daemon: SocketAddr, mailbox: &str, state: &str, limit: Duration) -> Value {
    let reached = eventually(limit, || async { view(daemon, mailbox).await["state"] == state }).await;
    let v = view(daemon, mailbox).await;
    assert!(
        reached,
        "{mailbox} did not reach {state} within {limit:?}; it shows {v:#}\nstate events: {:#?}",
        state_events(env, mailbox)
    );
    v
}

async fn metrics(daemon: SocketAddr) -> String {
    let (status, _, body) = get_url(&format!("http://{daemon}/metrics"), false).await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// `inboxd_mailboxes{state}` (absent counts as 0).
async fn in_state(daemon: SocketAddr, state: &str) -> f64 {
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
fn state_events(env: &Env, mailbox: &str) -> Vec<Value> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == STATE_SCHEMA && e["mailbox"] == mailbox)
        .collect()
}

/// How many state events moved `mailbox` into `state`.
fn events_into(env: &Env, mailbox: &str, state: &str) -> usize {
    state_events(env, mailbox)
        .iter()
        .filter(|e| e["state"] == state)
        .count()
}

/// Subjects of the messages of `mailbox` delivered to the sink.
fn delivered(env: &Env, mailbox: &str) -> Vec<String> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == MESSAGE_SCHEMA && e["mailbox"] == mailbox)
        .filter_map(|e| e["subject"].as_str().map(str::to_string))
        .collect()
}

/// Waits (bounded) until a message with `subject` of `mailbox` is in the sink.
async fn wait_delivered(env: &Env, mailbox: &str, subject: &str, limit: Duration) -> bool {
    eventually(limit, || async { delivered(env, mailbox).iter().any(|s| s == subject) }).await
}

// ---------------------------------------------------------------------------------------
// Logs of the in-process daemon
// ---------------------------------------------------------------------------------------

/// JSON log lines of this test process (the daemon runs in-process).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

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
fn capture_logs() {
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
fn warn_lines(mailbox: &str, state: &str) -> Vec<Value> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    logs.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|l| l["level"] == "WARN" && l["mailbox"] == mailbox)
        .filter(|l| l["to"] == state || l["state"] == state)
        .collect()
}

// ---------------------------------------------------------------------------------------
// One flag as every surface shows it
// ---------------------------------------------------------------------------------------

/// What a flagged mailbox must show.
#[derive(Clone, Copy)]
struct Flag<'a> {
    mailbox: &'a str,
    state: &'a str,
    aadsts: Option<u64>,
    /// Words the reason must contain (case-insensitive): what happened and what to do.
    reason_has: &'a [&'a str],
    /// `inboxd_mailboxes{state}` expected once every mailbox of the test settled.
    count: f64,
    /// State events and WARN lines of the mailbox before the cause was introduced.
    mark: Mark,
}

/// How many state events of a mailbox, and WARN lines announcing a state, there were.
#[derive(Clone, Copy)]
struct Mark {
    events: usize,
    warns: usize,
}

impl Mark {
    fn now(env: &Env, mailbox: &str, state: &str) -> Mark {
        Mark {
            events: state_events(env, mailbox).len(),
            warns: warn_lines(mailbox, state).len(),
        }
    }
}

/// State events into `state` since `mark`.
fn events_since(env: &Env, mailbox: &str, state: &str, mark: Mark) -> Vec<Value> {
    state_events(env, mailbox)
        .into_iter()
        .skip(mark.events)
        .filter(|e| e["state"] == state)
        .collect()
}

/// Words that tell a human what to do.
const ACTIONS: [&str; 14] = [
    "must",
    "should",
    "grant",
    "ask ",
    "create",
    "check",
    "open the",
    "rotate",
    "re-consent",
    "consent again",
    "retries",
    "allow",
    "fix ",
    "add ",
];

/// Checks a flag: `/v1/mailboxes` (state, reason, aadsts, consent_url, since), the metric,
/// then waits until the daemon re-probed (`reprobe` matches a request-log entry made after
/// the flag) and checks that exactly one state event and one WARN line announced it.
/// Returns the problems found (empty when all is right), so one run reports all of them.
async fn check_flag(env: &Env, daemon: SocketAddr, flag: &Flag<'_>, reprobe: impl Fn(&Value) -> bool) -> Vec<String> {
    let Flag {
        mailbox,
        state,
        aadsts,
        reason_has,
        count,
        mark,
    } = *flag;
    let mut problems = Vec::new();
    let v = wait_state(env, daemon, mailbox, state, LIMIT).await;
    let flagged_seq = last_seq(env).await;
    let reason = v["reason"].as_str().unwrap_or_default().to_lowercase();
    for word in reason_has {
        if !reason.contains(&word.to_lowercase()) {
            problems.push(format!(
                "{mailbox}: reason does not mention '{word}': {:?}",
                v["reason"]
            ));
        }
    }
    if !ACTIONS.iter().any(|a| reason.contains(a)) {
        problems.push(format!("{mailbox}: reason does not say what to do: {:?}", v["reason"]));
    }
    if v["aadsts"].as_u64() != aadsts {
        problems.push(format!("{mailbox}: aadsts {} (expected {aadsts:?})", v["aadsts"]));
    }
    let expected_link = format!("/oauth/start?mailbox={}", mailbox.replace('@', "%40"));
    match (state == "needs_reconsent", v["consent_url"].as_str()) {
        (true, Some(url)) if url.ends_with(&expected_link) => {}
        (true, other) => problems.push(format!("{mailbox}: consent_url {other:?}, expected …{expected_link}")),
        (false, None) => {}
        (false, Some(url)) => problems.push(format!("{mailbox}: consent_url {url} shown for {state}")),
    }
    let since_ok = v["since"]
        .as_str()
        .is_some_and(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok());
    if !since_ok {
        problems.push(format!("{mailbox}: since is not RFC 3339: {}", v["since"]));
    }
    if !eventually(LIMIT, || async { in_state(daemon, state).await == count }).await {
        problems.push(format!(
            "inboxd_mailboxes{{state=\"{state}\"}} is {} (expected {count})",
            in_state(daemon, state).await
        ));
    }

    // A flagged mailbox is re-probed; a re-probe that finds the same cause is no state change.
    // Its task is sequential: once a second re-probe is sent, the first one's answer has been
    // acted on (a duplicate state event would be in the file by then).
    let reprobed = eventually(LIMIT, || async {
        requests_since(env, flagged_seq)
            .await
            .iter()
            .filter(|e| reprobe(e))
            .count()
            >= 2
    })
    .await;
    if !reprobed {
        problems.push(format!(
            "{mailbox}: not re-probed twice within {LIMIT:?} of being flagged"
        ));
    }
    let events = events_since(env, mailbox, state, mark);
    let flapped: Vec<Value> = state_events(env, mailbox)
        .into_iter()
        .skip(mark.events)
        .filter(|e| e["state"] != state)
        .collect();
    if !flapped.is_empty() {
        problems.push(format!(
            "{mailbox}: left {state} while the cause persisted: {:#?}",
            flapped
                .iter()
                .map(|e| (&e["from"], &e["state"], &e["since"]))
                .collect::<Vec<_>>()
        ));
    }
    if events.len() != 1 {
        problems.push(format!(
            "{mailbox}: {} `{STATE_SCHEMA}` events into {state} (expected exactly one): {:#?}",
            events.len(),
            events
                .iter()
                .map(|e| (&e["from"], &e["reason"], &e["since"]))
                .collect::<Vec<_>>()
        ));
    }
    if let Some(e) = events.first()
        && (e["aadsts"].as_u64() != aadsts || e["reason"].as_str().is_none())
    {
        problems.push(format!("{mailbox}: state event lacks the aadsts or reason: {e}"));
    }
    let warns: Vec<Value> = warn_lines(mailbox, state).into_iter().skip(mark.warns).collect();
    if warns.len() != 1 {
        problems.push(format!(
            "{mailbox}: {} WARN lines announcing {state} (expected exactly one): {:#?}",
            warns.len(),
            warns
        ));
    }
    if let Some(w) = warns.first() {
        if w["aadsts"].as_u64() != aadsts {
            problems.push(format!("{mailbox}: WARN line without aadsts {aadsts:?}: {w}"));
        }
        // Entra's trace and correlation ids come with every token-endpoint error.
        let text = w.to_string().to_lowercase();
        if aadsts.is_some() && !(text.contains("trace") && text.contains("correlation")) {
            problems.push(format!(
                "{mailbox}: WARN line without Entra's trace/correlation id: {w}"
            ));
        }
    }
    problems
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// A token request the endpoint refused (a re-probe of a token-class flag).
fn refused_token_request(e: &Value) -> bool {
    is_token_request(e) && e["status"].as_u64().is_some_and(|s| s >= 400)
}

/// A Graph request naming `mailbox` (a re-probe of a Graph-class flag).
fn graph_request_for(mailbox: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e: &Value| is_graph_request(e) && log_path(e).contains(mailbox)
}

// ---------------------------------------------------------------------------------------
// The store file
// ---------------------------------------------------------------------------------------

/// The SQLite store of a test, opened beside the daemon, and the key its tokens are sealed with.
struct StoreFile {
    pool: sqlx::SqlitePool,
    sealer: Sealer,
}

impl StoreFile {
    async fn open(env: &Env) -> StoreFile {
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
    async fn refresh_token(&self, mailbox: &str) -> Option<String> {
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
struct Rotations {
    seen: Vec<String>,
}

impl Rotations {
    /// Polls the store until it held `n` distinct tokens (bounded); returns whether it did.
    async fn until(&mut self, store: &StoreFile, mailbox: &str, n: usize, limit: Duration) -> bool {
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

    async fn observe(&mut self, store: &StoreFile, mailbox: &str) {
        if let Some(t) = store.refresh_token(mailbox).await
            && self.seen.last() != Some(&t)
        {
            self.seen.push(t);
        }
    }
}

/// Every file of the SQLite store (database, WAL, shared memory), concatenated.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("inboxd.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    bytes
}

/// Places where something shaped like an emulator refresh token (`1.A` + ≥ 64 base64url
/// characters) appears in clear.
fn token_shaped(bytes: &[u8]) -> Vec<String> {
    let url_safe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let mut found = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if w == b"1.A" {
            let run = bytes[i + 3..].iter().take_while(|b| url_safe(b)).count();
            if run >= 64 {
                found.push(String::from_utf8_lossy(&bytes[i..i + 3 + run.min(24)]).into_owned() + "…");
            }
        }
    }
    found
}

/// Places where something shaped like a signed JWT (an access token) appears.
fn jwt_shaped(bytes: &[u8]) -> Vec<String> {
    let jwt = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'.';
    let mut found = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if w == b"eyJ" {
            let run = &bytes[i..];
            let len = run.iter().take_while(|b| jwt(b)).count();
            if len >= 100 && run[..len].iter().filter(|b| **b == b'.').count() == 2 {
                found.push(String::from_utf8_lossy(&run[..24]).into_owned() + "…");
            }
        }
    }
    found
}

/// Whether `haystack` holds `token` or a 32-character piece of it.
fn contains_token(haystack: &[u8], token: &str) -> bool {
    let piece = &token.as_bytes()[3..35.min(token.len())];
    haystack.windows(piece.len()).any(|w| w == piece)
}

// ---------------------------------------------------------------------------------------
// One case per class of the table
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_grant_is_flagged_needs_reconsent_with_the_code_and_a_consent_link() {
    capture_logs();
    let env = Env::new().await;
    // Long enough that the access token outlives the failed refresh (as a real one does by
    // up to five minutes): the flag must hold anyway.
    env.settings(json!({"token_lifetime_secs": 6})).await;
    let (user, other) = (addr("rc-user"), addr("rc-other"));
    env.mailboxes(&[user.clone(), other.clone()]).await;
    let daemon = env
        .start(&config(&env, std::slice::from_ref(&other), &delegated(&user, "test")))
        .await;
    let token = mint(&env, TENANT, CLIENT, &user).await;
    let (status, body) = import(daemon.addr, &user, &token).await;
    assert_eq!(status, 200, "import: {body}");
    env.deliver(&user, "before the revocation").await;
    assert!(wait_delivered(&env, &user, "before the revocation", Duration::from_secs(10)).await);
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;

    let mark = Mark::now(&env, &user, "needs_reconsent");
    env.control("/_emulator/revoke", json!({"address": user, "aadsts": 50173}))
        .await;
    let flag = Flag {
        mailbox: &user,
        state: "needs_reconsent",
        aadsts: Some(50173),
        reason_has: &["50173", "consent"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, refused_token_request).await;

    // Every other mailbox carries on.
    env.deliver(&other, "while the user is flagged").await;
    if !wait_delivered(&env, &other, "while the user is flagged", Duration::from_secs(10)).await {
        problems.push(format!("{other} stopped delivering while {user} was flagged"));
    }
    // A new grant resumes it by itself.
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "second import: {body}");
    env.deliver(&user, "after the new grant").await;
    if !wait_delivered(&env, &user, "after the new grant", Duration::from_secs(10)).await {
        problems.push(format!("{user} did not deliver after a new grant was imported"));
    }
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_secret_flags_every_mailbox_of_that_app_and_no_other() {
    capture_logs();
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    register_app(&env, TENANT, OTHER_CLIENT, OTHER_SECRET).await;
    let (own, user, other) = (addr("ci-own"), addr("ci-user"), addr("ci-other"));
    env.mailboxes(&[own.clone(), user.clone(), other.clone()]).await;
    let extra = format!(
        "{}{}{}",
        app("other", TENANT, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "test"),
        app_only(&other, "other")
    );
    let daemon = env.start(&config(&env, std::slice::from_ref(&own), &extra)).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    for m in [&own, &user, &other] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }

    let marks: HashMap<&str, Mark> = [&own, &user]
        .iter()
        .map(|m| (m.as_str(), Mark::now(&env, m, "credential_invalid")))
        .collect();
    // Someone rotated the secret in Entra; inboxd still has the old one.
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": "rotated-by-someone-else"}),
    )
    .await;
    let mut problems = Vec::new();
    for m in [&own, &user] {
        let flag = Flag {
            mailbox: m,
            state: "credential_invalid",
            aadsts: Some(7000215),
            reason_has: &["7000215", "secret"],
            count: 2.0,
            mark: marks[m.as_str()],
        };
        wait_state(&env, daemon.addr, m, "credential_invalid", LIMIT).await;
        problems.extend(check_flag(&env, daemon.addr, &flag, refused_token_request).await);
    }
    env.deliver(&other, "other app carries on").await;
    if !wait_delivered(&env, &other, "other app carries on", Duration::from_secs(10)).await {
        problems.push(format!("{other} (another app) stopped delivering"));
    }
    let other_view = view(daemon.addr, &other).await;
    if other_view["state"] != "active" || !state_events(&env, &other).iter().all(|e| e["state"] == "active") {
        problems.push(format!(
            "{other} (another app) was touched: {other_view}; events {:?}",
            state_events(&env, &other)
        ));
    }

    // The secret inboxd holds becomes valid again: both resume by themselves.
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": SECRET}),
    )
    .await;
    env.deliver(&own, "secret fixed").await;
    if !wait_delivered(&env, &own, "secret fixed", Duration::from_secs(30)).await {
        problems.push(format!(
            "{own} did not resume by itself once the secret was valid again"
        ));
    }
    if !eventually(Duration::from_secs(30), || async {
        view(daemon.addr, &user).await["state"] == "active"
    })
    .await
    {
        problems.push(format!(
            "{user} did not resume by itself: {}",
            view(daemon.addr, &user).await
        ));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_policy_flags_only_that_mailbox_access_denied() {
    capture_logs();
    let env = Env::new().await;
    let (denied, open) = (addr("ad-denied"), addr("ad-open"));
    env.mailboxes(&[denied.clone(), open.clone()]).await;
    let daemon = env.start(&config(&env, &[denied.clone(), open.clone()], "")).await;
    for m in [&denied, &open] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    let mark = Mark::now(&env, &denied, "access_denied");
    env.control(&format!("/_emulator/mailboxes/{denied}/access"), json!({"deny": true}))
        .await;
    let flag = Flag {
        mailbox: &denied,
        state: "access_denied",
        aadsts: None,
        reason_has: &["403", "ErrorAccessDenied"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, graph_request_for(&denied)).await;
    env.deliver(&open, "same app, other mailbox").await;
    if !wait_delivered(&env, &open, "same app, other mailbox", Duration::from_secs(10)).await {
        problems.push(format!("{open} (same app) stopped delivering"));
    }
    if view(daemon.addr, &open).await["state"] != "active" {
        problems.push(format!("{open} left active: {}", view(daemon.addr, &open).await));
    }
    // Access granted again: it resumes by itself.
    env.control(&format!("/_emulator/mailboxes/{denied}/access"), json!({"deny": false}))
        .await;
    env.deliver(&denied, "access granted").await;
    if !wait_delivered(&env, &denied, "access granted", Duration::from_secs(20)).await {
        problems.push(format!("{denied} did not resume once access was granted"));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailbox_that_does_not_exist_is_not_found_and_the_others_carry_on() {
    capture_logs();
    let env = Env::new().await;
    let (missing, present) = (addr("nf-missing"), addr("nf-present"));
    env.mailboxes(std::slice::from_ref(&present)).await;
    env.deliver(&present, "present mailbox").await;
    let mark = Mark::now(&env, &missing, "not_found");
    let daemon = env.start(&config(&env, &[missing.clone(), present.clone()], "")).await;
    let flag = Flag {
        mailbox: &missing,
        state: "not_found",
        aadsts: None,
        reason_has: &["404"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, graph_request_for(&missing)).await;
    if !wait_delivered(&env, &present, "present mailbox", Duration::from_secs(10)).await {
        problems.push(format!("{present} did not deliver beside a missing mailbox"));
    }
    // The mailbox gets created: it resumes by itself.
    env.mailboxes(std::slice::from_ref(&missing)).await;
    env.deliver(&missing, "now it exists").await;
    if !wait_delivered(&env, &missing, "now it exists", Duration::from_secs(20)).await {
        problems.push(format!("{missing} did not resume once created"));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

/// Timeouts, 5xx, 429, `temporarily_unavailable` and the transient AADSTS codes from the
/// token endpoint, for an app-only and a delegated mailbox: `backoff`, never a flag, and both
/// recover by themselves. Each mailbox's app lives in its own tenant, so each meets exactly
/// its own three faults (the pacing doubles per failure: more would not fit the time budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_timeouts_5xx_and_temporarily_unavailable_only_back_off() {
    capture_logs();
    let env = Env::new().await;
    register_app(&env, TENANT2, OTHER_CLIENT, OTHER_SECRET).await;
    let own = addr("tr-own");
    let user = "tr-user@fabrikam.test".to_string();
    env.mailboxes(std::slice::from_ref(&own)).await;
    env.control("/_emulator/mailboxes", json!({"tenant_id": TENANT2, "address": user}))
        .await;
    let extra = format!(
        "{}{}",
        app("deleg", TENANT2, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "deleg")
    );
    let toml = with_microsoft(
        &config(&env, std::slice::from_ref(&own), &extra),
        "request_timeout = \"1s\"",
    );

    // First run: the delegated mailbox gets its grant.
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT2, OTHER_CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    for m in [&own, &user] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    daemon.stop().await;
    let before: HashMap<&str, usize> = [&own, &user]
        .iter()
        .map(|m| (m.as_str(), state_events(&env, m).len()))
        .collect();

    // Second run starts into a failing token endpoint.
    let faults = [
        (TENANT, json!({"status": 503})),
        (TENANT, json!({"status": 400, "oauth_error": "temporarily_unavailable"})),
        (TENANT, json!({"delay_ms": 2500})),
        (TENANT2, json!({"reset": true})),
        (TENANT2, json!({"aadsts": 50196})),
        (TENANT2, json!({"aadsts": 90055})),
    ];
    for (tenant, mut rule) in faults {
        rule["path_prefix"] = json!(format!("/{tenant}/oauth2"));
        rule["times"] = json!(1);
        env.fault(rule).await;
    }
    env.deliver(&own, "through the token outage").await;
    env.deliver(&user, "through the token outage").await;
    let daemon = env.start(&toml).await;

    let mut problems = Vec::new();
    for m in [&own, &user] {
        if !wait_delivered(&env, m, "through the token outage", Duration::from_secs(45)).await {
            problems.push(format!("{m} did not recover by itself: {}", view(daemon.addr, m).await));
        }
    }
    let left = env.control_get("/_emulator/faults").await;
    if left["faults"].as_array().is_none_or(|a| !a.is_empty()) {
        problems.push(format!("not every fault fired: {left}"));
    }
    let log = env.requests().await;
    let statuses: Vec<u64> = log
        .iter()
        .filter(|e| is_token_request(e))
        .filter_map(|e| e["status"].as_u64())
        .filter(|s| *s != 200)
        .collect();
    for expected in [503, 400, 429] {
        if !statuses.contains(&expected) {
            problems.push(format!("no token request answered {expected}: {statuses:?}"));
        }
    }
    for m in [&own, &user] {
        let events = state_events(&env, m);
        let new = &events[before[m.as_str()]..];
        let states: Vec<&str> = new.iter().filter_map(|e| e["state"].as_str()).collect();
        if states.iter().any(|s| FLAGS.contains(s)) || states.iter().any(|s| !["backoff", "active"].contains(s)) {
            problems.push(format!("{m} was flagged by transient failures: {new:#?}"));
        }
        if !states.contains(&"backoff") {
            problems.push(format!("{m} never showed backoff while its token failed: {states:?}"));
        }
        for w in warn_lines(m, "backoff") {
            let reason = w["reason"].as_str().unwrap_or_default();
            if !reason.contains("retries by itself") {
                problems.push(format!("{m}: backoff WARN does not say it retries by itself: {w}"));
            }
        }
    }
    for m in [&own, &user] {
        if !eventually(LIMIT, || async { view(daemon.addr, m).await["state"] == "active" }).await {
            problems.push(format!("{m} is not active: {}", view(daemon.addr, m).await));
        }
    }
    let text = metrics(daemon.addr).await;
    for state in FLAGS {
        let n = metric(&text, "inboxd_mailboxes", &format!("state=\"{state}\"")).unwrap_or(0.0);
        if n != 0.0 {
            problems.push(format!("inboxd_mailboxes{{state=\"{state}\"}} = {n}"));
        }
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Rotation across kill -9
// ---------------------------------------------------------------------------------------

/// With 2-second access tokens the daemon refreshes about once a second. Halfway and at the
/// end of 92 emulated days the emulator clock jumps 46 days: refresh tokens unused for 90
/// days die (AADSTS700082), so only a daemon that stores and uses each rotated token keeps
/// going. It is killed right after a refresh was answered and must carry on after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_refresh_tokens_survive_kill_9_through_ninety_two_days() {
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let user = addr("rotation");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let path = env.write_config(&config(&env, &[], &delegated(&user, "test")));
    let mut daemon = env.spawn_binary(&path, 1).await;
    let imported = mint(&env, TENANT, CLIENT, &user).await;
    let (status, body) = import(daemon.addr(), &user, &imported).await;
    assert_eq!(status, 200, "import: {body}\n{}", daemon.stderr());
    let store = StoreFile::open(&env).await;
    let mut rotations = Rotations::default();
    env.deliver(&user, "day 0").await;
    assert!(
        wait_delivered(&env, &user, "day 0", Duration::from_secs(10)).await,
        "{}",
        daemon.stderr()
    );

    for day in [46, 92] {
        let n = rotations.seen.len() + 4;
        assert!(
            rotations.until(&store, &user, n, Duration::from_secs(15)).await,
            "the daemon stopped rotating before day {day}: {} tokens stored; {}\n{}",
            rotations.seen.len(),
            view(daemon.addr(), &user).await,
            daemon.stderr()
        );
        env.control("/_emulator/clock", json!({"advance_secs": 46 * 86_400}))
            .await;
    }
    let n = rotations.seen.len() + 4;
    assert!(
        rotations.until(&store, &user, n, Duration::from_secs(15)).await,
        "the daemon stopped rotating after day 92: {}\n{}",
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );

    // SIGKILL as soon as the emulator has answered a refresh (before or just after it was stored).
    let prefix = format!("/{TENANT}/oauth2");
    let since = last_seq(&env).await;
    let answered = eventually(Duration::from_secs(10), || async {
        let entries: Value = env
            .control_get(&format!("/_emulator/requests?since={since}&path_prefix={prefix}"))
            .await;
        entries["requests"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["status"] == 200))
    })
    .await;
    daemon.kill_9();
    assert!(answered, "no refresh within 10 s before the kill");
    rotations.observe(&store, &user).await;
    let before_kill = rotations.seen.len();

    let daemon = env.spawn_binary(&path, 2).await;
    env.deliver(&user, "day 92, after kill -9").await;
    assert!(
        wait_delivered(&env, &user, "day 92, after kill -9", Duration::from_secs(15)).await,
        "no delivery after the restart: {}\n{}",
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );
    let total = (before_kill + 3).max(21);
    assert!(
        rotations.until(&store, &user, total, Duration::from_secs(30)).await,
        "after the restart only {} refresh tokens were stored in all (expected {total}); {}\n{}",
        rotations.seen.len(),
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );
    wait_state(&env, daemon.addr(), &user, "active", LIMIT).await;

    let mut distinct = rotations.seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), rotations.seen.len(), "a refresh token was stored twice");
    assert!(
        rotations.seen.iter().skip(1).all(|t| *t != imported),
        "the imported token came back after rotation"
    );
    let refused: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| is_token_request(e) && e["status"] != 200)
        .collect();
    assert!(refused.is_empty(), "token requests refused: {refused:#?}");
    // Flagged before the import (no grant yet); never once it had one.
    let events = state_events(&env, &user);
    let first_active = events
        .iter()
        .position(|e| e["state"] == "active")
        .expect("a state event into active");
    let left: Vec<&Value> = events[first_active..]
        .iter()
        .filter(|e| e["state"] != "active")
        .collect();
    assert!(left.is_empty(), "the mailbox left active: {left:#?}");
}

// ---------------------------------------------------------------------------------------
// The consent flow
// ---------------------------------------------------------------------------------------

/// A port that was free a moment ago (the redirect URI must be known before the daemon starts;
/// another process could take it in between, which a test can live with).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v1/mailboxes/{mailbox}/consent` → the authorization URL.
async fn consent_url(daemon: SocketAddr, mailbox: &str) -> String {
    let (status, _, body) = api_get(daemon, &format!("/v1/mailboxes/{mailbox}/consent")).await;
    assert_eq!(status, 200, "consent URL: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["url"].as_str().expect("url").to_string()
}

/// The emulator's `/authorize` answers at once: the redirect back to the daemon.
async fn authorize(url: &str) -> String {
    let (status, location, body) = get_url(url, false).await;
    assert_eq!(status, 302, "authorize: {body}");
    location.expect("authorize redirects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_flow_resumes_a_flagged_mailbox_without_restart_and_states_are_single_use() {
    capture_logs();
    let env = Env::new().await;
    let (user, declined, expired) = (addr("cf-user"), addr("cf-declined"), addr("cf-expired"));
    env.mailboxes(&[user.clone(), declined.clone(), expired.clone()]).await;
    let port = free_port();
    let toml = config(
        &env,
        &[],
        &format!(
            "{}{}{}",
            delegated(&user, "test"),
            delegated(&declined, "test"),
            delegated(&expired, "test")
        ),
    )
    .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
    let daemon = env.start(&toml).await;
    let base = format!("http://127.0.0.1:{port}");

    // No grant yet: flagged, with the reason and the link a human opens.
    let v = wait_state(&env, daemon.addr, &user, "needs_reconsent", LIMIT).await;
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no consent has been given"), "{v}");
    assert!(reason.contains("consent"), "{v}");
    assert_eq!(v["aadsts"], Value::Null, "{v}");
    let link = v["consent_url"].as_str().expect("consent_url").to_string();
    assert_eq!(link, format!("{base}/oauth/start?mailbox=cf-user%40contoso.test"));
    assert_eq!(
        events_into(&env, &user, "needs_reconsent"),
        1,
        "{:#?}",
        state_events(&env, &user)
    );

    // The API's consent URL: authorization code + PKCE S256, scopes, login_hint, redirect URI.
    let url = consent_url(daemon.addr, &user).await;
    assert!(
        url.starts_with(&format!("{}/{TENANT}/oauth2/v2.0/authorize?", env.url)),
        "{url}"
    );
    assert_eq!(query_param(&url, "response_type").as_deref(), Some("code"), "{url}");
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256"),
        "{url}"
    );
    assert!(query_param(&url, "code_challenge").is_some(), "{url}");
    assert_eq!(query_param(&url, "login_hint").as_deref(), Some(user.as_str()), "{url}");
    assert_eq!(query_param(&url, "client_id").as_deref(), Some(CLIENT), "{url}");
    let redirect = format!("{base}/oauth/callback");
    assert_eq!(
        query_param(&url, "redirect_uri").as_deref(),
        Some(redirect.as_str()),
        "{url}"
    );
    let scope = query_param(&url, "scope").unwrap_or_default();
    for s in ["offline_access", "Mail.ReadWrite", "Mail.Send"] {
        assert!(scope.contains(s), "scope {scope:?} lacks {s}");
    }

    // Consent → callback → active and delivering, without restart.
    env.deliver(&user, "after consent").await;
    let callback = authorize(&url).await;
    assert!(callback.starts_with(&format!("{redirect}?")), "{callback}");
    assert!(query_param(&callback, "code").is_some(), "{callback}");
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 200, "callback: {page}");
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;
    assert!(
        wait_delivered(&env, &user, "after consent", Duration::from_secs(10)).await,
        "no delivery after consent"
    );

    // The same state again is refused, and the mailbox stays active.
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 400, "replayed callback accepted: {page}");
    assert!(page.contains("already used"), "{page}");
    let (status, _, page) = get_url(&format!("{redirect}?code=made-up&state=never-issued"), false).await;
    assert_eq!(status, 400, "unknown state accepted: {page}");
    assert_eq!(view(daemon.addr, &user).await["state"], "active");

    // An expired state is refused: the store's copy is aged (the daemon's clock cannot move).
    let url = consent_url(daemon.addr, &expired).await;
    let state = query_param(&url, "state").expect("state");
    let store = StoreFile::open(&env).await;
    let past = (time::OffsetDateTime::now_utc() - time::Duration::minutes(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let aged = sqlx::query("UPDATE consent_states SET expires_at = ?1 WHERE state = ?2")
        .bind(&past)
        .bind(&state)
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(aged.rows_affected(), 1, "the consent state is not in the store");
    let (status, _, page) = get_url(&authorize(&url).await, false).await;
    assert_eq!(status, 400, "expired state accepted: {page}");
    assert!(page.contains("expired"), "{page}");
    assert_eq!(view(daemon.addr, &expired).await["state"], "needs_reconsent");

    // The user declines: the refusal is shown and the mailbox stays flagged. The link shown in
    // /v1/mailboxes starts a fresh flow.
    env.settings(json!({"consent": "deny"})).await;
    let link = view(daemon.addr, &declined).await["consent_url"]
        .as_str()
        .expect("consent_url")
        .to_string();
    let (status, location, body) = get_url(&link, false).await;
    assert_eq!(status, 302, "consent link: {body}");
    let callback = authorize(&location.expect("consent link redirects")).await;
    assert_eq!(
        query_param(&callback, "error").as_deref(),
        Some("access_denied"),
        "{callback}"
    );
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 400, "declined consent accepted: {page}");
    assert!(page.contains("refused"), "{page}");
    let v = view(daemon.addr, &declined).await;
    assert_eq!(v["state"], "needs_reconsent", "{v}");
    assert!(v["consent_url"].is_string(), "{v}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Expired secret
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_secret_flags_all_of_its_mailboxes_and_no_other_until_it_is_replaced() {
    capture_logs();
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    register_app(&env, TENANT, OTHER_CLIENT, OTHER_SECRET).await;
    let (own, user, other) = (addr("ex-own"), addr("ex-user"), addr("ex-other"));
    env.mailboxes(&[own.clone(), user.clone(), other.clone()]).await;
    let extra = format!(
        "{}{}{}",
        app("other", TENANT, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "test"),
        app_only(&other, "other")
    );
    let toml = config(&env, std::slice::from_ref(&own), &extra);
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    for m in [&own, &user, &other] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }

    env.control(&format!("/_emulator/apps/{CLIENT}/secret"), json!({"expired": true}))
        .await;
    for m in [&own, &user] {
        let v = wait_state(&env, daemon.addr, m, "credential_invalid", LIMIT).await;
        assert_eq!(v["aadsts"], 7000222, "{v}");
        assert!(v["reason"].as_str().unwrap_or_default().contains("secret"), "{v}");
    }
    env.deliver(&other, "other app, secret expired elsewhere").await;
    assert!(
        wait_delivered(
            &env,
            &other,
            "other app, secret expired elsewhere",
            Duration::from_secs(10)
        )
        .await,
        "another app's mailbox stopped"
    );
    assert_eq!(view(daemon.addr, &other).await["state"], "active");
    assert_eq!(in_state(daemon.addr, "credential_invalid").await, 2.0);
    daemon.stop().await;

    // The operator creates a new secret and restarts with it.
    let new_secret = "replacement-secret";
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": new_secret}),
    )
    .await;
    let fixed = toml.replacen(
        &format!("client_secret = \"env:{SECRET_ENV}\""),
        &format!("client_secret = \"dev:{new_secret}\""),
        1,
    );
    assert_ne!(fixed, toml, "the test app's secret line was not found");
    env.deliver(&own, "after the new secret").await;
    env.deliver(&user, "after the new secret").await;
    let daemon = env.start(&fixed).await;
    for m in [&own, &user] {
        assert!(
            wait_delivered(&env, m, "after the new secret", Duration::from_secs(10)).await,
            "{m} did not come back with the new secret: {}",
            view(daemon.addr, m).await
        );
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    assert_eq!(in_state(daemon.addr, "credential_invalid").await, 0.0);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Fallback app
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fallback_app_keeps_mail_flowing_while_the_grant_needs_consent() {
    capture_logs();
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    register_app(&env, TENANT, OTHER_CLIENT, OTHER_SECRET).await;
    let user = addr("fb-user");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let extra = format!(
        "{}{}fallback_app = \"daemon-app\"\n",
        app("daemon-app", TENANT, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "test")
    );
    let daemon = env.start(&config(&env, &[], &extra)).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    env.deliver(&user, "on the delegated grant").await;
    assert!(wait_delivered(&env, &user, "on the delegated grant", Duration::from_secs(10)).await);
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;

    let mark = state_events(&env, &user).len();
    env.control("/_emulator/revoke", json!({"address": user, "aadsts": 50173}))
        .await;
    let v = wait_state(&env, daemon.addr, &user, "needs_reconsent", LIMIT).await;
    let seq = last_seq(&env).await;
    assert_eq!(v["aadsts"], 50173, "{v}");
    assert!(v["consent_url"].is_string(), "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("fallback") && reason.contains("daemon-app"), "{v}");

    env.deliver(&user, "on the fallback app").await;
    assert!(
        wait_delivered(&env, &user, "on the fallback app", Duration::from_secs(10)).await,
        "mail stopped with the grant: {}",
        view(daemon.addr, &user).await
    );
    // The delegated access token outlives its refresh token by up to its 2-second lifetime;
    // after that only the fallback app can be reading the mailbox.
    let fallback_reads = eventually(Duration::from_secs(10), || async {
        let graph: Vec<Value> = requests_since(&env, seq)
            .await
            .into_iter()
            .filter(|e| is_graph_request(e) && log_path(e).contains(&user))
            .collect();
        graph.iter().filter(|e| e["app"] == OTHER_CLIENT).count() >= 4
    })
    .await;
    let graph: Vec<Value> = requests_since(&env, seq)
        .await
        .into_iter()
        .filter(|e| is_graph_request(e) && log_path(e).contains(&user))
        .collect();
    let apps: Vec<&str> = graph.iter().map(|e| e["app"].as_str().unwrap_or("?")).collect();
    assert!(fallback_reads, "the fallback app did not take over reading: {apps:?}");
    let events = &state_events(&env, &user)[mark..];
    let states: Vec<&str> = events.iter().filter_map(|e| e["state"].as_str()).collect();
    assert!(
        states.iter().all(|s| *s == "needs_reconsent"),
        "the mailbox did not stay flagged while on the fallback: {states:?}\napps of its Graph requests: {apps:?}"
    );
    assert_eq!(view(daemon.addr, &user).await["state"], "needs_reconsent");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Secrets at rest and in logs
// ---------------------------------------------------------------------------------------

/// The real binary with `RUST_LOG` set (the support helper removes it); killed on drop.
struct Traced {
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Traced {
    async fn spawn(env: &Env, config: &Path, rust_log: &str) -> Traced {
        let log = env.dir.path().join("inboxd-trace.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inboxd"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("inboxd binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads stdout to the end so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addr) = rx.try_iter().find_map(|l| {
                l.strip_prefix("listening on http://")
                    .map(|a| a.trim().parse().unwrap())
            }) {
                return Traced { child, addr, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "inboxd exited at start with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(std::time::Instant::now() < deadline, "inboxd printed no address");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    async fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "inboxd did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_refresh_token_in_clear_in_the_store_file_or_in_trace_logs() {
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let user = addr("secretive");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let path = env.write_config(&config(&env, &[], &delegated(&user, "test")));
    let mut daemon = Traced::spawn(&env, &path, "trace").await;

    // Two imports (a migration retried), then several rotations.
    let mut known = vec![
        mint(&env, TENANT, CLIENT, &user).await,
        mint(&env, TENANT, CLIENT, &user).await,
    ];
    for t in &known {
        let (status, body) = import(daemon.addr, &user, t).await;
        assert_eq!(status, 200, "import: {body}");
        assert!(
            !contains_token(body.as_bytes(), t),
            "the import answer echoes the token"
        );
    }
    env.deliver(&user, "with a delegated grant").await;
    assert!(wait_delivered(&env, &user, "with a delegated grant", Duration::from_secs(10)).await);
    let store = StoreFile::open(&env).await;
    let mut rotations = Rotations::default();
    assert!(
        rotations.until(&store, &user, 4, Duration::from_secs(15)).await,
        "fewer than 4 stored refresh tokens: {}",
        rotations.seen.len()
    );
    store.pool.close().await;
    known.extend(rotations.seen.iter().cloned());
    let (_, _, listing) = api_get(daemon.addr, "/v1/mailboxes").await;
    daemon.stop().await;

    let bytes = store_bytes(env.dir.path());
    assert!(!bytes.is_empty(), "no store file");
    let in_store: Vec<usize> = (0..known.len())
        .filter(|i| contains_token(&bytes, &known[*i]))
        .collect();
    assert!(
        in_store.is_empty(),
        "refresh tokens {in_store:?} (of {}) are in the store file in clear",
        known.len()
    );
    assert_eq!(
        token_shaped(&bytes),
        Vec::<String>::new(),
        "token-shaped strings in the store file"
    );

    let log = std::fs::read(&daemon.log).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("\"level\":\"TRACE\""),
        "RUST_LOG=trace produced no TRACE line; the check below would prove nothing"
    );
    let in_log: Vec<usize> = (0..known.len()).filter(|i| contains_token(&log, &known[*i])).collect();
    assert!(
        in_log.is_empty(),
        "refresh tokens {in_log:?} (of {}) are in the log",
        known.len()
    );
    assert_eq!(
        token_shaped(&log),
        Vec::<String>::new(),
        "token-shaped strings in the log"
    );
    assert_eq!(jwt_shaped(&log), Vec::<String>::new(), "access tokens in the log");
    assert_eq!(token_shaped(listing.as_bytes()), Vec::<String>::new(), "/v1/mailboxes");
}
