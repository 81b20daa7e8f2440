//! The whole pipeline as routing and operations see it: events that match the published
//! schema, threading and attachments, HTTPS with an extra root, post-ingest actions only
//! after the sink acknowledged (a receiver that holds its answers), and the HTTP API.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use inboxd::emulator::EmulatorOptions;
use serde_json::{Value, json};

use crate::support::json_schema::{Validator, schema};
use crate::support::{
    API_TOKEN, CLIENT, Env, SECRET, TENANT, addr, eventually, log_path, metric, with_api_token, with_defaults,
    with_microsoft,
};

/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(30);

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_a_realistic_run_match_the_schema_with_threading_and_attachments() {
    let env = Env::new().await;
    let a = addr("support");
    env.mailboxes(std::slice::from_ref(&a)).await;
    // Generated traffic: threads, HTML, attachments (under the cap).
    env.control(
        "/_emulator/load",
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET, "mailboxes": 2,
               "messages_per_mailbox": 6, "attachment_share": 0.5, "attachment_bytes": 600,
               "address_prefix": "pipe", "domain": "contoso.test"}),
    )
    .await;
    let generated = ["pipe0@contoso.test".to_string(), "pipe1@contoso.test".to_string()];

    // A thread by hand: the original, then a reply carrying In-Reply-To and References.
    let original = env.deliver(&a, "Order 1234 is late").await;
    let original_id = original["internet_message_id"].as_str().unwrap().to_string();
    let root = "<root-4711@shop.example>";
    env.control(
        &format!("/_emulator/mailboxes/{a}/messages"),
        json!({
            "from": {"name": "Customer", "address": "customer@example.net"},
            "to": [{"name": "Support", "address": a}],
            "cc": [{"name": "Boss", "address": "boss@example.net"}],
            "subject": "RE: Order 1234 is late",
            "body": {"content_type": "html", "content": "<p>Still <b>waiting</b>.</p>"},
            "internet_message_headers": [
                {"name": "In-Reply-To", "value": original_id},
                {"name": "References", "value": format!("{root} {original_id}")},
            ],
        }),
    )
    .await;
    // Attachments on both sides of the cap (1,000 bytes), and an inline image.
    let small: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 253) as u8).collect();
    let logo: Vec<u8> = (0..300u32).map(|i| (i % 256) as u8).collect();
    env.control(
        &format!("/_emulator/mailboxes/{a}/messages"),
        json!({
            "from": {"name": "Customer", "address": "customer@example.net"},
            "to": [{"name": "Support", "address": a}],
            "subject": "Invoice attached",
            "body": {"content_type": "html", "content": "<p>See attached.<img src=\"cid:logo@shop\"></p>"},
            "attachments": [
                {"name": "small.txt", "content_type": "text/plain", "content_base64": B64.encode(&small)},
                {"name": "big.bin", "content_type": "application/octet-stream", "content_base64": B64.encode(&big)},
                {"name": "logo.png", "content_type": "image/png", "content_base64": B64.encode(&logo),
                 "is_inline": true, "content_id": "logo@shop"},
            ],
        }),
    )
    .await;

    let mut all = vec![a.clone()];
    all.extend(generated.iter().cloned());
    let toml = with_defaults(&env.config(&all, "500ms"), "max_inline_attachment_bytes = 1000");
    let daemon = env.start(&toml).await;
    let expected = 3 + 12;
    let typed = env.wait_for_events(expected, LIMIT).await;
    assert_eq!(typed.len(), expected, "{typed:?}");
    daemon.stop().await;

    // Every event, as raw JSON, matches the published schema.
    let schema = schema();
    let validator = Validator { root: &schema };
    // The file also carries inboxd.mailbox_state.v1 events; this schema is the message event's.
    let raw: Vec<_> = env
        .raw_events()
        .into_iter()
        .filter(|e| e["schema"] == "inboxd.message.v1")
        .collect();
    assert_eq!(raw.len(), expected);
    for event in &raw {
        let errors = validator.errors(event);
        assert!(
            errors.is_empty(),
            "event does not match the schema: {errors:?}\n{event}"
        );
    }
    // The validator is not a rubber stamp.
    let sample = raw
        .iter()
        .find(|e| e["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .unwrap();
    let mut missing = sample.clone();
    missing.as_object_mut().unwrap().remove("dedup_key");
    assert!(validator.errors(&missing).iter().any(|e| e.contains("dedup_key")));
    let mut wrong = sample.clone();
    wrong["in_reply_to"] = json!(42);
    wrong["schema"] = json!("inboxd.message.v2");
    assert_eq!(validator.errors(&wrong).len(), 2, "{:?}", validator.errors(&wrong));
    let mut no_hash = sample.clone();
    no_hash["attachments"][0].as_object_mut().unwrap().remove("sha256");
    assert!(validator.errors(&no_hash).iter().any(|e| e.contains("sha256")));
    let mut bad_from = sample.clone();
    bad_from["from"] = json!({"name": "x"});
    assert!(!validator.errors(&bad_from).is_empty());

    // Threading.
    let by_subject: HashMap<&str, &Value> = raw.iter().map(|e| (e["subject"].as_str().unwrap(), e)).collect();
    let reply = by_subject["RE: Order 1234 is late"];
    assert_eq!(reply["in_reply_to"], json!(original_id), "{reply}");
    assert_eq!(reply["references"], json!([root, original_id]), "{reply}");
    assert_eq!(reply["cc"][0]["address"], "boss@example.net");
    assert!(
        reply["body"]["html"]
            .as_str()
            .is_some_and(|h| h.contains("<b>waiting</b>")),
        "{reply}"
    );
    let first = by_subject["Order 1234 is late"];
    assert_eq!(first["internet_message_id"], json!(original_id));
    assert_eq!(first["in_reply_to"], Value::Null);
    assert_eq!(reply["conversation_id"].as_str().map(str::is_empty), Some(false));

    // Attachments: embedded under the cap with a matching hash, metadata and hash over it.
    let invoice = by_subject["Invoice attached"];
    let attachments: HashMap<&str, &Value> = invoice["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x))
        .collect();
    assert_eq!(attachments.len(), 3, "{invoice}");
    for (name, bytes, inline) in [("small.txt", &small, false), ("logo.png", &logo, true)] {
        let att = attachments[name];
        let content = B64.decode(
            att["content_base64"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} not embedded: {att}")),
        );
        assert_eq!(
            content.as_deref().ok(),
            Some(bytes.as_slice()),
            "{name} content differs"
        );
        assert_eq!(att["sha256"], json!(sha256_hex(bytes)), "{name} hash");
        assert_eq!(att["size"], json!(bytes.len()), "{name} size");
        assert_eq!(att["is_inline"], json!(inline), "{name}");
    }
    assert_eq!(attachments["logo.png"]["content_id"], "logo@shop");
    let over = attachments["big.bin"];
    assert!(
        over.get("content_base64").is_none(),
        "over the cap but embedded: {over}"
    );
    assert_eq!(
        over["sha256"],
        json!(sha256_hex(&big)),
        "hash of a non-embedded attachment"
    );
    assert_eq!(over["size"], json!(big.len()));
    // Generated attachments under the cap: content and hash agree.
    let mut checked = 0;
    for e in raw
        .iter()
        .filter(|e| generated.iter().any(|g| e["mailbox"] == json!(g)))
    {
        for att in e["attachments"].as_array().unwrap() {
            let bytes = B64
                .decode(att["content_base64"].as_str().expect("600 bytes < cap"))
                .unwrap();
            assert_eq!(att["sha256"], json!(sha256_hex(&bytes)));
            checked += 1;
        }
    }
    assert!(checked > 0, "the load generator produced no attachment to check");
    // Generated threads: the event's threading fields are what the mailbox holds.
    let mut replies = 0;
    for g in &generated {
        for m in env.folder_messages(g, "inbox").await {
            let event = raw
                .iter()
                .find(|e| e["graph_id"] == m["immutable_id"])
                .unwrap_or_else(|| panic!("no event for {m}"));
            assert_eq!(event["internet_message_id"], m["internet_message_id"]);
            assert_eq!(event["conversation_id"], m["conversation_id"]);
            assert_eq!(event["in_reply_to"], m["in_reply_to"], "{event}\n{m}");
            let references = m["references"].as_array().cloned().unwrap_or_default();
            assert_eq!(event["references"], Value::Array(references), "{event}\n{m}");
            replies += usize::from(!m["in_reply_to"].is_null());
        }
    }
    assert!(replies > 0, "the load generator produced no reply to check");
    let keys: HashSet<&str> = raw.iter().map(|e| e["dedup_key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), expected, "dedup keys are not distinct per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_over_https_with_the_emulator_certificate_as_ca_file() {
    let env = Env::with(EmulatorOptions {
        tls: true,
        scenario: None,
    })
    .await;
    assert!(env.url.starts_with("https://127.0.0.1:"), "{}", env.url);
    let a = addr("tls");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "over TLS").await;
    let base = with_api_token(&env.config(std::slice::from_ref(&a), "300ms"));

    // Without the extra root the certificate is not trusted: nothing gets through.
    let daemon = env.start(&base).await;
    let refused = eventually(LIMIT, || async { daemon.state(&a).await == "backoff" }).await;
    assert!(
        refused,
        "an untrusted certificate was accepted? {:?}",
        daemon.mailbox_views().await
    );
    assert!(env.events().is_empty());
    daemon.stop().await;

    let ca = env.dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, env.emu.cert_pem().expect("TLS emulator has a certificate")).unwrap();
    let daemon = env
        .start(&with_microsoft(&base, &format!("ca_file = \"{}\"", ca.display())))
        .await;
    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "nothing delivered over HTTPS");
    assert_eq!(events[0].subject, "over TLS");
    let active = eventually(LIMIT, || async { daemon.state(&a).await == "active" }).await;
    assert!(active);
    let log = env.requests().await;
    assert!(
        log.iter()
            .any(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/oauth2/v2.0/token")) && e["status"] == 200)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
/// Mark-read and move act on every delivered message, and a moved message keeps its immutable
/// id. (The order, acknowledgement first, is observed in
/// `after_ingest_actions_wait_for_the_receivers_acknowledgement`; the snapshots below only
/// catch a gross inversion.)
async fn after_ingest_marks_read_and_moves_every_delivered_message_keeping_its_id() {
    let env = Env::new().await;
    let (reader, mover) = (addr("reader"), addr("mover"));
    env.mailboxes(&[reader.clone(), mover.clone()]).await;
    for i in 0..4 {
        env.deliver(&reader, &format!("read me {i}")).await;
        env.deliver(&mover, &format!("move me {i}")).await;
    }
    let mut toml = env.config(&[], "300ms");
    toml.push_str(&format!(
        "\n[[mailboxes]]\naddress = \"{reader}\"\napp = \"test\"\nafter_ingest = \"mark_read\"\n\
         \n[[mailboxes]]\naddress = \"{mover}\"\napp = \"test\"\nafter_ingest = \"move:archive\"\n"
    ));
    assert!(
        env.folder_messages(&reader, "inbox")
            .await
            .iter()
            .all(|m| m["is_read"] == false)
    );
    let daemon = env.start(&toml).await;

    // Snapshot the mailbox first, the file second: whatever was already acted on must
    // already be in the file.
    let done = eventually(LIMIT, || async {
        let read: Vec<String> = env
            .folder_messages(&reader, "inbox")
            .await
            .iter()
            .filter(|m| m["is_read"] == true)
            .map(|m| m["immutable_id"].as_str().unwrap().to_string())
            .collect();
        let archived: Vec<String> = env
            .folder_messages(&mover, "archive")
            .await
            .iter()
            .map(|m| m["immutable_id"].as_str().unwrap().to_string())
            .collect();
        let delivered: HashSet<String> = env.events().into_iter().map(|e| e.graph_id).collect();
        for id in read.iter().chain(&archived) {
            assert!(
                delivered.contains(id),
                "message {id} was acted on before its event was in the file"
            );
        }
        read.len() == 4 && archived.len() == 4
    })
    .await;
    assert!(
        done,
        "post-ingest actions incomplete: inbox of {reader}: {:?}; archive of {mover}: {:?}",
        env.folder_messages(&reader, "inbox").await,
        env.folder_messages(&mover, "archive").await
    );
    assert!(
        env.folder_messages(&mover, "inbox").await.is_empty(),
        "moved messages still in the inbox"
    );
    let events = env.events();
    assert_eq!(events.len(), 8, "{events:?}");
    // A moved message keeps its immutable id, and the event's graph_id is that id.
    let archived: HashSet<String> = env
        .folder_messages(&mover, "archive")
        .await
        .iter()
        .map(|m| m["immutable_id"].as_str().unwrap().to_string())
        .collect();
    let mover_ids: HashSet<String> = events
        .iter()
        .filter(|e| e.mailbox == mover)
        .map(|e| e.graph_id.clone())
        .collect();
    assert_eq!(archived, mover_ids);
    daemon.stop().await;
}

/// A routing receiver that holds its answer to the message events of some mailboxes until the
/// test releases each one; everything else it acknowledges at once.
struct HoldingReceiver {
    /// Mailboxes whose message events are held.
    held_mailboxes: HashSet<String>,
    /// Graph ids of held events waiting for their release.
    waiting: std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Graph ids acknowledged (answered 200), in order.
    acked: std::sync::Mutex<Vec<String>>,
}

async fn holding_inbound(
    axum::extract::State(rx): axum::extract::State<std::sync::Arc<HoldingReceiver>>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let event: Value = serde_json::from_slice(&body).expect("the webhook body is JSON");
    let id = event["graph_id"].as_str().unwrap_or_default().to_string();
    let held = event["schema"] == "inboxd.message.v1"
        && event["mailbox"].as_str().is_some_and(|m| rx.held_mailboxes.contains(m));
    if held {
        let (release, released) = tokio::sync::oneshot::channel();
        let earlier = rx.waiting.lock().unwrap().insert(id.clone(), release);
        assert!(earlier.is_none(), "{id} sent again while its first delivery was held");
        released.await.expect("the test releases every held event");
    }
    if event["schema"] == "inboxd.message.v1" {
        rx.acked.lock().unwrap().push(id);
    }
    axum::http::StatusCode::OK
}

impl HoldingReceiver {
    async fn serve(held_mailboxes: &[String]) -> (std::sync::Arc<HoldingReceiver>, String) {
        let rx = std::sync::Arc::new(HoldingReceiver {
            held_mailboxes: held_mailboxes.iter().cloned().collect(),
            waiting: Default::default(),
            acked: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/inbound", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/inbound", axum::routing::post(holding_inbound))
            .with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, url)
    }

    fn waiting(&self) -> Vec<String> {
        self.waiting.lock().unwrap().keys().cloned().collect()
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    fn release(&self, id: &str) {
        let release = self
            .waiting
            .lock()
            .unwrap()
            .remove(id)
            .unwrap_or_else(|| panic!("{id} is not held"));
        release.send(()).expect("the held request is still waiting");
    }
}

/// A request the emulator logs now: every request arriving after it has a higher `seq`.
async fn log_marker(env: &Env, name: &str) -> u64 {
    let path = format!("/v1.0/users/{name}@marker.test/mailFolders");
    env.http
        .get(format!("{}{path}", env.url))
        .send()
        .await
        .expect("the emulator answers the marker");
    let log = env.requests().await;
    log.iter()
        .find(|e| e["path"] == path)
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("marker {path} not in the request log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_ingest_actions_wait_for_the_receivers_acknowledgement() {
    let env = Env::new().await;
    let (reader, mover, pacer) = (addr("held-reader"), addr("held-mover"), addr("pacer"));
    env.mailboxes(&[reader.clone(), mover.clone(), pacer.clone()]).await;
    for i in 0..3 {
        env.deliver(&reader, &format!("read me {i}")).await;
        env.deliver(&mover, &format!("move me {i}")).await;
    }
    let (rx, url) = HoldingReceiver::serve(&[reader.clone(), mover.clone()]).await;
    let mut toml = with_api_token(&env.config(std::slice::from_ref(&pacer), "200ms"));
    toml.push_str(&format!(
        "\n[[mailboxes]]\naddress = \"{reader}\"\napp = \"test\"\nafter_ingest = \"mark_read\"\n\
         \n[[mailboxes]]\naddress = \"{mover}\"\napp = \"test\"\nafter_ingest = \"move:archive\"\n"
    ));
    let file_sink = format!("[sink]\ntype = \"file\"\npath = \"{}\"\n", env.events_path().display());
    assert!(toml.contains(&file_sink));
    // The receiver's answer may take as long as the test holds it.
    let toml = toml.replace(
        &file_sink,
        &format!(
            "[sink]\ntype = \"webhook\"\nurl = \"{url}\"\nsigning_secret = \"dev:whsec-order\"\ntimeout = \"300s\"\n"
        ),
    );
    let daemon = env.start(&toml).await;

    // Every event of both mailboxes reached the receiver, which holds its answers.
    let all_held = eventually(LIMIT, || async { rx.waiting().len() == 6 }).await;
    assert!(all_held, "held: {:?}", rx.waiting());
    // The daemon goes on meanwhile: new mail of another mailbox is delivered and acknowledged,
    // and that mailbox polls several more times.
    let first = env.deliver(&pacer, "meanwhile").await["immutable_id"]
        .as_str()
        .unwrap()
        .to_string();
    let paced = eventually(LIMIT, || async { rx.acked().contains(&first) }).await;
    assert!(paced, "the other mailbox stalled while the receiver held events");
    let mark = log_marker(&env, "pacing").await;
    let polled = eventually(LIMIT, || async {
        let prefix = format!("/v1.0/users/{pacer}/");
        env.requests()
            .await
            .iter()
            .filter(|e| e["seq"].as_u64() > Some(mark) && log_path(e).starts_with(&prefix) && e["status"] == 200)
            .count()
            >= 3
    })
    .await;
    assert!(polled, "the other mailbox stopped polling");
    // Nothing was acknowledged for the held mailboxes, so nothing was acted on.
    let acted = |log: &[Value]| -> Vec<Value> {
        log.iter()
            .filter(|e| {
                let path = log_path(e);
                (e["method"] == "PATCH" || path.ends_with("/move"))
                    && [&reader, &mover]
                        .iter()
                        .any(|m| path.starts_with(&format!("/v1.0/users/{m}/messages/")))
            })
            .cloned()
            .collect()
    };
    let early = acted(&env.requests().await);
    assert!(early.is_empty(), "acted on before the receiver acknowledged: {early:?}");
    assert!(
        env.folder_messages(&reader, "inbox")
            .await
            .iter()
            .all(|m| m["is_read"] == false)
    );
    assert!(env.folder_messages(&mover, "archive").await.is_empty());

    // Released one by one; each release is marked in the request log just before it.
    let mut released_after: HashMap<String, u64> = HashMap::new();
    let mut held = rx.waiting();
    held.sort();
    for (i, id) in held.iter().enumerate() {
        let marker = log_marker(&env, &format!("release-{i}")).await;
        released_after.insert(id.clone(), marker);
        rx.release(id);
    }
    let done = eventually(LIMIT, || async {
        env.folder_messages(&reader, "inbox")
            .await
            .iter()
            .all(|m| m["is_read"] == true)
            && env.folder_messages(&mover, "archive").await.len() == 3
    })
    .await;
    assert!(
        done,
        "post-ingest actions incomplete: inbox of {reader}: {:?}; archive of {mover}: {:?}",
        env.folder_messages(&reader, "inbox").await,
        env.folder_messages(&mover, "archive").await
    );
    let log = env.requests().await;
    let actions = acted(&log);
    assert_eq!(actions.len(), 6, "one action per message: {actions:?}");
    for action in &actions {
        let path = log_path(action);
        let id = path.trim_end_matches("/move").rsplit('/').next().unwrap().to_string();
        let released = released_after
            .get(&id)
            .unwrap_or_else(|| panic!("acted on {id}, whose event was never acknowledged: {action}"));
        // The request that carried the action (the `$batch`, or the action itself) arrived
        // after the receiver was told to acknowledge.
        let carrier = action["batch"].as_u64().or(action["seq"].as_u64()).unwrap();
        assert!(
            carrier > *released,
            "{} {} (request {carrier}) arrived before its event was acknowledged (after request {released})",
            action["method"],
            path
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_the_mailbox_api_answer_and_keep_secrets() {
    let env = Env::new().await;
    let a = addr("api");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "for the metrics").await;
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&a), "300ms")))
        .await;
    assert_eq!(daemon.get("/livez", None).await.0, 200);
    let ready = eventually(LIMIT, || async { daemon.get("/readyz", None).await.0 == 200 }).await;
    assert!(ready, "/readyz never 200");
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    let active = eventually(LIMIT, || async { daemon.state(&a).await == "active" }).await;
    assert!(active);

    let (status, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metric(&metrics, "inboxd_messages_delivered_total", "").is_some_and(|v| v >= 1.0),
        "inboxd_messages_delivered_total missing or 0:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "inboxd_mailboxes", "state=\"active\""),
        Some(1.0),
        "{metrics}"
    );

    for token in [None, Some("wrong-token"), Some(&API_TOKEN[..API_TOKEN.len() - 1])] {
        let (status, body) = daemon.get("/v1/mailboxes", token).await;
        assert_eq!(status, 401, "/v1/mailboxes with {token:?}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (status, list) = daemon.get("/v1/mailboxes", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{list}");
    let listed: Value = serde_json::from_str(&list).unwrap();
    let view = &listed["mailboxes"][0];
    assert_eq!(view["address"], json!(a));
    assert_eq!(view["app"], "test");
    assert_eq!(view["access"], "app");
    assert_eq!(view["state"], "active");
    assert_eq!(view["aadsts"], Value::Null);
    assert!(view["delivered_total"].as_u64() >= Some(1), "{view}");
    assert!(
        view["since"].is_string() && view["last_success_at"].is_string(),
        "{view}"
    );
    let (status, one) = daemon.get(&format!("/v1/mailboxes/{a}"), Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{one}");

    for (what, text) in [
        ("/metrics", &metrics),
        ("/v1/mailboxes", &list),
        ("/v1/mailboxes/{a}", &one),
    ] {
        assert!(!text.contains(SECRET), "{what} leaks the client secret");
        assert!(!text.contains(API_TOKEN), "{what} leaks the API token");
        assert!(!text.contains("eyJ"), "{what} leaks what looks like an access token");
    }
    daemon.stop().await;
}
