//! Helpers of the outbound tests: config, the outbound API as a client sees it, what the
//! emulator delivered, and the outbound events in the sink.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{API_TOKEN, Env, eventually, log_path, poll_until, with_api_token};

/// The shared mailbox inboxd sends from.
pub const SUPPORT: &str = "support@contoso.test";
/// A customer with a mailbox in the emulator, so she receives what inboxd sends.
pub const ANN: &str = "ann@customer.test";
/// Raw request-path prefix of every Graph request about [`SUPPORT`] (`support%40…` or `support@…`).
pub const SUPPORT_PATHS: &str = "/v1.0/users/support";
/// Bound on any wait for the daemon to make progress.
pub const LIMIT: Duration = Duration::from_secs(30);
/// Schema of the outbound result events in the sink.
pub const OUTBOUND_SCHEMA: &str = "inboxd.outbound.v1";

/// A generated config for `mailboxes` with [`API_TOKEN`] accepted on `/v1`, and a
/// confirmation period short enough for tests.
pub fn config(env: &Env, mailboxes: &[&str]) -> String {
    let mailboxes: Vec<String> = mailboxes.iter().map(|m| m.to_string()).collect();
    format!(
        "{}\n[outbound]\nconfirm_within = \"{CONFIRM_WITHIN_S}s\"\n",
        with_api_token(&env.config(&mailboxes, "1s"))
    )
}

/// `outbound.confirm_within` in these tests.
pub const CONFIRM_WITHIN_S: u64 = 20;

/// The daemon's `/v1` API over real HTTP (in-process daemon or real binary).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn at(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(LIMIT).build().unwrap(),
        }
    }

    /// POSTs raw bytes with the API token and, when given, an `Idempotency-Key`.
    pub async fn post_bytes(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_TOKEN)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        self.post_bytes(path, key, serde_json::to_vec(body).unwrap()).await
    }

    /// `POST /v1/mailboxes/{mailbox}/messages/{graph_id}/{action}`.
    pub async fn respond(&self, mailbox: &str, graph_id: &str, action: &str, key: &str, body: &Value) -> (u16, Value) {
        self.post(
            &format!("/v1/mailboxes/{mailbox}/messages/{graph_id}/{action}"),
            Some(key),
            body,
        )
        .await
    }

    /// Like [`Api::respond`], but the request must be accepted; returns the outbound id.
    pub async fn accepted(&self, mailbox: &str, graph_id: &str, action: &str, key: &str, body: &Value) -> String {
        let (status, answer) = self.respond(mailbox, graph_id, action, key, body).await;
        assert_eq!(status, 202, "{action} of {graph_id} was not accepted: {answer}");
        outbound_id(&answer)
    }

    /// `GET /v1/outbound/{id}`: status and body (transport errors panic).
    pub async fn outbound(&self, id: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/v1/outbound/{id}", self.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/outbound/{id}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Waits (bounded) until outbound `id` is `sent`; panics at once if it `failed`.
    pub async fn wait_sent(&self, id: &str) -> Value {
        poll_until(LIMIT, &format!("outbound {id} sent"), || async {
            let (status, view) = self.outbound(id).await;
            assert_eq!(status, 200, "GET /v1/outbound/{id}: {view}");
            match view["status"].as_str() {
                Some("sent") => Ok(view),
                Some("failed") => panic!("outbound {id} failed: {view}"),
                _ => Err(view.to_string()),
            }
        })
        .await
    }
}

/// The `id` of a 202 answer, checked to be `queued` (or already further along on a repeat).
pub fn outbound_id(answer: &Value) -> String {
    let id = answer["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("202 without an id: {answer}"));
    assert!(
        matches!(answer["status"].as_str(), Some("queued" | "sending" | "sent")),
        "202 with status {}",
        answer["status"]
    );
    id.to_string()
}

/// Delivers a message from `from` into `to`'s inbox; returns the emulator's answer
/// (`immutable_id`, `internet_message_id`, `conversation_id`).
pub async fn deliver_from(env: &Env, from: &str, to: &[&str], cc: &[&str], subject: &str, headers: Value) -> Value {
    let list = |l: &[&str]| -> Value { l.iter().map(|a| json!({"name": "", "address": a})).collect() };
    env.control(
        &format!("/_emulator/mailboxes/{}/messages", to[0]),
        json!({
            "from": {"name": "Customer", "address": from},
            "to": list(to), "cc": list(cc),
            "subject": subject,
            "body": {"content_type": "text", "content": format!("Body of {subject}")},
            "internet_message_headers": headers,
        }),
    )
    .await
}

/// A message from Ann in support's inbox; returns its immutable id.
pub async fn from_ann(env: &Env, subject: &str) -> String {
    let original = deliver_from(env, ANN, &[SUPPORT], &[], subject, json!([])).await;
    original["immutable_id"].as_str().expect("immutable_id").to_string()
}

/// Lower-cased addresses of a recipient list of the emulator's listing.
pub fn addresses(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["address"].as_str())
        .map(str::to_ascii_lowercase)
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// Messages of `folder` whose subject is `subject`.
pub async fn with_subject(env: &Env, mailbox: &str, folder: &str, subject: &str) -> Vec<Value> {
    env.folder_messages(mailbox, folder)
        .await
        .into_iter()
        .filter(|m| m["subject"] == subject)
        .collect()
}

/// Summary of a folder for assertion messages.
pub fn summary(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            format!(
                "{} (to {:?}, draft {})",
                m["subject"],
                addresses(&m["to"]),
                m["is_draft"]
            )
        })
        .collect()
}

/// Exactly one message with `subject` in `folder` of `mailbox`; returns it.
pub async fn exactly_one(env: &Env, mailbox: &str, folder: &str, subject: &str) -> Value {
    let found = with_subject(env, mailbox, folder, subject).await;
    assert_eq!(
        found.len(),
        1,
        "{mailbox}/{folder} holds {} messages '{subject}'; folder: {:?}",
        found.len(),
        summary(&env.folder_messages(mailbox, folder).await)
    );
    found.into_iter().next().unwrap()
}

/// The `inboxd.outbound.v1` events in the sink file (the typed reader skips them).
pub fn outbound_events(env: &Env) -> Vec<Value> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == OUTBOUND_SCHEMA)
        .collect()
}

/// Waits (bounded) for the `sent` event of outbound `id`; returns it.
pub async fn wait_sent_event(env: &Env, id: &str) -> Value {
    let found = eventually(LIMIT, || async {
        outbound_events(env)
            .iter()
            .any(|e| e["outbound_id"] == id && e["status"] == "sent")
    })
    .await;
    assert!(
        found,
        "no {OUTBOUND_SCHEMA} 'sent' event for {id}; outbound events: {:?}",
        outbound_events(env)
    );
    let events: Vec<Value> = outbound_events(env)
        .into_iter()
        .filter(|e| e["outbound_id"] == id)
        .collect();
    assert!(
        events.iter().all(|e| e["status"] == "sent"),
        "outbound {id} has a non-sent event besides 'sent': {events:?}"
    );
    events.into_iter().next().unwrap()
}

/// Graph requests of the log for `SUPPORT` with this method whose path ends with `suffix`.
pub async fn support_requests(env: &Env, method: &str, suffix: &str) -> Vec<Value> {
    env.requests()
        .await
        .into_iter()
        .filter(|e| e["method"] == method)
        .filter(|e| {
            let path = log_path(e).to_ascii_lowercase();
            path.starts_with(&format!("/v1.0/users/{SUPPORT}")) && path.ends_with(&suffix.to_ascii_lowercase())
        })
        .collect()
}

/// SHA-256 (hex).
pub fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Last lines of a log, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits (bounded) until outbound `id` ends (`sent`, `failed` or `unconfirmed`); returns the last view.
pub async fn wait_end(api: &Api, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, view) = api.outbound(id).await;
        if matches!(view["status"].as_str(), Some("sent" | "failed" | "unconfirmed")) || Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
