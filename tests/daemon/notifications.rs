//! Change notifications as a wake-up: subscriptions kept alive against the emulator, the open
//! notification endpoint, lifecycle events, fallback to polling, and reuse after a restart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::free_port;
use crate::support::{Daemon, Env, addr, eventually, log_path, metric, with_api_token};

/// `store.encryption_key` of every config here: it seals each subscription's clientState.
const STORE_KEY: &str = "notifications-test-store-key";
/// Generous bound for anything the daemon does by itself.
const LIMIT: Duration = Duration::from_secs(30);

/// The generated config with the API token, the store key and `[notifications]` (safety poll
/// one hour, so only a wake-up can explain a prompt round) plus `extra` keys of that section.
fn config(env: &Env, mailboxes: &[String], poll: &str, extra: &str) -> String {
    let toml = with_api_token(&env.config(mailboxes, poll));
    let toml = toml.replacen(
        "[store]\n",
        &format!("[store]\nencryption_key = \"dev:{STORE_KEY}\"\n"),
        1,
    );
    format!("{toml}\n[notifications]\nenabled = true\nsafety_poll_interval = \"1h\"\n{extra}\n")
}

/// Live subscriptions in the emulator for `mailbox`.
async fn subscriptions(env: &Env, mailbox: &str) -> Vec<Value> {
    env.control_get("/_emulator/subscriptions").await["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["mailbox"] == mailbox && s["expired"] == false)
        .collect()
}

/// The mailbox's `notifications` view in `/v1/mailboxes`.
async fn view(daemon: &Daemon, mailbox: &str) -> Value {
    daemon.mailbox_views().await.remove(mailbox).unwrap_or(Value::Null)
}

/// Waits until the mailbox is subscribed and polled once; returns its one subscription.
async fn subscribed(env: &Env, daemon: &Daemon, mailbox: &str) -> Value {
    let ok = eventually(LIMIT, || async {
        let v = view(daemon, mailbox).await;
        v["notifications"]["state"] == "active" && !v["last_success_at"].is_null()
    })
    .await;
    assert!(ok, "not subscribed: {}", view(daemon, mailbox).await);
    let subs = subscriptions(env, mailbox).await;
    assert_eq!(subs.len(), 1, "one subscription per folder: {subs:?}");
    subs[0].clone()
}

/// Graph requests of `method` whose decoded path contains `part`, and their statuses.
async fn calls(env: &Env, method: &str, part: &str) -> Vec<u64> {
    env.requests()
        .await
        .iter()
        .filter(|r| r["method"] == method && log_path(r).contains(part))
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect()
}

/// Delta requests for a mailbox so far (one per round of its one folder when idle).
async fn rounds(env: &Env, mailbox: &str) -> usize {
    env.requests()
        .await
        .iter()
        .filter(|r| {
            let path = log_path(r);
            r["method"] == "GET" && path.contains(&format!("/users/{mailbox}/")) && path.ends_with("/messages/delta")
        })
        .count()
}

async fn post(daemon: &Daemon, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}{path}", daemon.addr))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn change(sub: &Value, client_state: &str) -> Value {
    json!({"value": [{
        "subscriptionId": sub["id"], "clientState": client_state, "changeType": "created",
        "resource": "Users/x/Messages/y", "tenantId": crate::support::TENANT,
    }]})
}

async fn metrics(daemon: &Daemon) -> String {
    daemon.get("/metrics", None).await.1
}

#[tokio::test]
async fn new_mail_wakes_the_mailbox_at_once_and_a_burst_is_one_round() {
    let env = Env::new().await;
    let mailbox = addr("wake");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    env.control("/_emulator/subscriptions/settings", json!({"delivery_delay_ms": 100}))
        .await;
    let daemon = env.start(&config(&env, std::slice::from_ref(&mailbox), "1h", "")).await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    assert_eq!(sub["change_type"], "created");
    assert!(sub["client_state"].as_str().is_some_and(|c| c.len() >= 32), "{sub}");
    let v = view(&daemon, &mailbox).await;
    assert_eq!(v["notifications"]["poll_interval_seconds"], 3600.0, "{v}");

    // Polled hourly: only the notification can bring this message in seconds.
    env.deliver(&mailbox, "woken").await;
    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "the notification did not wake the mailbox");
    let delivered = env.control_get("/_emulator/notifications").await;
    assert!(
        delivered["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "change" && n["status"] == 202),
        "{delivered}"
    );

    // 50 genuine notifications at once: answered at once, coalesced into a round or two.
    let before = rounds(&env, &mailbox).await;
    let client_state = sub["client_state"].as_str().unwrap().to_string();
    let answers = futures_util::future::join_all(
        (0..50).map(|_| post(&daemon, "/graph/notifications", change(&sub, &client_state))),
    )
    .await;
    assert!(answers.iter().all(|s| *s == 202), "{answers:?}");
    assert!(
        eventually(LIMIT, || async { rounds(&env, &mailbox).await > before }).await,
        "the burst woke no round"
    );
    // A later message proves the burst's rounds are over by the time its event is in.
    env.deliver(&mailbox, "after the burst").await;
    assert_eq!(env.wait_for_events(2, LIMIT).await.len(), 2);
    let burst_rounds = rounds(&env, &mailbox).await - before;
    assert!(
        burst_rounds <= 4,
        "50 notifications and one message made {burst_rounds} rounds"
    );
    assert_eq!(
        metric(&metrics(&daemon).await, "inboxd_subscriptions", "state=\"active\""),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn the_endpoint_is_open_answers_the_handshake_and_refuses_forged_notifications() {
    let env = Env::new().await;
    let mailbox = addr("open");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let daemon = env.start(&config(&env, std::slice::from_ref(&mailbox), "1h", "")).await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    let http = reqwest::Client::new();

    for path in ["/graph/notifications", "/graph/lifecycle"] {
        let resp = http
            .post(format!(
                "http://{}{path}?validationToken=Validation%3A%20a%20b%2Bc%26d",
                daemon.addr
            ))
            .header("content-type", "text/plain; charset=utf-8")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        assert_eq!(
            resp.text().await.unwrap(),
            "Validation: a b+c&d",
            "{path}: token not decoded"
        );
    }

    assert_eq!(
        post(&daemon, "/graph/notifications", change(&sub, "forged-state")).await,
        403
    );
    assert_eq!(post(&daemon, "/graph/notifications", change(&sub, "")).await, 403);
    let unknown = json!({"value": [{"subscriptionId": "no-such-subscription", "clientState": "x"}]});
    assert_eq!(post(&daemon, "/graph/notifications", unknown).await, 202);
    // An odd item (a number where Graph sends a string) beside a genuine one: the genuine one
    // still counts, the odd one is unknown, and Graph is not told to drop or retry the batch.
    let mut mixed = change(&sub, sub["client_state"].as_str().unwrap());
    mixed["value"]
        .as_array_mut()
        .unwrap()
        .push(json!({"subscriptionId": 5, "clientState": ["x"]}));
    assert_eq!(post(&daemon, "/graph/notifications", mixed).await, 202);
    assert_eq!(post(&daemon, "/graph/notifications", json!({"nope": 1})).await, 400);
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = http
        .post(format!("http://{}/graph/notifications", daemon.addr))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "the endpoint has its own small body limit");
    let text = metrics(&daemon).await;
    assert_eq!(
        metric(&text, "inboxd_notifications_total", "outcome=\"forged\""),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "inboxd_notifications_total", "outcome=\"unknown\""),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "inboxd_notifications_total", "outcome=\"accepted\""),
        Some(1.0)
    );
    assert!(!text.contains(sub["client_state"].as_str().unwrap()));
    // The rest of the API still wants a bearer token.
    assert_eq!(daemon.get("/v1/mailboxes", None).await.0, 401);
    daemon.stop().await;
}

#[tokio::test]
async fn the_endpoint_has_a_rate_limit() {
    let env = Env::new().await;
    let mailbox = addr("limit");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let daemon = env
        .start(&config(&env, std::slice::from_ref(&mailbox), "1h", "rate_limit = 1"))
        .await;
    let answers =
        futures_util::future::join_all((0..20).map(|_| post(&daemon, "/graph/notifications", json!({"value": []}))))
            .await;
    assert!(answers.contains(&429), "{answers:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn graph_caps_the_lifetime_and_the_daemon_asks_again_with_that_figure() {
    let env = Env::new().await;
    let mailbox = addr("cap");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    env.control("/_emulator/subscriptions/settings", json!({"max_minutes": 77}))
        .await;
    let daemon = env.start(&config(&env, std::slice::from_ref(&mailbox), "1h", "")).await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    let created = calls(&env, "POST", "/v1.0/subscriptions").await;
    assert_eq!(created, vec![400, 201], "refused once, then asked with 77 minutes");
    let expires = time::OffsetDateTime::parse(
        sub["expiration"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(77) && left > time::Duration::minutes(70),
        "{left}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn subscriptions_are_renewed_before_expiry_and_one_that_vanishes_is_created_again() {
    let env = Env::new().await;
    let mailbox = addr("renew");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    env.control("/_emulator/subscriptions/settings", json!({"min_minutes": 0}))
        .await;
    let daemon = env
        .start(&config(
            &env,
            std::slice::from_ref(&mailbox),
            "1h",
            "subscription_lifetime = \"8s\"",
        ))
        .await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let first_expiry = sub["expiration"].as_str().unwrap().to_string();
    assert!(
        eventually(LIMIT, || async {
            calls(&env, "PATCH", &format!("/v1.0/subscriptions/{id}"))
                .await
                .contains(&200)
        })
        .await,
        "never renewed"
    );
    // Well past the first expiry, the same subscription is still alive.
    let later = |s: Value| s["id"] == id.as_str() && s["expiration"].as_str().unwrap() > first_expiry.as_str();
    assert!(
        eventually(LIMIT, || async {
            subscriptions(&env, &mailbox).await.into_iter().any(later)
        })
        .await,
        "{:?}",
        subscriptions(&env, &mailbox).await
    );

    // It vanishes without a lifecycle event: the next renewal finds out and creates another.
    let resp = env
        .http
        .delete(format!("{}/_emulator/subscriptions/{id}", env.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(
        eventually(LIMIT, || async {
            subscriptions(&env, &mailbox)
                .await
                .iter()
                .any(|s| s["id"] != id.as_str())
        })
        .await,
        "no new subscription after the old one vanished"
    );
    assert!(
        calls(&env, "PATCH", &format!("/v1.0/subscriptions/{id}"))
            .await
            .contains(&404)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn lifecycle_events_reauthorize_recreate_and_catch_up() {
    let env = Env::new().await;
    let mailbox = addr("life");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let daemon = env.start(&config(&env, std::slice::from_ref(&mailbox), "1h", "")).await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let lifecycle = |event: &'static str| {
        let path = format!("/_emulator/subscriptions/{id}/lifecycle");
        let env = &env;
        async move { env.control(&path, json!({ "event": event })).await }
    };

    let before = rounds(&env, &mailbox).await;
    lifecycle("missed").await;
    assert!(
        eventually(LIMIT, || async { rounds(&env, &mailbox).await > before }).await,
        "missed did not trigger a delta round"
    );

    lifecycle("reauthorizationRequired").await;
    assert!(
        eventually(LIMIT, || async {
            calls(&env, "POST", &format!("/v1.0/subscriptions/{id}/reauthorize")).await == vec![204]
        })
        .await,
        "not reauthorized"
    );

    let before = rounds(&env, &mailbox).await;
    lifecycle("subscriptionRemoved").await;
    assert!(
        eventually(LIMIT, || async {
            let subs = subscriptions(&env, &mailbox).await;
            subs.len() == 1 && subs[0]["id"] != id.as_str()
        })
        .await,
        "not created again after subscriptionRemoved"
    );
    assert!(
        eventually(LIMIT, || async { rounds(&env, &mailbox).await > before }).await,
        "no catch-up round after subscriptionRemoved"
    );
    // The new subscription wakes the mailbox like the first did.
    env.deliver(&mailbox, "after recreation").await;
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn an_endpoint_graph_cannot_reach_falls_back_to_polling_without_flagging() {
    let env = Env::new().await;
    let mailbox = addr("fallback");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let unreachable = format!("public_url = \"http://127.0.0.1:{}\"", free_port());
    let daemon = env
        .start(&config(&env, std::slice::from_ref(&mailbox), "300ms", &unreachable))
        .await;
    let ok = eventually(LIMIT, || async {
        view(&daemon, &mailbox).await["notifications"]["state"] == "fallback"
    })
    .await;
    let v = view(&daemon, &mailbox).await;
    assert!(ok, "{v}");
    assert!(
        v["notifications"]["reason"].as_str().unwrap().contains("public_url"),
        "{v}"
    );
    assert_eq!(v["notifications"]["poll_interval_seconds"], 0.3, "{v}");
    assert!(calls(&env, "POST", "/v1.0/subscriptions").await.contains(&400));
    assert!(subscriptions(&env, &mailbox).await.is_empty());
    // Mail still flows at the poll interval, and the mailbox is not flagged.
    env.deliver(&mailbox, "polled").await;
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    assert_eq!(daemon.state(&mailbox).await, "active");
    assert_eq!(
        metric(&metrics(&daemon).await, "inboxd_subscriptions", "state=\"fallback\""),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_restart_reuses_the_stored_subscription() {
    let env = Env::new().await;
    let mailbox = addr("restart");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let listen = format!("listen = \"127.0.0.1:{}\"", free_port());
    let toml = config(&env, std::slice::from_ref(&mailbox), "1h", "").replacen("listen = \"127.0.0.1:0\"", &listen, 1);
    let daemon = env.start(&toml).await;
    let sub = subscribed(&env, &daemon, &mailbox).await;
    daemon.stop().await;
    let store = std::fs::read(env.dir.path().join("inboxd.db")).unwrap();
    let secret = sub["client_state"].as_str().unwrap();
    assert!(
        !store.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the clientState is stored in plain text"
    );

    let daemon = env.start(&toml).await;
    let again = subscribed(&env, &daemon, &mailbox).await;
    assert_eq!(again["id"], sub["id"]);
    assert_eq!(
        calls(&env, "POST", "/v1.0/subscriptions").await,
        vec![201],
        "created again"
    );
    let id = sub["id"].as_str().unwrap();
    assert!(
        calls(&env, "GET", &format!("/v1.0/subscriptions/{id}"))
            .await
            .contains(&200)
    );
    // The reused subscription still wakes the mailbox (its clientState was unsealed).
    env.deliver(&mailbox, "after restart").await;
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_mailbox_removed_from_the_config_loses_its_subscription() {
    let env = Env::new().await;
    let (kept, removed) = (addr("kept"), addr("removed"));
    env.mailboxes(&[kept.clone(), removed.clone()]).await;
    let file = |mailboxes: &[String]| {
        config(&env, mailboxes, "1h", "").replace(
            &format!("client_secret = \"env:{}\"", crate::support::SECRET_ENV),
            &format!("client_secret = \"dev:{}\"", crate::support::SECRET),
        )
    };
    let path = env.write_config(&file(&[kept.clone(), removed.clone()]));
    let daemon = env.start_with_reload(&path).await;
    subscribed(&env, &daemon, &kept).await;
    let gone = subscribed(&env, &daemon, &removed).await;

    std::fs::write(&path, file(std::slice::from_ref(&kept))).unwrap();
    let id = gone["id"].as_str().unwrap().to_string();
    assert!(
        eventually(LIMIT, || async {
            calls(&env, "DELETE", &format!("/v1.0/subscriptions/{id}"))
                .await
                .contains(&204)
        })
        .await,
        "the removed mailbox's subscription was not deleted"
    );
    assert!(subscriptions(&env, &removed).await.is_empty());
    assert_eq!(
        subscriptions(&env, &kept).await.len(),
        1,
        "the other mailbox keeps its subscription"
    );
    daemon.stop().await;
}
