//! Secrets stay secret: the real binary at `RUST_LOG=trace` runs a full
//! scenario (two app-only mailboxes, one with a client secret and one with a certificate, a
//! delegated mailbox with an imported refresh token, a signed webhook sink, deliveries, replies,
//! several token refreshes, a Graph 401, a token-endpoint 503, refused API requests) and no
//! secret (client secrets, certificate key, API token, store key, webhook secret, refresh or
//! access tokens) appears in any log line, API answer, error message or webhook body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::delegated::mint;
use crate::support::{Env, TENANT, eventually, is_token_request};

/// App with a client secret, for the app-only mailbox [`FRONTDESK`].
const OPS_CLIENT: &str = "1d2c3b4a-5f6e-4d7c-8b9a-0a1b2c3d4e5f";
const OPS_SECRET: &str = "opsClientSecret-Q7vK2mXp9LwR4tZs8NbY3cHd";
/// App with a certificate, for the app-only mailbox [`BILLING`].
const CERT_CLIENT: &str = "2e3d4c5b-6a7f-4e8d-9c0b-1b2c3d4e5f60";
/// App with a client secret, for the delegated mailbox [`ALICE`] (refresh grants only).
const USERS_CLIENT: &str = "3f4e5d6c-7b8a-4f9e-8d1c-2c3d4e5f6071";
const USERS_SECRET: &str = "usersClientSecret-J3fH8sLq1VnW6eTy5RkU0aZg";
const API_TOKEN: &str = "apiToken-M4pX9qT2wK7zR1vB6nC8dF3gH5jL0sA";
const STORE_KEY: &str = "storeKey-Z8yW3vU6tS1rQ9pO4nM7lK2jI5hG0fE";
const WEBHOOK_SECRET: &str = "webhookSecret-B5cD8eF1gH4iJ7kL0mN3oP6qR9sT";

const OPS_SECRET_ENV: &str = "INBOXD_SECRETS_TEST_OPS_SECRET";
const USERS_SECRET_ENV: &str = "INBOXD_SECRETS_TEST_USERS_SECRET";
const CERT_ENV: &str = "INBOXD_SECRETS_TEST_CERTIFICATE";
const API_TOKEN_ENV: &str = "INBOXD_SECRETS_TEST_API_TOKEN";
const STORE_KEY_ENV: &str = "INBOXD_SECRETS_TEST_STORE_KEY";
const WEBHOOK_SECRET_ENV: &str = "INBOXD_SECRETS_TEST_WEBHOOK_SECRET";

const FRONTDESK: &str = "frontdesk@contoso.test";
const BILLING: &str = "billing@contoso.test";
const ALICE: &str = "alice@contoso.test";
const MAILBOXES: [&str; 3] = [FRONTDESK, BILLING, ALICE];
/// Bound on each wait for the daemon to make progress.
const LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------------------

/// One request the receiver got: `X-Inboxd-Timestamp`, `X-Inboxd-Signature`, body.
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A receiver on 127.0.0.1:0 that acknowledges every POST to `/events`.
async fn receiver() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/events",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    r.lock()
                        .unwrap()
                        .push((header("x-inboxd-timestamp"), header("x-inboxd-signature"), body));
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// The JSON bodies the receiver got so far.
fn webhook_events(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, _, body)| serde_json::from_str(body).ok())
        .collect()
}

/// Whether a message event with `subject` for `mailbox` arrived; its `graph_id` if so.
fn delivered(received: &Received, mailbox: &str, subject: &str) -> Option<String> {
    webhook_events(received)
        .into_iter()
        .find(|e| e["schema"] == "inboxd.message.v1" && e["mailbox"] == mailbox && e["subject"] == subject)
        .map(|e| e["graph_id"].as_str().unwrap_or_default().to_string())
}

/// Lowercase hex HMAC-SHA256 of `t.body` under the webhook secret.
fn signature(timestamp: &str, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// The real binary at TRACE
// ---------------------------------------------------------------------------------------

/// `inboxd run` with every secret in its environment and `RUST_LOG=trace`; killed on drop.
struct Child {
    child: std::process::Child,
    addr: SocketAddr,
    /// Its stderr (JSON log lines).
    log: std::path::PathBuf,
    /// Every line it printed on stdout.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Child {
    async fn spawn(env: &Env, config: &Path, certificate: &str) -> Child {
        let log = env.dir.path().join("inboxd-secrets.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inboxd"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "trace")
            .env(OPS_SECRET_ENV, OPS_SECRET)
            .env(USERS_SECRET_ENV, USERS_SECRET)
            .env(CERT_ENV, certificate)
            .env(API_TOKEN_ENV, API_TOKEN)
            .env(STORE_KEY_ENV, STORE_KEY)
            .env(WEBHOOK_SECRET_ENV, WEBHOOK_SECRET)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("inboxd binary starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().unwrap();
        let lines = stdout.clone();
        // Reads stdout to the end so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let printed = stdout.lock().unwrap().iter().find_map(|l: &String| {
                l.strip_prefix("listening on http://")
                    .map(|a| a.trim().parse::<SocketAddr>().expect("printed address parses"))
            });
            if let Some(addr) = printed {
                return Child {
                    child,
                    addr,
                    log,
                    stdout,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "inboxd exited at start with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "inboxd printed no address");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of its log, for failure messages.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    async fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "inboxd did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "inboxd exited with {exit} on SIGTERM:\n{}", self.tail());
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon's API, every answer kept
// ---------------------------------------------------------------------------------------

struct Api {
    base: String,
    http: reqwest::Client,
    /// (request, status, body) of every answer.
    answers: Mutex<Vec<(String, u16, String)>>,
}

impl Api {
    fn at(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            answers: Mutex::default(),
        }
    }

    /// Any request; the answer is recorded. `token` is the bearer token, `key` the
    /// `Idempotency-Key`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!("\nLocation: {l}"))
            .unwrap_or_default();
        let text = resp.text().await.unwrap_or_default();
        self.answers
            .lock()
            .unwrap()
            .push((format!("{method} {path}"), status, format!("{text}{location}")));
        (status, text)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.call(reqwest::Method::GET, path, Some(API_TOKEN), None, None).await
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, String) {
        self.call(reqwest::Method::POST, path, Some(API_TOKEN), key, Some(body))
            .await
    }

    /// `GET /v1/mailboxes/{mailbox}` → `state`.
    async fn state(&self, mailbox: &str) -> String {
        let (_, body) = self.get(&format!("/v1/mailboxes/{mailbox}")).await;
        serde_json::from_str::<Value>(&body).unwrap_or_default()["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A reply that must be accepted; returns the outbound id.
    async fn reply(&self, mailbox: &str, graph_id: &str, key: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/v1/mailboxes/{mailbox}/messages/{graph_id}/reply"),
                Some(key),
                &json!({"comment": "Thanks, we are on it."}),
            )
            .await;
        assert_eq!(status, 202, "reply in {mailbox} not accepted: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["id"]
            .as_str()
            .unwrap_or_else(|| panic!("202 without an id: {body}"))
            .to_string()
    }

    /// Waits (bounded) until outbound `id` reaches `status` (`sent` or `failed`).
    async fn wait_outbound(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (code, body) = self.get(&format!("/v1/outbound/{id}")).await;
            assert_eq!(code, 200, "GET /v1/outbound/{id}: {body}");
            let view: Value = serde_json::from_str(&body).unwrap();
            if view["status"] == status {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "outbound {id} not {status} within {LIMIT:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Looking for secrets
// ---------------------------------------------------------------------------------------

/// Where in `text` something shaped like an emulator refresh token (`1.A` + ≥ 64 base64url
/// characters) is.
fn refresh_token_shaped(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let url_safe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    (0..bytes.len().saturating_sub(2))
        .filter(|i| &bytes[*i..*i + 3] == b"1.A")
        .find(|i| bytes[i + 3..].iter().take_while(|b| url_safe(b)).count() >= 64)
}

/// Where in `text` something shaped like a signed JWT (three base64url parts, ≥ 100
/// characters, starting `eyJ`) is: an access token or a client assertion.
fn jwt_shaped(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let jwt = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'.';
    (0..bytes.len().saturating_sub(2))
        .filter(|i| &bytes[*i..*i + 3] == b"eyJ")
        .find(|i| {
            let run: Vec<u8> = bytes[*i..].iter().copied().take_while(jwt).collect();
            run.len() >= 100 && run.iter().filter(|b| **b == b'.').count() >= 2
        })
}

/// A secret and the strings that give it away (itself, pieces of it, encodings of it).
struct Needle {
    name: String,
    forms: Vec<String>,
}

impl Needle {
    /// Every `len`-character piece of `value` at a multiple of `len` (so any piece of the value
    /// at least `2 * len - 1` long contains one), the value itself, and its base64 alone and
    /// as HTTP Basic credentials with `client_id`.
    fn new(name: &str, value: &str, len: usize, client_id: Option<&str>) -> Needle {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut forms: Vec<String> = value
            .as_bytes()
            .chunks(len)
            .filter(|c| c.len() == len)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        forms.push(value.to_string());
        forms.push(b64.encode(value));
        if let Some(id) = client_id {
            forms.push(b64.encode(format!("{id}:{value}")));
        }
        Needle {
            name: name.to_string(),
            forms,
        }
    }

    /// A secret, found from any 23 characters of it on.
    fn secret(name: &str, value: &str, client_id: Option<&str>) -> Needle {
        Self::new(name, value, 12, client_id)
    }
}

/// What was found where: `source`, line, which secret, and the text around it.
fn scan(source: &str, text: &str, needles: &[Needle], found: &mut Vec<String>) {
    let excerpt = |line: &str, at: usize| -> String {
        let start = line.floor_char_boundary(at.saturating_sub(80));
        let end = line.ceil_char_boundary((at + 120).min(line.len()));
        line[start..end].to_string()
    };
    for (n, line) in text.lines().enumerate() {
        let mut hits: Vec<(String, usize)> = needles
            .iter()
            .filter_map(|needle| {
                let at = needle.forms.iter().find_map(|f| line.find(f.as_str()))?;
                Some((needle.name.clone(), at))
            })
            .collect();
        if let Some(at) = refresh_token_shaped(line) {
            hits.push(("a refresh-token-shaped string (1.A…)".into(), at));
        }
        if let Some(at) = jwt_shaped(line) {
            hits.push(("a JWT-shaped string (access token or assertion)".into(), at));
        }
        if let Some(at) = line.find("PRIVATE KEY") {
            hits.push(("a PEM private key marker".into(), at));
        }
        for (name, at) in hits {
            found.push(format!("{source} line {}: {name}: …{}…", n + 1, excerpt(line, at)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

async fn register(env: &Env, client_id: &str, credential: (&str, &str)) {
    let mut app = json!({"tenant_id": TENANT, "client_id": client_id, "roles": ["Mail.ReadWrite", "Mail.Send"]});
    app[credential.0] = Value::String(credential.1.to_string());
    env.control("/_emulator/apps", app).await;
}

fn config(env: &Env, sink: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
api_tokens = ["env:{API_TOKEN_ENV}"]

[store]
url = "sqlite://{db}"
encryption_key = "env:{STORE_KEY_ENV}"

[microsoft]
authority_host = "{url}"
graph_url = "{url}"

[sink]
type = "webhook"
url = "http://{sink}/events"
signing_secret = "env:{WEBHOOK_SECRET_ENV}"
timeout = "5s"

[defaults]
poll_interval = "250ms"
start_at = "all"

[[apps]]
name = "ops"
tenant_id = "{TENANT}"
client_id = "{OPS_CLIENT}"
client_secret = "env:{OPS_SECRET_ENV}"

[[apps]]
name = "certified"
tenant_id = "{TENANT}"
client_id = "{CERT_CLIENT}"
certificate = "env:{CERT_ENV}"

[[apps]]
name = "users"
tenant_id = "{TENANT}"
client_id = "{USERS_CLIENT}"
client_secret = "env:{USERS_SECRET_ENV}"

[[mailboxes]]
address = "{FRONTDESK}"
app = "ops"

[[mailboxes]]
address = "{BILLING}"
app = "certified"

[[mailboxes]]
address = "{ALICE}"
app = "users"
access = "delegated"
"#,
        db = env.dir.path().join("inboxd.db").display(),
        url = env.url,
    )
}

/// Successful token requests of `client_id` in the emulator's log.
async fn token_grants(env: &Env, client_id: &str) -> usize {
    env.requests()
        .await
        .iter()
        .filter(|e| is_token_request(e) && e["app"] == client_id && e["status"] == 200)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_trace_logs_api_answers_or_error_messages() {
    let env = Env::new().await;
    // Short tokens: every app refreshes several times during the scenario.
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["billing.inboxd.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_pem = key.serialize_pem();
    let certificate = format!("{key_pem}{}", cert.pem());
    register(&env, OPS_CLIENT, ("client_secret", OPS_SECRET)).await;
    register(&env, USERS_CLIENT, ("client_secret", USERS_SECRET)).await;
    register(&env, CERT_CLIENT, ("certificate_pem", &cert.pem())).await;
    let addresses: Vec<String> = MAILBOXES.iter().map(|m| m.to_string()).collect();
    env.mailboxes(&addresses).await;
    for m in MAILBOXES {
        env.deliver(m, &format!("first for {m}")).await;
    }

    let (sink, received) = receiver().await;
    let path = env.write_config(&config(&env, sink));
    let mut daemon = Child::spawn(&env, &path, &certificate).await;
    let api = Api::at(daemon.addr);
    let (status, body) = api.get("/v1/mailboxes").await;
    assert_eq!(status, 200, "/v1/mailboxes: {body}");
    api.get(&format!("/v1/mailboxes/{ALICE}/consent")).await;

    // The delegated grant arrives through the API; refused imports must not echo the token.
    let imported = mint(&env, TENANT, USERS_CLIENT, ALICE).await;
    let stray = mint(&env, TENANT, USERS_CLIENT, ALICE).await;
    let refresh_path = format!("/v1/mailboxes/{ALICE}/refresh-token");
    let (status, body) = api
        .post(
            "/v1/mailboxes/nobody@contoso.test/refresh-token",
            None,
            &json!({"refresh_token": stray}),
        )
        .await;
    assert!(
        (400..500).contains(&status),
        "import into an unknown mailbox: {status} {body}"
    );
    let (status, body) = api.post(&refresh_path, None, &json!({"refresh_token": [stray]})).await;
    assert!((400..500).contains(&status), "malformed import: {status} {body}");
    let (status, body) = api.post(&refresh_path, None, &json!({"refresh_token": imported})).await;
    assert_eq!(status, 200, "import: {body}\n{}", daemon.tail());

    // Mail reaches the sink from all three mailboxes.
    let all_first = eventually(LIMIT, || async {
        MAILBOXES
            .iter()
            .all(|m| delivered(&received, m, &format!("first for {m}")).is_some())
    })
    .await;
    assert!(
        all_first,
        "not every mailbox delivered its first message; webhook got {:#?}\nstates: {:?}\n{}",
        webhook_events(&received),
        [
            api.state(FRONTDESK).await,
            api.state(BILLING).await,
            api.state(ALICE).await
        ],
        daemon.tail()
    );

    // Failures: Graph says 401 once, the token endpoint 503 once; mail keeps flowing.
    env.fault_for_mailbox(
        FRONTDESK,
        json!({"status": 401, "code": "InvalidAuthenticationToken", "times": 1}),
    )
    .await;
    env.fault(json!({"path_prefix": format!("/{TENANT}/oauth2/v2.0/token"), "status": 503, "times": 1}))
        .await;
    for m in MAILBOXES {
        env.deliver(m, &format!("second for {m}")).await;
    }
    let all_second = eventually(LIMIT, || async {
        MAILBOXES
            .iter()
            .all(|m| delivered(&received, m, &format!("second for {m}")).is_some())
    })
    .await;
    assert!(all_second, "mail stopped after the faults:\n{}", daemon.tail());
    let faults_fired = eventually(LIMIT, || async {
        env.control_get("/_emulator/faults").await["faults"]
            .as_array()
            .is_some_and(|f| f.is_empty())
    })
    .await;
    assert!(
        faults_fired,
        "injected faults never fired: {}",
        env.control_get("/_emulator/faults").await
    );
    let failed: Vec<u64> = env
        .requests()
        .await
        .iter()
        .filter_map(|e| e["status"].as_u64())
        .filter(|s| *s == 401 || *s == 503)
        .collect();
    assert!(failed.len() >= 2, "the emulator logged no 401/503: {failed:?}");

    // Replies through the API, from the app-only and the delegated mailbox.
    let mut sent = Vec::new();
    for (m, key) in [(FRONTDESK, "secrets-reply-frontdesk"), (ALICE, "secrets-reply-alice")] {
        let graph_id = delivered(&received, m, &format!("first for {m}")).unwrap();
        let id = api.reply(m, &graph_id, key).await;
        sent.push(api.wait_outbound(&id, "sent").await);
    }
    // A reply Graph refuses (no such message): its error is shown by the API.
    let id = api
        .reply(FRONTDESK, "AAMkAGNoSuchMessage000", "secrets-reply-missing")
        .await;
    let failed_view = api.wait_outbound(&id, "failed").await;
    assert!(
        !failed_view["error"].is_null(),
        "a failed outbound without an error: {failed_view}"
    );

    // Refused API requests: wrong or no token, bad replies.
    let reply_path = format!(
        "/v1/mailboxes/{FRONTDESK}/messages/{}/reply",
        delivered(&received, FRONTDESK, &format!("first for {FRONTDESK}")).unwrap()
    );
    let wrong = format!("{API_TOKEN}-but-wrong");
    let (status, body) = api
        .call(reqwest::Method::GET, "/v1/mailboxes", Some(&wrong), None, None)
        .await;
    assert_eq!(status, 401, "a wrong API token: {body}");
    let (status, body) = api
        .call(reqwest::Method::GET, "/v1/mailboxes", Some("Ab"), None, None)
        .await;
    assert_eq!(status, 401, "a short wrong API token: {body}");
    let (status, body) = api.call(reqwest::Method::GET, "/v1/mailboxes", None, None, None).await;
    assert_eq!(status, 401, "no API token: {body}");
    let comment = json!({"comment": "hi"});
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            &reply_path,
            Some(&wrong),
            Some("k-wrong"),
            Some(&comment),
        )
        .await;
    assert_eq!(status, 401, "a reply with a wrong API token: {body}");
    let (status, body) = api.post(&reply_path, None, &comment).await;
    assert_eq!(status, 400, "a reply without Idempotency-Key: {body}");
    let both = json!({"comment": "hi", "body": {"content_type": "text", "content": "hi"}});
    let (status, body) = api.post(&reply_path, Some("k-both"), &both).await;
    assert_eq!(status, 400, "a reply with comment and body: {body}");
    let bad_attachment = json!({"comment": "hi", "attachments": [{"name": "a.txt", "content_base64": "not base64!"}]});
    let (status, body) = api.post(&reply_path, Some("k-attachment"), &bad_attachment).await;
    assert_eq!(status, 400, "a reply with a broken attachment: {body}");
    api.call(
        reqwest::Method::GET,
        "/oauth/callback?code=bogus&state=bogus",
        None,
        None,
        None,
    )
    .await;

    // Several refreshes of every kind of token.
    let refreshed = eventually(LIMIT, || async {
        token_grants(&env, USERS_CLIENT).await >= 3
            && token_grants(&env, OPS_CLIENT).await >= 2
            && token_grants(&env, CERT_CLIENT).await >= 2
    })
    .await;
    let grants = [
        token_grants(&env, USERS_CLIENT).await,
        token_grants(&env, OPS_CLIENT).await,
        token_grants(&env, CERT_CLIENT).await,
    ];
    assert!(
        refreshed,
        "too few token grants (delegated, secret, certificate): {grants:?}\n{}",
        daemon.tail()
    );
    for m in MAILBOXES {
        assert_eq!(api.state(m).await, "active", "{m} is not active:\n{}", daemon.tail());
    }

    // Everything the API shows.
    for path in ["/v1/mailboxes", "/v1/quarantine", "/metrics", "/readyz", "/livez"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for m in MAILBOXES {
        api.get(&format!("/v1/mailboxes/{m}")).await;
    }
    let (_, metrics) = api.get("/metrics").await;
    daemon.stop().await;

    // The webhook deliveries were signed with the secret (so it was in use).
    let bodies = received.lock().unwrap().clone();
    let unsigned: Vec<&String> = bodies
        .iter()
        .filter(|(t, s, body)| *s != format!("v1={}", signature(t, body)))
        .map(|(_, _, body)| body)
        .collect();
    assert!(
        unsigned.is_empty(),
        "webhook bodies without a valid signature: {unsigned:?}"
    );
    let outbound_sent = webhook_events(&received)
        .iter()
        .filter(|e| e["schema"] == "inboxd.outbound.v1" && e["status"] == "sent")
        .count();
    assert!(
        outbound_sent >= 2,
        "{outbound_sent} outbound 'sent' events; sent: {sent:?}"
    );
    assert!(!metrics.is_empty());

    // The search must not be vacuous: the log holds TRACE and DEBUG lines and the tokens'
    // traffic, and the answers are there.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let stdout = daemon.stdout.lock().unwrap().join("\n");
    for level in ["TRACE", "DEBUG"] {
        assert!(
            log.contains(&format!("\"level\":\"{level}\"")),
            "RUST_LOG=trace produced no {level} line; the search would prove nothing"
        );
    }
    assert!(log.lines().count() > 100, "only {} log lines", log.lines().count());
    assert!(stdout.contains("listening on"), "stdout: {stdout}");
    let answers = api.answers.lock().unwrap().clone();
    assert!(answers.len() > 20, "only {} API answers", answers.len());

    let mut needles = vec![
        Needle::secret("the client secret of app ops", OPS_SECRET, Some(OPS_CLIENT)),
        Needle::secret("the client secret of app users", USERS_SECRET, Some(USERS_CLIENT)),
        Needle::secret("the API token", API_TOKEN, None),
        Needle::secret("the store encryption key", STORE_KEY, None),
        Needle::secret("the webhook signing secret", WEBHOOK_SECRET, None),
        Needle::secret("the imported refresh token", &imported, None),
        Needle::secret("the refresh token of the refused import", &stray, None),
    ];
    // The emulator signs every access token with one header: its base64 starts each of them.
    let sample = env.app_token().await;
    let head = sample.split('.').next().unwrap();
    needles.push(Needle {
        name: "the start of an emulator access token".into(),
        forms: vec![format!("{head}."), "eyJ0eXAiOiJKV1Qi".into()],
    });
    // The key's base64 body, found from any 47 characters of it on (a PEM line is 64).
    let key_body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    needles.push(Needle::new("the certificate's private key", &key_body, 24, None));

    let mut found = Vec::new();
    scan("stderr", &log, &needles, &mut found);
    scan("stdout", &stdout, &needles, &mut found);
    for (request, status, body) in &answers {
        scan(
            &format!("API answer to {request} ({status})"),
            body,
            &needles,
            &mut found,
        );
    }
    for (n, (_, _, body)) in bodies.iter().enumerate() {
        scan(&format!("webhook body {n}"), body, &needles, &mut found);
    }
    assert!(
        found.is_empty(),
        "{} secret(s) leaked:\n{}",
        found.len(),
        found.join("\n")
    );
}
