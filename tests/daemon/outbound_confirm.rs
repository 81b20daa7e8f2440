//! Replies exactly once when sending is asynchronous: `kill -9` right after Graph accepted a
//! `send` (the message in the Outbox, the 202 never heard), with and without `createReply`
//! keeping the marker; non-delivery reports end `failed`; a message never found ends
//! `unconfirmed` and is not sent again; creating requests whose answer was lost are not
//! repeated; a failing store write backs off; a reload never fails a row; an
//! `Idempotency-Key` answers first; a slow mailbox delays only its own replies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::outbound::{
    ANN, Api, CONFIRM_WITHIN_S, LIMIT, SUPPORT, SUPPORT_PATHS, config, deliver_from, exactly_one, from_ann,
    outbound_events, summary, support_requests, tail, wait_end,
};
use crate::support::{Env, eventually, with_microsoft};

/// Waits (bounded) until `id` is `sent`; the failure names the log of `binary` when given.
async fn wait_sent_or(api: &Api, id: &str, log: impl Fn() -> String) {
    let view = wait_end(api, id, LIMIT).await;
    assert_eq!(
        view["status"],
        "sent",
        "outbound {id}: {view}; log:\n{}",
        tail(&log(), 30)
    );
}

/// A number from the environment (the full scenario: `INBOXD_TRANSIT_REPLIES=20
/// INBOXD_TRANSIT_DELAY_MS=15000`), else the CI default.
fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Replies to Ann's messages, each one's process killed once Graph took its `send` (the
/// reply is in the Outbox) but before the 202 reached it; transport takes 3 s.
async fn killed_after_each_accepted_send(ignore_marker: bool) {
    let replies = from_env("INBOXD_TRANSIT_REPLIES", 3) as usize;
    let delay_ms = from_env("INBOXD_TRANSIT_DELAY_MS", 3000);
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    env.settings(json!({
        "transport_delay_ms": delay_ms,
        "create_response_ignores_extended_properties": ignore_marker,
    }))
    .await;
    let mut originals = Vec::new();
    for i in 0..replies {
        originals.push(from_ann(&env, &format!("Transit {i}")).await);
    }
    let config = env.write_config(&config(&env, &[SUPPORT]));
    let mut ids = Vec::new();
    for (i, original) in originals.iter().enumerate() {
        env.fault(json!({
            "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
            "delay_after_ms": 10_000, "times": 1,
        }))
        .await;
        let mut binary = env.spawn_binary(&config, i).await;
        let api = Api::at(binary.addr());
        let body = json!({"comment": format!("Answer {i}")});
        ids.push(
            api.accepted(SUPPORT, original, "reply", &format!("transit-{i}"), &body)
                .await,
        );
        let subject = format!("RE: Transit {i}");
        let in_outbox = eventually(LIMIT, || async {
            env.folder_messages(SUPPORT, "outbox")
                .await
                .iter()
                .any(|m| m["subject"] == subject.as_str())
        })
        .await;
        assert!(
            in_outbox,
            "reply {i} never reached the Outbox; log:\n{}",
            tail(&binary.stderr(), 30)
        );
        binary.kill_9();
        env.clear_faults().await;
    }
    let last = env.spawn_binary(&config, replies).await;
    let api = Api::at(last.addr());
    for id in &ids {
        wait_sent_or(&api, id, || last.stderr()).await;
    }
    for i in 0..replies {
        exactly_one(&env, ANN, "inbox", &format!("RE: Transit {i}")).await;
        exactly_one(&env, SUPPORT, "sentitems", &format!("RE: Transit {i}")).await;
    }
    let inbox = env.folder_messages(ANN, "inbox").await;
    assert_eq!(inbox.len(), replies, "Ann's inbox: {:?}", summary(&inbox));
    for folder in ["drafts", "outbox"] {
        let left = env.folder_messages(SUPPORT, folder).await;
        assert!(left.is_empty(), "{folder}: {:?}", summary(&left));
    }
    let created = support_requests(&env, "POST", "/createReply").await;
    assert_eq!(created.len(), replies, "one draft per reply: {created:?}");
    if ignore_marker {
        let patched = support_requests(&env, "PATCH", "").await;
        assert_eq!(
            patched.len(),
            replies,
            "the marker is PATCHed onto each draft: {patched:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_each_accepted_send_reaches_the_customer_once() {
    killed_after_each_accepted_send(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_each_accepted_send_once_even_when_create_reply_drops_the_marker() {
    killed_after_each_accepted_send(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transport_failure_ends_failed_with_the_reports_reason() {
    const REASON: &str = "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found";
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    env.settings(json!({"transport_failure": REASON, "transport_delay_ms": 300}))
        .await;
    let first = from_ann(&env, "Bounce one").await;
    let second = from_ann(&env, "Bounce two").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let ids = [
        api.accepted(SUPPORT, &first, "reply", "bounce-1", &json!({"comment": "a"}))
            .await,
        api.accepted(SUPPORT, &second, "reply", "bounce-2", &json!({"comment": "b"}))
            .await,
    ];
    for id in &ids {
        let view = wait_end(&api, id, LIMIT).await;
        assert_eq!(view["status"], "failed", "{view}");
        assert!(
            view["error"].as_str().is_some_and(|e| e.contains(REASON)),
            "the error names the report's reason: {view}"
        );
        let event = outbound_events(&env)
            .into_iter()
            .find(|e| e["outbound_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(event["status"], "failed", "{event}");
        assert!(event["error"].as_str().is_some_and(|e| e.contains(REASON)), "{event}");
    }
    let received: Vec<Value> = env
        .folder_messages(ANN, "inbox")
        .await
        .into_iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.starts_with("RE:")))
        .collect();
    assert!(received.is_empty(), "{:?}", summary(&received));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_never_seen_in_sent_items_ends_unconfirmed_and_is_not_sent_again() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    // Transport takes an hour; the daemon looks for two seconds.
    env.settings(json!({"transport_delay_ms": 3_600_000})).await;
    let original = from_ann(&env, "Slow transport").await;
    let toml = config(&env, &[SUPPORT]).replace(
        &format!("confirm_within = \"{CONFIRM_WITHIN_S}s\""),
        "confirm_within = \"2s\"",
    );
    let daemon = env.start(&toml).await;
    let api = Api::at(daemon.addr);
    let id = api
        .accepted(SUPPORT, &original, "reply", "slow-1", &json!({"comment": "Patience."}))
        .await;
    let view = wait_end(&api, &id, LIMIT).await;
    assert_eq!(view["status"], "unconfirmed", "{view}");
    assert!(
        view["error"].as_str().is_some_and(|e| e.contains("not sent again")),
        "{view}"
    );
    let events: Vec<Value> = outbound_events(&env)
        .into_iter()
        .filter(|e| e["outbound_id"] == id.as_str())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], "unconfirmed", "{events:?}");
    assert_eq!(support_requests(&env, "POST", "/createReply").await.len(), 1);
    assert_eq!(support_requests(&env, "POST", "/send").await.len(), 1);
    // Transport finally delivers the one message there is.
    env.control("/_emulator/clock", json!({"advance_secs": 3601})).await;
    exactly_one(&env, ANN, "inbox", "RE: Slow transport").await;
    let (_, again) = api.outbound(&id).await;
    assert_eq!(again["status"], "unconfirmed", "a final status stays: {again}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_to_creating_requests_are_not_repeated_blindly() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let first = from_ann(&env, "Lost draft answer").await;
    let second = from_ann(&env, "Lost attachment answer").await;
    // Graph does the work; its answer comes after the daemon stopped waiting.
    for suffix in ["/createReply", "/attachments"] {
        env.fault(json!({
            "path_prefix": SUPPORT_PATHS, "path_suffix": suffix, "method": "POST",
            "delay_after_ms": 2500, "times": 1,
        }))
        .await;
    }
    let toml = with_microsoft(&config(&env, &[SUPPORT]), "request_timeout = \"1s\"");
    let daemon = env.start(&toml).await;
    let api = Api::at(daemon.addr);
    let a = api
        .accepted(SUPPORT, &first, "reply", "lost-draft", &json!({"comment": "one"}))
        .await;
    wait_sent_or(&api, &a, String::new).await;
    let attachment =
        json!([{"name": "note.txt", "content_type": "text/plain", "content_base64": STANDARD.encode(b"once")}]);
    let b = api
        .accepted(
            SUPPORT,
            &second,
            "reply",
            "lost-attachment",
            &json!({"comment": "two", "attachments": attachment}),
        )
        .await;
    wait_sent_or(&api, &b, String::new).await;

    // (The request log leaves out requests whose client gave up, so the emulator's state is
    // the witness: a repeated createReply leaves a marked draft behind, a repeated attachment
    // arrives twice.)
    exactly_one(&env, ANN, "inbox", "RE: Lost draft answer").await;
    let received = exactly_one(&env, ANN, "inbox", "RE: Lost attachment answer").await;
    let names: Vec<&Value> = received["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["name"])
        .collect();
    assert_eq!(names, vec!["note.txt"], "{received}");
    let drafts = env.folder_messages(SUPPORT, "drafts").await;
    assert!(drafts.is_empty(), "a draft was created twice: {:?}", summary(&drafts));
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 2);
    daemon.stop().await;
}

/// Opens the daemon's SQLite file from the test (WAL allows a second connection).
async fn database(env: &Env) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_status_write_backs_off_and_makes_no_new_draft() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Store trouble").await;
    let config = env.write_config(&config(&env, &[SUPPORT]));
    let binary = env.spawn_binary(&config, 0).await;
    let api = Api::at(binary.addr());
    // The database refuses the final status, as a full disk or a broken file would.
    let db = database(&env).await;
    sqlx::query(
        "CREATE TRIGGER refuse_sent BEFORE UPDATE OF status ON outbox WHEN NEW.status = 'sent'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let id = api
        .accepted(SUPPORT, &original, "reply", "store-1", &json!({"comment": "Once."}))
        .await;
    let refused = eventually(LIMIT, || async {
        binary.stderr().matches("Cannot record outbound progress").count() >= 3
    })
    .await;
    assert!(
        refused,
        "the refused write was not retried; log:\n{}",
        tail(&binary.stderr(), 30)
    );
    let looks = support_requests(&env, "GET", "/messages").await.len();
    assert!(
        looks <= 12,
        "{looks} Graph look-ups while the store refused a write: the sender loops; log:\n{}",
        tail(&binary.stderr(), 20)
    );
    assert_eq!(support_requests(&env, "POST", "/createReply").await.len(), 1);

    sqlx::query("DROP TRIGGER refuse_sent").execute(&db).await.unwrap();
    wait_sent_or(&api, &id, || binary.stderr()).await;
    exactly_one(&env, ANN, "inbox", "RE: Store trouble").await;
    assert_eq!(support_requests(&env, "POST", "/createReply").await.len(), 1);
    assert_eq!(support_requests(&env, "POST", "/send").await.len(), 1);
}

/// A config file the daemon reloads: inline secret, so the process environment is not needed.
fn reloadable(env: &Env, mailboxes: &[&str]) -> String {
    config(env, mailboxes).replace(
        &format!("client_secret = \"env:{}\"", crate::support::SECRET_ENV),
        &format!("client_secret = \"dev:{}\"", crate::support::SECRET),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_never_fails_a_row_and_the_key_still_answers() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Reloaded").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/createReply", "method": "POST",
        "status": 503, "times": 1000,
    }))
    .await;
    let path = env.write_config(&reloadable(&env, &[SUPPORT]));
    let daemon = env.start_with_reload(&path).await;
    let api = Api::at(daemon.addr);
    let body = json!({"comment": "Still here."});
    let id = api.accepted(SUPPORT, &original, "reply", "reload-1", &body).await;
    let tried = eventually(LIMIT, || async {
        !support_requests(&env, "POST", "/createReply").await.is_empty()
    })
    .await;
    assert!(tried);

    // The mailbox leaves the configuration: its row waits, it is not failed.
    std::fs::write(&path, reloadable(&env, &[])).unwrap();
    let waited = eventually(LIMIT, || async {
        let (_, view) = api.outbound(&id).await;
        view["status"] == "failed" || view["error"].as_str().is_some_and(|e| e.contains("not configured"))
    })
    .await;
    let (_, view) = api.outbound(&id).await;
    assert!(waited && view["status"] != "failed", "{view}");
    // The same request with the same key: the same id, though the mailbox is gone.
    let (status, again) = api.respond(SUPPORT, &original, "reply", "reload-1", &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], id.as_str(), "{again}");

    env.clear_faults().await;
    std::fs::write(&path, reloadable(&env, &[SUPPORT])).unwrap();
    wait_sent_or(&api, &id, String::new).await;
    exactly_one(&env, ANN, "inbox", "RE: Reloaded").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_answers_before_the_mailbox_state_is_checked() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Flagged later").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let body = json!({"comment": "Done."});
    let id = api.accepted(SUPPORT, &original, "reply", "first-key", &body).await;
    wait_sent_or(&api, &id, String::new).await;

    env.control(&format!("/_emulator/mailboxes/{SUPPORT}/access"), json!({"deny": true}))
        .await;
    let flagged = eventually(LIMIT, || async { daemon.state(SUPPORT).await == "access_denied" }).await;
    assert!(flagged, "state: {}", daemon.state(SUPPORT).await);
    let (status, again) = api.respond(SUPPORT, &original, "reply", "first-key", &body).await;
    assert_eq!(status, 202, "the retry of an accepted request: {again}");
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["status"], "sent", "{again}");
    let (status, other) = api.respond(SUPPORT, &original, "reply", "other-key", &body).await;
    assert_eq!(status, 409, "a new request to a flagged mailbox: {other}");
    let (status, reused) = api
        .respond(SUPPORT, &original, "reply", "first-key", &json!({"comment": "Else."}))
        .await;
    assert_eq!(status, 422, "{reused}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_mailbox_delays_only_its_own_replies() {
    const HELP: &str = "help@contoso.test";
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), HELP.into(), ANN.into()]).await;
    let slow = from_ann(&env, "Slow one").await;
    let fast = deliver_from(&env, ANN, &[HELP], &[], "Fast one", json!([])).await;
    let fast = fast["immutable_id"].as_str().unwrap().to_string();
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/createReply", "method": "POST",
        "delay_ms": 15_000, "times": 1,
    }))
    .await;
    let daemon = env.start(&config(&env, &[SUPPORT, HELP])).await;
    let api = Api::at(daemon.addr);
    let held = api
        .accepted(SUPPORT, &slow, "reply", "slow-1", &json!({"comment": "s"}))
        .await;
    let holding = eventually(LIMIT, || async {
        env.control_get("/_emulator/faults").await["faults"] == json!([])
    })
    .await;
    assert!(holding, "support's createReply never arrived");
    let quick = api
        .accepted(HELP, &fast, "reply", "fast-1", &json!({"comment": "f"}))
        .await;
    let view = wait_end(&api, &quick, LIMIT).await;
    assert_eq!(view["status"], "sent", "{view}");
    let (_, other) = api.outbound(&held).await;
    assert_ne!(
        other["status"], "sent",
        "help's reply was sent only after support's held request: {other}"
    );
    daemon.stop().await;
}
