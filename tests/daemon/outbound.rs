//! Replies, forwards and new mail through the API, never sent twice: threading
//! and placement, recipients, one email per `Idempotency-Key`, attachments byte for byte,
//! precise refusals that store nothing, `Retry-After` during a send, and exactly one email
//! after `kill -9` of the real binary at each step of a send.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::{API_TOKEN, Binary, Env, eventually, log_path, log_time, with_api_token, with_microsoft};

/// The shared mailbox inboxd sends from.
pub(super) const SUPPORT: &str = "support@contoso.test";
/// A customer with a mailbox in the emulator, so she receives what inboxd sends.
pub(super) const ANN: &str = "ann@customer.test";
/// Raw request-path prefix of every Graph request about [`SUPPORT`] (`support%40…` or `support@…`).
pub(super) const SUPPORT_PATHS: &str = "/v1.0/users/support";
/// Bound on any wait for the daemon to make progress.
pub(super) const LIMIT: Duration = Duration::from_secs(30);
/// Schema of the outbound result events in the sink.
pub(super) const OUTBOUND_SCHEMA: &str = "inboxd.outbound.v1";

/// A generated config for `mailboxes` with [`API_TOKEN`] accepted on `/v1`, and a
/// confirmation period short enough for tests.
pub(super) fn config(env: &Env, mailboxes: &[&str]) -> String {
    let mailboxes: Vec<String> = mailboxes.iter().map(|m| m.to_string()).collect();
    format!(
        "{}\n[outbound]\nconfirm_within = \"{CONFIRM_WITHIN_S}s\"\n",
        with_api_token(&env.config(&mailboxes, "1s"))
    )
}

/// `outbound.confirm_within` in these tests.
pub(super) const CONFIRM_WITHIN_S: u64 = 20;

/// The daemon's `/v1` API over real HTTP (in-process daemon or real binary).
#[derive(Clone)]
pub(super) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(super) fn at(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(LIMIT).build().unwrap(),
        }
    }

    /// POSTs raw bytes with the API token and, when given, an `Idempotency-Key`.
    pub(super) async fn post_bytes(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
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

    pub(super) async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        self.post_bytes(path, key, serde_json::to_vec(body).unwrap()).await
    }

    /// `POST /v1/mailboxes/{mailbox}/messages/{graph_id}/{action}`.
    pub(super) async fn respond(
        &self,
        mailbox: &str,
        graph_id: &str,
        action: &str,
        key: &str,
        body: &Value,
    ) -> (u16, Value) {
        self.post(
            &format!("/v1/mailboxes/{mailbox}/messages/{graph_id}/{action}"),
            Some(key),
            body,
        )
        .await
    }

    /// Like [`Api::respond`], but the request must be accepted; returns the outbound id.
    pub(super) async fn accepted(
        &self,
        mailbox: &str,
        graph_id: &str,
        action: &str,
        key: &str,
        body: &Value,
    ) -> String {
        let (status, answer) = self.respond(mailbox, graph_id, action, key, body).await;
        assert_eq!(status, 202, "{action} of {graph_id} was not accepted: {answer}");
        outbound_id(&answer)
    }

    /// `GET /v1/outbound/{id}`: status and body (transport errors panic).
    pub(super) async fn outbound(&self, id: &str) -> (u16, Value) {
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
    pub(super) async fn wait_sent(&self, id: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (status, view) = self.outbound(id).await;
            assert_eq!(status, 200, "GET /v1/outbound/{id}: {view}");
            match view["status"].as_str() {
                Some("sent") => return view,
                Some("failed") => panic!("outbound {id} failed: {view}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "outbound {id} not sent within {LIMIT:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `id` of a 202 answer, checked to be `queued` (or already further along on a repeat).
pub(super) fn outbound_id(answer: &Value) -> String {
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
pub(super) async fn deliver_from(
    env: &Env,
    from: &str,
    to: &[&str],
    cc: &[&str],
    subject: &str,
    headers: Value,
) -> Value {
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
pub(super) async fn from_ann(env: &Env, subject: &str) -> String {
    let original = deliver_from(env, ANN, &[SUPPORT], &[], subject, json!([])).await;
    original["immutable_id"].as_str().expect("immutable_id").to_string()
}

/// Lower-cased addresses of a recipient list of the emulator's listing.
fn addresses(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["address"].as_str())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// Messages of `folder` whose subject is `subject`.
async fn with_subject(env: &Env, mailbox: &str, folder: &str, subject: &str) -> Vec<Value> {
    env.folder_messages(mailbox, folder)
        .await
        .into_iter()
        .filter(|m| m["subject"] == subject)
        .collect()
}

/// Summary of a folder for assertion messages.
pub(super) fn summary(messages: &[Value]) -> Vec<String> {
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
pub(super) async fn exactly_one(env: &Env, mailbox: &str, folder: &str, subject: &str) -> Value {
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
pub(super) fn outbound_events(env: &Env) -> Vec<Value> {
    env.raw_events()
        .into_iter()
        .filter(|e| e["schema"] == OUTBOUND_SCHEMA)
        .collect()
}

/// Waits (bounded) for the `sent` event of outbound `id`; returns it.
async fn wait_sent_event(env: &Env, id: &str) -> Value {
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
pub(super) async fn support_requests(env: &Env, method: &str, suffix: &str) -> Vec<Value> {
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
fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_threads_correctly() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    // The original already continues a thread, so "References is extended" is visible.
    let original = deliver_from(
        &env,
        ANN,
        &[SUPPORT],
        &[],
        "Printer on fire",
        json!([
            {"name": "Message-ID", "value": "<q2@customer.test>"},
            {"name": "In-Reply-To", "value": "<q1@customer.test>"},
            {"name": "References", "value": "<q1@customer.test>"},
        ]),
    )
    .await;
    assert_eq!(original["internet_message_id"], "<q2@customer.test>", "{original}");
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "the original was not delivered: {events:?}");
    let graph_id = events[0].graph_id.clone();

    let id = api
        .accepted(
            SUPPORT,
            &graph_id,
            "reply",
            "reply-1",
            &json!({"comment": "We are on it."}),
        )
        .await;
    let view = api.wait_sent(&id).await;
    assert_eq!(view["error"], Value::Null, "{view}");

    let subject = "RE: Printer on fire";
    let sent = exactly_one(&env, SUPPORT, "sentitems", subject).await;
    let received = exactly_one(&env, ANN, "inbox", subject).await;
    for (copy, name) in [(&sent, "support's Sent Items copy"), (&received, "Ann's copy")] {
        assert_eq!(copy["in_reply_to"], "<q2@customer.test>", "{name}: {copy}");
        assert_eq!(
            copy["references"],
            json!(["<q1@customer.test>", "<q2@customer.test>"]),
            "{name}: References must be the original's extended by its Message-ID"
        );
        assert_eq!(copy["conversation_id"], original["conversation_id"], "{name}");
        assert_eq!(addresses(&copy["to"]), set(&[ANN]), "{name}");
        assert!(
            copy["body"]["content"]
                .as_str()
                .is_some_and(|b| b.contains("We are on it.")),
            "{name} lacks the comment: {}",
            copy["body"]
        );
    }
    assert_eq!(sent["internet_message_id"], received["internet_message_id"]);
    assert_eq!(sent["from"]["address"], SUPPORT, "sent from the shared mailbox itself");
    assert!(
        sent["extended_properties"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["value"] == id.as_str())),
        "the sent item carries no marker with the outbound id: {}",
        sent["extended_properties"]
    );
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 1);
    assert_eq!(env.folder_messages(ANN, "inbox").await.len(), 1);
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );

    let event = wait_sent_event(&env, &id).await;
    assert_eq!(event["mailbox"], SUPPORT, "{event}");
    assert_eq!(event["kind"], "reply", "{event}");
    assert_eq!(event["idempotency_key"], "reply-1", "{event}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_all_forward_and_send_reach_the_right_recipients() {
    let env = Env::new().await;
    let [bob, carl, dave, erin, frank, grace] =
        ["bob", "carl", "dave", "erin", "frank", "grace"].map(|n| format!("{n}@customer.test"));
    let all: Vec<String> = [SUPPORT, ANN, &bob, &carl, &dave, &erin, &frank, &grace]
        .iter()
        .map(|a| a.to_string())
        .collect();
    env.mailboxes(&all).await;
    let original = deliver_from(&env, ANN, &[SUPPORT, &carl], &[&bob], "Team question", json!([])).await;
    let original_id = original["immutable_id"].as_str().unwrap().to_string();
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let reply_all = api
        .accepted(
            SUPPORT,
            &original_id,
            "reply",
            "reply-all-1",
            &json!({"comment": "Answering all of you.", "reply_all": true}),
        )
        .await;
    let forward = api
        .accepted(
            SUPPORT,
            &original_id,
            "forward",
            "forward-1",
            &json!({"comment": "FYI", "to": [{"name": "Dave", "address": dave}]}),
        )
        .await;
    let (status, answer) = api
        .post(
            &format!("/v1/mailboxes/{SUPPORT}/send"),
            Some("send-1"),
            &json!({
                "to": [erin], "cc": [{"name": "Frank", "address": frank}], "bcc": [grace],
                "subject": "Ticket 42 opened",
                "body": {"content_type": "text", "content": "We opened ticket 42 for you."},
            }),
        )
        .await;
    assert_eq!(status, 202, "send: {answer}");
    let new_mail = outbound_id(&answer);
    for id in [&reply_all, &forward, &new_mail] {
        api.wait_sent(id).await;
    }

    // Reply-all: the sender and every other recipient, Cc kept as Cc, not support itself.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "RE: Team question").await;
    assert_eq!(addresses(&sent["to"]), set(&[ANN, &carl]), "reply-all To: {sent}");
    assert_eq!(addresses(&sent["cc"]), set(&[&bob]), "reply-all Cc: {sent}");
    for who in [ANN, &bob, &carl] {
        let copy = exactly_one(&env, who, "inbox", "RE: Team question").await;
        assert_eq!(copy["in_reply_to"], original["internet_message_id"], "{who}: {copy}");
    }
    // Forward: only Dave.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "FW: Team question").await;
    assert_eq!(addresses(&sent["to"]), set(&[&dave]), "forward To: {sent}");
    assert_eq!(addresses(&sent["cc"]), BTreeSet::new(), "forward Cc: {sent}");
    exactly_one(&env, &dave, "inbox", "FW: Team question").await;
    // New mail: To, Cc and a Bcc that only Sent Items shows.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "Ticket 42 opened").await;
    assert_eq!(addresses(&sent["to"]), set(&[&erin]), "{sent}");
    assert_eq!(addresses(&sent["cc"]), set(&[&frank]), "{sent}");
    assert_eq!(addresses(&sent["bcc"]), set(&[&grace]), "{sent}");
    assert!(
        sent["body"]["content"]
            .as_str()
            .is_some_and(|b| b.contains("ticket 42")),
        "{sent}"
    );
    for who in [&erin, &frank, &grace] {
        let copy = exactly_one(&env, who, "inbox", "Ticket 42 opened").await;
        assert_eq!(copy["bcc"], json!([]), "{who} sees the Bcc: {copy}");
    }

    // Nobody got anything else, and nothing is left behind.
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 3);
    for (who, expected) in [
        (ANN, 1),
        (&bob, 1),
        (&carl, 1),
        (&dave, 1),
        (&erin, 1),
        (&frank, 1),
        (&grace, 1),
    ] {
        let inbox = env.folder_messages(who, "inbox").await;
        assert_eq!(inbox.len(), expected, "{who}'s inbox: {:?}", summary(&inbox));
    }
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    for (id, kind) in [(&reply_all, "reply_all"), (&forward, "forward"), (&new_mail, "send")] {
        let event = wait_sent_event(&env, id).await;
        assert_eq!(event["kind"], kind, "{event}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_twenty_concurrent_requests_one_email() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Order 7").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let body = json!({"comment": "Exactly once, please."});

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (api, original, body) = (api.clone(), original.clone(), body.clone());
        tasks.spawn(async move { api.respond(SUPPORT, &original, "reply", "same-key", &body).await });
    }
    let mut ids = BTreeSet::new();
    while let Some(answer) = tasks.join_next().await {
        let (status, answer) = answer.unwrap();
        assert_eq!(status, 202, "a concurrent duplicate was refused: {answer}");
        ids.insert(outbound_id(&answer));
    }
    assert_eq!(ids.len(), 1, "20 requests with one key got several ids: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    api.wait_sent(&id).await;

    // Once more, later: same id, already sent, nothing new.
    let (status, again) = api.respond(SUPPORT, &original, "reply", "same-key", &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["status"], "sent", "{again}");
    // Same key, other request: refused, and it names the key.
    let (status, other) = api
        .respond(
            SUPPORT,
            &original,
            "reply",
            "same-key",
            &json!({"comment": "Something else."}),
        )
        .await;
    assert_eq!(status, 422, "same key with a different body: {other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{other}");
    assert!(
        other["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Idempotency-Key")),
        "{other}"
    );

    exactly_one(&env, SUPPORT, "sentitems", "RE: Order 7").await;
    exactly_one(&env, ANN, "inbox", "RE: Order 7").await;
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 1);
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    let drafts_made = support_requests(&env, "POST", "/createReply").await;
    assert_eq!(drafts_made.len(), 1, "one key, several drafts: {drafts_made:?}");
    wait_sent_event(&env, &id).await;
    let sent_events = outbound_events(&env).len();
    assert_eq!(sent_events, 1, "{:?}", outbound_events(&env));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_arrive_intact() {
    const SIZES: [(&str, usize); 3] = [
        ("one-kilobyte.bin", 1024),
        ("three-and-a-half-megabytes.bin", 3 * 1024 * 1024 + 512 * 1024),
        ("twenty-megabytes.bin", 20 * 1024 * 1024),
    ];
    /// Upload chunk size: ten times Graph's 320 KiB unit.
    const CHUNK: usize = 10 * 320 * 1024;
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Send me the logs").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let files: Vec<(&str, Vec<u8>)> = SIZES
        .iter()
        .map(|(name, size)| {
            let mut bytes = vec![0u8; *size];
            fastrand::fill(&mut bytes);
            (*name, bytes)
        })
        .collect();
    let attachments: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| {
            json!({"name": name, "content_type": "application/octet-stream", "content_base64": STANDARD.encode(bytes)})
        })
        .collect();
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "attachments-1",
            &json!({"body": {"content_type": "html", "content": "<p>Logs attached.</p>"}, "attachments": attachments}),
        )
        .await;
    api.wait_sent(&id).await;

    let received = exactly_one(&env, ANN, "inbox", "RE: Send me the logs").await;
    let sent = exactly_one(&env, SUPPORT, "sentitems", "RE: Send me the logs").await;
    for (copy, whose) in [(&received, "Ann's copy"), (&sent, "the Sent Items copy")] {
        let got = copy["attachments"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            files.len(),
            "{whose} has attachments {:?}",
            got.iter().map(|a| (&a["name"], &a["size"])).collect::<Vec<_>>()
        );
        for (name, bytes) in &files {
            let a = got
                .iter()
                .find(|a| a["name"] == *name)
                .unwrap_or_else(|| panic!("{whose} lacks {name}"));
            let content = STANDARD
                .decode(a["content_base64"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{whose}: {name} content: {e}"));
            assert_eq!(content.len(), bytes.len(), "{whose}: size of {name}");
            assert_eq!(sha256(&content), sha256(bytes), "{whose}: sha256 of {name}");
        }
    }

    // Up to 3 MB in one request; beyond, an upload session in 3.2 MB chunks, in order.
    let simple = support_requests(&env, "POST", "/attachments").await;
    assert_eq!(simple.len(), 1, "attachments added directly: {simple:?}");
    let sessions = support_requests(&env, "POST", "/attachments/createUploadSession").await;
    assert_eq!(sessions.len(), 2, "upload sessions: {sessions:?}");
    let puts: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| e["method"] == "PUT" && log_path(e).starts_with("/_upload/"))
        .collect();
    for (_, size) in &SIZES[1..] {
        let ranges: Vec<(usize, usize)> = puts
            .iter()
            .filter_map(|e| {
                let range = e["headers"]["content-range"].as_str()?.strip_prefix("bytes ")?;
                let (span, total) = range.split_once('/')?;
                let (a, b) = span.split_once('-')?;
                if total.parse::<usize>().ok()? != *size {
                    return None;
                }
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        assert_eq!(
            ranges.len(),
            size.div_ceil(CHUNK),
            "chunks of the {size}-byte file: {ranges:?}"
        );
        for (i, (start, end)) in ranges.iter().enumerate() {
            assert_eq!(*start, i * CHUNK, "chunk {i} of the {size}-byte file: {ranges:?}");
            assert_eq!(*end, ((i + 1) * CHUNK).min(*size) - 1, "chunk {i}: {ranges:?}");
        }
    }
    assert!(
        puts.iter().all(|e| e["status"] == 200 || e["status"] == 201),
        "a chunk was refused: {puts:?}"
    );
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    daemon.stop().await;
}

/// A request that must be refused: path, `Idempotency-Key`, body, status, error code, and
/// the words its message must contain.
type Refusal = (
    String,
    Option<&'static str>,
    Value,
    u16,
    &'static str,
    Vec<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_precisely() {
    let blocked = "blocked@contoso.test";
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into(), blocked.into()]).await;
    let original = from_ann(&env, "Help").await;
    let blocked_original = deliver_from(&env, ANN, &[blocked], &[], "Help too", json!([])).await;
    let blocked_original = blocked_original["immutable_id"].as_str().unwrap().to_string();
    env.control(&format!("/_emulator/mailboxes/{blocked}/access"), json!({"deny": true}))
        .await;
    let daemon = env.start(&config(&env, &[SUPPORT, blocked])).await;
    let api = Api::at(daemon.addr);
    let reply = format!("/v1/mailboxes/{SUPPORT}/messages/{original}/reply");
    let forward = format!("/v1/mailboxes/{SUPPORT}/messages/{original}/forward");
    let send = format!("/v1/mailboxes/{SUPPORT}/send");
    let text = json!({"content_type": "text", "content": "Hello"});

    let cases: Vec<Refusal> = vec![
        (
            format!("/v1/mailboxes/nobody@contoso.test/messages/{original}/reply"),
            Some("k-unknown"),
            json!({"comment": "hi"}),
            404,
            "unknown_mailbox",
            vec!["nobody@contoso.test"],
        ),
        (
            reply.clone(),
            Some("k-both"),
            json!({"comment": "hi", "body": text}),
            400,
            "invalid_request",
            vec!["comment", "body"],
        ),
        (
            reply.clone(),
            None,
            json!({"comment": "hi"}),
            400,
            "idempotency_key_missing",
            vec!["Idempotency-Key"],
        ),
        (
            reply.clone(),
            Some("k-base64"),
            json!({"comment": "hi", "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_base64": "not base64!"}]}),
            400,
            "invalid_request",
            vec!["attachments[0].content_base64"],
        ),
        (
            reply.clone(),
            Some("k-base64-2"),
            json!({"comment": "hi", "attachments": [
                {"name": "ok.txt", "content_base64": STANDARD.encode(b"fine")},
                {"name": "b.txt", "content_base64": "QUJD*"},
            ]}),
            400,
            "invalid_request",
            vec!["attachments[1].content_base64"],
        ),
        (
            send.clone(),
            Some("k-to"),
            json!({"to": ["ok@customer.test", "not-an-address"], "subject": "s", "body": text}),
            400,
            "invalid_request",
            vec!["to[1]"],
        ),
        (
            forward.clone(),
            Some("k-cc"),
            json!({"to": ["dave@customer.test"], "cc": [{"name": "X", "address": "x@@customer"}]}),
            400,
            "invalid_request",
            vec!["cc[0]"],
        ),
        (
            forward.clone(),
            Some("k-forward-nobody"),
            json!({"comment": "fyi"}),
            400,
            "invalid_request",
            vec!["to"],
        ),
        (
            reply.clone(),
            Some("k-content-type"),
            json!({"body": {"content_type": "markdown", "content": "*hi*"}}),
            400,
            "invalid_request",
            vec!["body.content_type"],
        ),
        (
            format!("/v1/mailboxes/{blocked}/messages/{blocked_original}/reply"),
            Some("k-flagged"),
            json!({"comment": "hi"}),
            409,
            "mailbox_flagged",
            vec![blocked, "access_denied", "queue=true"],
        ),
    ];

    // The flagged mailbox must be known as such first.
    let flagged = eventually(LIMIT, || async { daemon.state(blocked).await == "access_denied" }).await;
    assert!(
        flagged,
        "{blocked} never became access_denied: {}",
        daemon.state(blocked).await
    );

    let mut failures = Vec::new();
    for (path, key, body, status, code, words) in &cases {
        let (got, answer) = api.post(path, *key, body).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        if got != *status
            || answer["error"]["code"] != *code
            || !words.iter().all(|w| message.contains(w))
            || answer.get("id").is_some()
        {
            failures.push(format!(
                "{path} key {key:?} {body}: expected {status} {code} naming {words:?}, got {got} {answer}"
            ));
        }
    }
    // Without the bearer token: 401, before anything else.
    let resp = reqwest::Client::new()
        .post(format!("{}{reply}", api.base))
        .header("Idempotency-Key", "k-no-token")
        .json(&json!({"comment": "hi"}))
        .send()
        .await
        .unwrap();
    if resp.status() != 401 {
        failures.push(format!("no bearer token: {}", resp.status()));
    }
    // Attachments over Graph's 150 MB per message: 413 (zero bytes, built without a copy).
    let groups = inboxd::outbound::request::MAX_ATTACHMENTS_BYTES / 3 + 1;
    let oversized = format!(
        r#"{{"comment":"hi","attachments":[{{"name":"huge.bin","content_base64":"{}"}}]}}"#,
        "AAAA".repeat(groups)
    );
    let started = Instant::now();
    let (got, answer) = api.post_bytes(&reply, Some("k-huge"), oversized.into_bytes()).await;
    println!("413 case answered in {:?}", started.elapsed());
    if got != 413
        || answer["error"]["code"] != "attachments_too_large"
        || !answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("attachments"))
    {
        failures.push(format!(
            "150 MB + 3 bytes of attachments: expected 413, got {got} {answer}"
        ));
    }
    assert!(
        failures.is_empty(),
        "refusals not as specified:\n{}",
        failures.join("\n")
    );

    // Nothing was half-accepted: no draft, no mail, no event, no Graph write...
    let writes: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| e["method"] != "GET" && log_path(e).starts_with("/v1.0/"))
        .collect();
    assert!(writes.is_empty(), "refused requests reached Graph: {writes:?}");
    for mailbox in [SUPPORT, blocked] {
        for folder in ["drafts", "sentitems"] {
            let found = env.folder_messages(mailbox, folder).await;
            assert!(found.is_empty(), "{mailbox}/{folder}: {:?}", summary(&found));
        }
    }
    assert!(outbound_events(&env).is_empty(), "{:?}", outbound_events(&env));
    // ... and no key was consumed: a refused key is free for a valid request (else 422).
    let id = api
        .accepted(SUPPORT, &original, "reply", "k-both", &json!({"comment": "Now valid."}))
        .await;
    api.wait_sent(&id).await;
    exactly_one(&env, ANN, "inbox", "RE: Help").await;

    // A flagged mailbox queues when asked to, and sends nothing while flagged.
    let (status, answer) = api
        .post(
            &format!("/v1/mailboxes/{blocked}/messages/{blocked_original}/reply?queue=true"),
            Some("k-flagged"),
            &json!({"comment": "hi"}),
        )
        .await;
    assert_eq!(status, 202, "?queue=true on a flagged mailbox: {answer}");
    let queued = outbound_id(&answer);
    let (status, view) = api.outbound(&queued).await;
    assert_eq!(status, 200, "{view}");
    assert!(
        matches!(view["status"].as_str(), Some("queued" | "sending")),
        "queued for a flagged mailbox: {view}"
    );
    assert!(env.folder_messages(blocked, "sentitems").await.is_empty());
    let (status, unknown) = api.outbound("no-such-outbound-id").await;
    assert_eq!(status, 404, "{unknown}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_during_send() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Slow down").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "status": 429, "retry_after": "1.2", "times": 2,
    }))
    .await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "throttled-1",
            &json!({"comment": "Patience."}),
        )
        .await;
    api.wait_sent(&id).await;

    exactly_one(&env, SUPPORT, "sentitems", "RE: Slow down").await;
    exactly_one(&env, ANN, "inbox", "RE: Slow down").await;
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    let sends = support_requests(&env, "POST", "/send").await;
    let statuses: Vec<u64> = sends.iter().filter_map(|e| e["status"].as_u64()).collect();
    assert_eq!(statuses, vec![429, 429, 202], "the /send requests: {sends:?}");
    for pair in sends.windows(2) {
        let waited = log_time(&pair[1]) - log_time(&pair[0]);
        assert!(
            waited >= time::Duration::milliseconds(1200),
            "a /send came {waited} after a 429 with Retry-After 1.2: {} then {}",
            pair[0],
            pair[1]
        );
    }
    wait_sent_event(&env, &id).await;
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// kill -9 of the real binary at each step of a send.
// ---------------------------------------------------------------------------------------

/// How long the emulator holds the request the daemon is killed during.
const HOLD_MS: u64 = 4000;

/// Where the send is when the process dies.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Stored, the draft being created (`createReply` held).
    AfterStoring,
    /// The draft created in Graph, its id not yet recorded (`createReply` answer held).
    DraftCreatedUnrecorded,
    /// The draft exists, an attachment being added (`attachments` held).
    AfterDraft,
    /// Draft complete, `send` held before it is handled.
    AfterAttachments,
    /// `send` handled (the mail is out) but its answer held: not recorded.
    AfterSend,
}

impl Step {
    /// The fault that holds the daemon at this step.
    fn fault(self) -> Value {
        let (suffix, hold) = match self {
            Step::AfterStoring => ("/createReply", "delay_ms"),
            Step::DraftCreatedUnrecorded => ("/createReply", "delay_after_ms"),
            Step::AfterDraft => ("/attachments", "delay_ms"),
            Step::AfterAttachments => ("/send", "delay_ms"),
            Step::AfterSend => ("/send", "delay_after_ms"),
        };
        let mut rule = json!({"path_prefix": SUPPORT_PATHS, "path_suffix": suffix, "method": "POST", "times": 1});
        rule[hold] = json!(HOLD_MS);
        rule
    }
}

/// Last lines of a log, for failure messages.
pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One kill-and-restart at `step`, in its own emulator and temp dir.
async fn kill_at(step: Step) {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Crash course").await;
    let config = env.write_config(&config(&env, &[SUPPORT]));
    env.fault(step.fault()).await;
    let mut first: Binary = env.spawn_binary(&config, 0).await;
    let api = Api::at(first.addr());
    let body = json!({
        "comment": "Sent exactly once.",
        "attachments": [{"name": "note.txt", "content_type": "text/plain", "content_base64": STANDARD.encode(b"small attachment")}],
    });
    let id = api.accepted(SUPPORT, &original, "reply", "crash-1", &body).await;

    // Kill when the held request arrived (its one-shot rule is used up) or, after `send`,
    // once the mail is out.
    let reached = eventually(LIMIT, || async {
        match step {
            Step::AfterSend => !env.folder_messages(SUPPORT, "sentitems").await.is_empty(),
            Step::DraftCreatedUnrecorded => !env.folder_messages(SUPPORT, "drafts").await.is_empty(),
            _ => env.control_get("/_emulator/faults").await["faults"] == json!([]),
        }
    })
    .await;
    let held_since = Instant::now();
    assert!(
        reached,
        "{step:?}: the daemon never reached the step; outbound: {:?}; stderr:\n{}",
        api.outbound(&id).await,
        tail(&first.stderr(), 30)
    );
    first.kill_9();
    let drafts = env.folder_messages(SUPPORT, "drafts").await.len();
    let expected_drafts = match step {
        Step::AfterStoring | Step::AfterSend => 0,
        Step::DraftCreatedUnrecorded | Step::AfterDraft | Step::AfterAttachments => 1,
    };
    assert_eq!(drafts, expected_drafts, "{step:?}: drafts at the kill");
    env.clear_faults().await;

    let second = env.spawn_binary(&config, 1).await;
    let api = Api::at(second.addr());
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, view) = api.outbound(&id).await;
        assert_eq!(status, 200, "{step:?}: the restarted daemon lost outbound {id}: {view}");
        match view["status"].as_str() {
            Some("sent") => break,
            Some("failed") => panic!(
                "{step:?}: outbound {id} failed after the restart: {view}; stderr:\n{}",
                tail(&second.stderr(), 30)
            ),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{step:?}: outbound {id} not sent after the restart: {view}; stderr:\n{}",
            tail(&second.stderr(), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A held request of the killed process would be handled by now: give it the chance to
    // show up as a second mail or a stray draft (a quiet period, bounded by HOLD_MS).
    let quiet_until = held_since + Duration::from_millis(HOLD_MS + 500);
    tokio::time::sleep(quiet_until.saturating_duration_since(Instant::now())).await;

    let sent = env.folder_messages(SUPPORT, "sentitems").await;
    let received = env.folder_messages(ANN, "inbox").await;
    let drafts = env.folder_messages(SUPPORT, "drafts").await;
    let log: Vec<String> = env
        .requests()
        .await
        .iter()
        .filter(|e| e["method"] != "GET" || e["query"].as_str().is_some_and(|q| q.contains("ExtendedProperties")))
        .map(|e| format!("{} {} {} {}", e["seq"], e["method"], log_path(e), e["status"]))
        .collect();
    assert!(
        sent.len() == 1 && received.len() == 1 && drafts.is_empty(),
        "{step:?}: {} in Sent Items, {} in Ann's inbox, {} drafts left ({:?}); Graph writes and marker look-ups:\n{}",
        sent.len(),
        received.len(),
        drafts.len(),
        summary(&drafts),
        log.join("\n")
    );
    assert_eq!(received[0]["attachments"][0]["name"], "note.txt", "{step:?}");
    wait_sent_event(&env, &id).await;
}

/// Runs [`kill_at`] for each step concurrently; reports every failing step.
async fn kill_at_each(steps: &[Step]) {
    let runs: Vec<_> = steps.iter().map(|&step| (step, tokio::spawn(kill_at(step)))).collect();
    let mut failures = Vec::new();
    for (step, run) in runs {
        if let Err(e) = run.await {
            let reason = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            failures.push(format!("[{step:?}] {reason}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn sigkill_at_each_step_sends_once() {
    kill_at_each(&[
        Step::AfterStoring,
        Step::AfterDraft,
        Step::AfterAttachments,
        Step::AfterSend,
    ])
    .await;
}

/// Graph created the marked draft, the daemon died before recording it: the restart must
/// find that draft by its marker, not leave it behind in Drafts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_draft_created_before_recorded_leaves_no_draft() {
    kill_at_each(&[Step::DraftCreatedUnrecorded]).await;
}

/// `send` handled by Graph but its answer lost (timeout): the message is out, so the outbound
/// must end `sent`, never `failed` (routing would send it again), and go out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_send_answer_is_not_a_failure() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Lost answer").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "delay_after_ms": 2500, "times": 1,
    }))
    .await;
    let toml = with_microsoft(&config(&env, &[SUPPORT]), "request_timeout = \"1s\"");
    let daemon = env.start(&toml).await;
    let api = Api::at(daemon.addr);
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "lost-1",
            &json!({"comment": "Did you get this?"}),
        )
        .await;
    let deadline = Instant::now() + LIMIT;
    let view = loop {
        let (_, view) = api.outbound(&id).await;
        if matches!(view["status"].as_str(), Some("sent" | "failed")) || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sends: Vec<String> = support_requests(&env, "POST", "/send")
        .await
        .iter()
        .map(|e| format!("{} {} -> {}", e["seq"], log_path(e), e["status"]))
        .collect();
    assert_eq!(
        env.folder_messages(SUPPORT, "sentitems").await.len(),
        1,
        "Sent Items; /send requests: {sends:?}"
    );
    assert_eq!(env.folder_messages(ANN, "inbox").await.len(), 1, "Ann's inbox");
    assert_eq!(
        view["status"],
        "sent",
        "the mail went out once, but the outbound says {view}; /send requests: {sends:?}; events: {:?}",
        outbound_events(&env)
    );
    wait_sent_event(&env, &id).await;
    daemon.stop().await;
}

/// Waits (bounded) until outbound `id` ends (`sent`, `failed` or `unconfirmed`); returns the last view.
pub(super) async fn wait_end(api: &Api, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, view) = api.outbound(id).await;
        if matches!(view["status"].as_str(), Some("sent" | "failed" | "unconfirmed")) || Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Permanent refusals by Graph end in `failed` with the reason and a `failed` event,
/// instead of being retried for ever: a reply to a message that does not exist,
/// and a `send` that Graph answers with 400 (it sent nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failures_end_failed_with_the_reason() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Bad recipients").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "status": 400, "code": "ErrorInvalidRecipients",
    }))
    .await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let missing = api
        .accepted(
            SUPPORT,
            "AAkALgNoSuchMessage",
            "reply",
            "missing-1",
            &json!({"comment": "Hi"}),
        )
        .await;
    let rejected = api
        .accepted(SUPPORT, &original, "reply", "rejected-1", &json!({"comment": "Hi"}))
        .await;

    let mut problems = Vec::new();
    for (id, words) in [(&missing, "not found"), (&rejected, "ErrorInvalidRecipients")] {
        let view = wait_end(&api, id, Duration::from_secs(15)).await;
        let reason = view["error"].as_str().unwrap_or_default();
        if view["status"] != "failed" || !reason.contains(words) {
            problems.push(format!("expected failed naming '{words}', got {view}"));
            continue;
        }
        // The status is recorded before the event is written: wait (bounded) for the event.
        let named = |e: &Value| {
            e["outbound_id"] == id.as_str()
                && e["status"] == "failed"
                && e["error"].as_str().unwrap_or_default().contains(words)
        };
        let told = eventually(LIMIT, || async { outbound_events(&env).iter().any(named) }).await;
        if !told {
            problems.push(format!(
                "no failed event naming '{words}' for {id}: {:?}",
                outbound_events(&env)
            ));
        }
    }
    let sends: Vec<String> = support_requests(&env, "POST", "/send")
        .await
        .iter()
        .map(|e| format!("{} {} -> {}", e["time"], log_path(e), e["status"]))
        .collect();
    assert!(
        problems.is_empty(),
        "{}\n/send requests: {sends:?}",
        problems.join("\n")
    );
    assert!(env.folder_messages(SUPPORT, "sentitems").await.is_empty());
    assert!(env.folder_messages(ANN, "inbox").await.is_empty());
    daemon.stop().await;
}

/// The store as the release before the payload table left it: schema migrations 1 to 7.
const SCHEMA_BEFORE_PAYLOADS: [(i64, &str, &str); 7] = [
    (1, "store", include_str!("../../migrations/0001_store.sql")),
    (2, "outbox", include_str!("../../migrations/0002_outbox.sql")),
    (3, "delegated", include_str!("../../migrations/0003_delegated.sql")),
    (
        4,
        "quarantine_replay",
        include_str!("../../migrations/0004_quarantine_replay.sql"),
    ),
    (
        5,
        "resync_window",
        include_str!("../../migrations/0005_resync_window.sql"),
    ),
    (
        6,
        "outbound_confirm",
        include_str!("../../migrations/0006_outbound_confirm.sql"),
    ),
    (
        7,
        "subscriptions",
        include_str!("../../migrations/0007_subscriptions.sql"),
    ),
];

/// A reply queued by the previous release (its text inside the outbox row) is sent, whole and
/// once, by the real binary after the upgrade moves the text into its own table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_queued_before_the_upgrade_is_sent_after_it() {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};

    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Queued across the upgrade").await;
    // More than one stored piece's worth, to show a migrated text is read back whole.
    let mut file = vec![0u8; 3 * 1024 * 1024];
    fastrand::fill(&mut file);
    let request = json!({
        "kind": "reply", "original": original, "comment": "Queued before the upgrade, façade €.",
        "body": null, "subject": null, "to": [], "cc": [], "bcc": [],
        "attachments": [{"name": "logs.bin", "content_type": "application/octet-stream",
                         "content_base64": STANDARD.encode(&file), "is_inline": false, "content_id": null}],
    })
    .to_string();

    let url = format!("sqlite://{}?mode=rwc", env.dir.path().join("inboxd.db").display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let previous = Migrator::with_migrations(
        SCHEMA_BEFORE_PAYLOADS
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false))
            .collect(),
    );
    previous.run(&db).await.unwrap();
    let id = "0b6f7f3e-5c1d-4d7a-9a51-7c1f0f0e2a10";
    let then = "2026-01-01T00:00:00.000000000Z";
    sqlx::query(
        "INSERT INTO outbox (id, mailbox, idempotency_key, request_hash, request, kind, status, step, attempts,
                             next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, 'upgrade-1', 'hash-upgrade-1', ?3, 'reply', 'queued', 'new', 0, ?4, ?4, ?4)",
    )
    .bind(id)
    .bind(SUPPORT)
    .bind(&request)
    .bind(then)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    let config = env.write_config(&config(&env, &[SUPPORT]));
    let binary = env.spawn_binary(&config, 0).await;
    let api = Api::at(binary.addr());
    api.wait_sent(id).await;
    let received = exactly_one(&env, ANN, "inbox", "RE: Queued across the upgrade").await;
    exactly_one(&env, SUPPORT, "sentitems", "RE: Queued across the upgrade").await;
    assert!(
        received["body"]["content"]
            .as_str()
            .is_some_and(|b| b.contains("Queued before the upgrade, façade €.")),
        "the comment did not survive: {}",
        received["body"]
    );
    let attachments = received["attachments"].as_array().cloned().unwrap_or_default();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    let content = STANDARD
        .decode(attachments[0]["content_base64"].as_str().unwrap_or_default())
        .unwrap();
    assert_eq!(sha256(&content), sha256(&file), "the attachment changed on the way");

    // The row kept its id and key; its text moved out of it, byte for byte.
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let columns: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info('outbox')")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(
        !columns.iter().any(|(c,)| c == "request"),
        "the outbox row still carries the text: {columns:?}"
    );
    let moved: Vec<u8> = sqlx::query_scalar("SELECT chunk FROM outbox_payloads WHERE id = ?1 AND seq = 0")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(moved, request.as_bytes());
    db.close().await;
    let (status, view) = api.outbound(id).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("sent")), "{view}");
}
