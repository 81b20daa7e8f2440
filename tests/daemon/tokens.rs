//! App-only tokens: one request per app however many mailboxes, refreshed before expiry,
//! a failing token endpoint rides on the cached token, and credential problems are told
//! apart from transient ones.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    API_TOKEN, CLIENT, Env, SECRET, TENANT, addr, eventually, is_graph_request, is_token_request, last_seq, log_path,
    log_time, metric, with_api_token,
};

/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_mailboxes_of_one_app_share_one_token_request() {
    let env = Env::new().await;
    let n = 1000;
    let load = env
        .control(
            "/_emulator/load",
            json!({
                "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                "mailboxes": n, "messages_per_mailbox": 1, "body_bytes": 200,
                "address_prefix": "tok", "domain": "load.example.com",
            }),
        )
        .await;
    assert_eq!(load["mailboxes"], n, "{load}");
    let addresses: Vec<String> = (0..n).map(|i| format!("tok{i}@load.example.com")).collect();
    let daemon = env.start(&with_api_token(&env.config(&addresses, "1s"))).await;

    let events = env.wait_for_events(n, LIMIT).await;
    let mailboxes: HashSet<&str> = events.iter().map(|e| e.mailbox.as_str()).collect();
    assert_eq!(mailboxes.len(), n, "not every mailbox completed a round");
    let all_active = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        views.len() == n && views.values().all(|v| v["state"] == "active")
    })
    .await;
    assert!(all_active, "not every mailbox is active");

    let log = env.requests().await;
    let token_requests: Vec<&Value> = log.iter().filter(|e| is_token_request(e)).collect();
    assert_eq!(
        token_requests.len(),
        1,
        "expected one token request for 1,000 mailboxes of one app, got {}: {:?}",
        token_requests.len(),
        token_requests.iter().map(|e| &e["time"]).collect::<Vec<_>>()
    );
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(
        metric(&metrics, "inboxd_token_requests_total", "outcome=\"success\""),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "inboxd_mailboxes", "state=\"active\""), Some(n as f64));
    daemon.stop().await;
}

/// Successful delta requests of each of `mailboxes` after `since` (a sequence number).
fn polls_since(log: &[Value], mailboxes: &[String], since: u64) -> Vec<usize> {
    mailboxes
        .iter()
        .map(|m| {
            let prefix = format!("/v1.0/users/{m}/mailFolders");
            log.iter()
                .filter(|e| e["seq"].as_u64().is_some_and(|s| s > since) && e["status"] == 200)
                .filter(|e| log_path(e).starts_with(&prefix) && log_path(e).ends_with("/delta"))
                .count()
        })
        .collect()
}

/// Waits (bounded) until every mailbox has polled at least `n` times after `since`.
async fn wait_polls(env: &Env, mailboxes: &[String], since: u64, n: usize) {
    let polled = eventually(LIMIT, || async {
        polls_since(&env.requests().await, mailboxes, since)
            .iter()
            .all(|p| *p >= n)
    })
    .await;
    assert!(
        polled,
        "not every mailbox polled {n} times: {:?}",
        polls_since(&env.requests().await, mailboxes, since)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_request_per_lifetime_however_many_mailboxes_and_polls_then_exactly_one_more() {
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 3600})).await;
    let boxes: Vec<String> = (0..30).map(|i| addr(&format!("lifetime-{i:02}"))).collect();
    env.mailboxes(&boxes).await;
    let daemon = env.start(&with_api_token(&env.config(&boxes, "100ms"))).await;

    // Many polls of every mailbox within one token lifetime: one token request in all.
    wait_polls(&env, &boxes, 0, 10).await;
    let log = env.requests().await;
    let tokens: Vec<&Value> = log.iter().filter(|e| is_token_request(e)).collect();
    assert_eq!(
        tokens.len(),
        1,
        "one app, one lifetime, {} mailboxes × 10+ polls: expected one token request, got {tokens:?}",
        boxes.len()
    );
    assert!(
        log.iter()
            .filter(|e| is_graph_request(e))
            .all(|e| e["token"] == "valid")
    );

    // The emulator's clock passes the token's expiry (the daemon's clock does not: its token is
    // still fresh to it). Every mailbox meets a 401 at about the same time: one refresh for all.
    // The next 30 Graph requests are held half a second before the emulator looks at their
    // token: all of them were sent with the first token, and are refused at about the same time.
    let mark = last_seq(&env).await;
    env.fault(json!({"path_prefix": "/v1.0/users/", "delay_ms": 500, "times": boxes.len()}))
        .await;
    env.control("/_emulator/clock", json!({"advance_secs": 3700})).await;
    wait_polls(&env, &boxes, mark, 10).await;
    let log = env.requests().await;
    let tokens: Vec<&Value> = log.iter().filter(|e| is_token_request(e)).collect();
    let expired: Vec<&Value> = log
        .iter()
        .filter(|e| is_graph_request(e) && e["token"] == "expired")
        .collect();
    assert!(
        expired.len() >= 5,
        "the clock advance expired the token of {} request(s) only: too few to test the single flight",
        expired.len()
    );
    assert_eq!(
        tokens.len(),
        2,
        "a second lifetime must bring exactly one more token request, got {tokens:?}"
    );
    assert!(tokens.iter().all(|t| t["status"] == 200), "{tokens:?}");
    let first_expired = expired.iter().filter_map(|e| e["seq"].as_u64()).min().unwrap();
    assert!(
        tokens[1]["seq"].as_u64() > Some(first_expired),
        "the second token was fetched before any request was refused"
    );
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(
        metric(&metrics, "inboxd_token_requests_total", "outcome=\"success\""),
        Some(2.0),
        "{metrics}"
    );
    // A refused token is no credential problem.
    for m in &boxes {
        let states: Vec<Value> = env.state_events(m).iter().map(|e| e["state"].clone()).collect();
        assert!(states.iter().all(|s| s == "active"), "{m}: {states:?}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_tokens_are_refreshed_once_per_lifetime_before_they_expire() {
    let env = Env::new().await;
    // Refreshed half-way through: every 3 s.
    let lifetime = 6;
    env.settings(json!({"token_lifetime_secs": lifetime})).await;
    let boxes: Vec<String> = (0..10).map(|i| addr(&format!("short-{i}"))).collect();
    env.mailboxes(&boxes).await;
    let daemon = env.start(&env.config(&boxes, "100ms")).await;

    // Into the fourth token, with mail arriving throughout.
    let mut delivered = 0;
    let fourth = eventually(LIMIT, || {
        let (env, boxes) = (&env, &boxes);
        let tick = delivered;
        delivered += 1;
        async move {
            env.deliver(&boxes[tick % boxes.len()], &format!("tick {tick}")).await;
            tokio::time::sleep(Duration::from_millis(200)).await; // pacing the mail, not a correctness wait
            env.requests().await.iter().filter(|e| is_token_request(e)).count() >= 4
        }
    })
    .await;
    assert!(
        fourth,
        "fewer than four token requests within 60 s of {lifetime}-second tokens"
    );
    let events = env.wait_for_events(delivered, LIMIT).await;
    assert_eq!(events.len(), delivered, "polling stalled around a refresh");

    let log = env.requests().await;
    let tokens: Vec<&Value> = log.iter().filter(|e| is_token_request(e)).collect();
    assert!(
        tokens.iter().all(|t| t["status"] == 200),
        "a token request failed: {tokens:?}"
    );
    for pair in tokens.windows(2) {
        let gap = log_time(pair[1]) - log_time(pair[0]);
        // Once per lifetime: never sooner than the refresh point (3 s, less a second for a slow
        // send of the earlier request), always before the expiry.
        assert!(
            gap >= time::Duration::seconds(2),
            "token requested at {} again at {}: more than one request per lifetime",
            pair[0]["time"],
            pair[1]["time"]
        );
        assert!(
            gap < time::Duration::seconds(lifetime),
            "token requested at {} was only refreshed at {} (lifetime {lifetime}s)",
            pair[0]["time"],
            pair[1]["time"]
        );
    }
    // Each lifetime served many polls of every mailbox.
    let (second, third) = (tokens[1]["seq"].as_u64().unwrap(), tokens[2]["seq"].as_u64().unwrap());
    let within: Vec<usize> = polls_since(&log, &boxes, second)
        .iter()
        .zip(polls_since(&log, &boxes, third))
        .map(|(after_second, after_third)| after_second - after_third)
        .collect();
    assert!(
        within.iter().all(|p| *p >= 3),
        "too little polling within one lifetime to judge: {within:?}"
    );
    let bad: Vec<&Value> = log
        .iter()
        .filter(|e| is_graph_request(e) && e["token"] != "valid")
        .collect();
    assert!(bad.is_empty(), "Graph requests sent without a valid token: {bad:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_token_endpoint_does_not_stop_polling_while_the_cached_token_is_valid() {
    let env = Env::new().await;
    // Refreshed after 8 s; valid for 8 s more once the refresh fails.
    env.settings(json!({"token_lifetime_secs": 16})).await;
    let a = addr("cached");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "before the outage").await;
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&a), "250ms")))
        .await;
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    env.fault(json!({"path_prefix": format!("/{TENANT}/oauth2"), "status": 503}))
        .await;

    // The daemon tries to refresh half-way through the lifetime and fails…
    let refresh_failed = eventually(LIMIT, || async {
        env.requests()
            .await
            .iter()
            .any(|e| is_token_request(e) && e["status"] == 503)
    })
    .await;
    assert!(refresh_failed, "no refresh attempt seen (or it did not fail)");
    let failed_at = env
        .requests()
        .await
        .iter()
        .find(|e| is_token_request(e) && e["status"] == 503)
        .and_then(|e| e["seq"].as_u64())
        .unwrap();
    // …and keeps polling with the still-valid token.
    env.deliver(&a, "during the outage").await;
    // Once the cached token expires nothing can be delivered (the endpoint still fails), so mail
    // delivered at all was delivered with the cached token.
    let events = env.wait_for_events(2, LIMIT).await;
    assert_eq!(
        events.len(),
        2,
        "mail not delivered while the token endpoint failed: {events:?}"
    );
    let states: Vec<Value> = env.state_events(&a).iter().map(|e| e["state"].clone()).collect();
    assert!(
        states.iter().all(|s| s == "active"),
        "the failing refresh changed the state although the cached token was valid: {states:?}"
    );
    let log = env.requests().await;
    let later: Vec<&Value> = log
        .iter()
        .filter(|e| is_graph_request(e) && e["seq"].as_u64() > Some(failed_at))
        .collect();
    assert!(!later.is_empty(), "no Graph request after the failed refresh");
    assert!(later.iter().all(|e| e["token"] == "valid"), "{later:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_flags_credential_invalid_without_crashing() {
    let env = Env::new().await;
    let boxes = [addr("wrong-a"), addr("wrong-b")];
    env.mailboxes(&boxes).await;
    env.deliver(&boxes[0], "never read").await;
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": "another-secret"}),
    )
    .await;
    let daemon = env.start(&with_api_token(&env.config(&boxes, "250ms"))).await;

    let flagged = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        boxes.iter().all(|m| views[m.as_str()]["state"] == "credential_invalid")
    })
    .await;
    let views = daemon.mailbox_views().await;
    assert!(flagged, "mailboxes not flagged credential_invalid: {views:?}");
    for m in &boxes {
        let view = &views[m.as_str()];
        assert_eq!(view["aadsts"], 7000215, "{view}");
        let reason = view["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "no reason given: {view}");
        assert!(!reason.contains(SECRET), "the reason leaks the secret: {reason}");
    }
    assert_eq!(daemon.get("/livez", None).await.0, 200);
    assert!(env.events().is_empty());
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(
        metric(&metrics, "inboxd_mailboxes", "state=\"credential_invalid\""),
        Some(2.0),
        "{metrics}"
    );
    let (_, body) = daemon.get("/v1/mailboxes", Some(API_TOKEN)).await;
    assert!(!body.contains(SECRET));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_503_storm_on_the_token_endpoint_only_ever_means_backoff() {
    let env = Env::new().await;
    let boxes = [addr("storm-a"), addr("storm-b")];
    env.mailboxes(&boxes).await;
    env.deliver(&boxes[0], "after the storm").await;
    env.fault(json!({"path_prefix": format!("/{TENANT}/oauth2"), "status": 503}))
        .await;
    let daemon = env.start(&with_api_token(&env.config(&boxes, "200ms"))).await;

    // The storm lasts until the daemon was refused several times (its token retries back off
    // from 2 s), with /v1/mailboxes sampled all along.
    let mut seen: HashSet<String> = HashSet::new();
    let refusals = 2;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        for view in daemon.mailbox_views().await.values() {
            seen.insert(view["state"].as_str().unwrap_or_default().to_string());
        }
        let refused = env
            .requests()
            .await
            .iter()
            .filter(|e| is_token_request(e) && e["status"] == 503)
            .count();
        if refused >= refusals {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon asked for a token {refused} times during the storm, expected {refusals}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let allowed: HashSet<String> = ["starting", "backoff"].map(String::from).into();
    assert!(
        seen.is_subset(&allowed),
        "a transient token failure flagged a mailbox: {seen:?}"
    );
    for m in &boxes {
        let events = env.state_events(m);
        assert!(
            events
                .iter()
                .all(|e| allowed.contains(e["state"].as_str().unwrap_or_default())),
            "a transient token failure flagged {m}: {events:#?}"
        );
        assert!(
            events.iter().any(|e| e["state"] == "backoff"),
            "{m} never reported backoff: {events:#?}"
        );
    }

    env.clear_faults().await;
    let recovered = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        boxes.iter().all(|m| views[m.as_str()]["state"] == "active")
    })
    .await;
    assert!(
        recovered,
        "no recovery after the storm: {:?}",
        daemon.mailbox_views().await
    );
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(
        metric(&metrics, "inboxd_mailboxes", "state=\"active\""),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "inboxd_mailboxes", "state=\"backoff\"").is_none_or(|v| v == 0.0),
        "{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graph_401_forces_one_refresh_and_one_retry_not_a_flag() {
    let env = Env::new().await;
    let a = addr("revalidate");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "after a 401").await;
    env.fault_for_mailbox(&a, json!({"status": 401, "times": 1})).await;
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&a), "300ms")))
        .await;
    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "mail lost after a 401 InvalidAuthenticationToken");
    let active = eventually(LIMIT, || async { daemon.state(&a).await == "active" }).await;
    assert!(active, "{:?}", daemon.mailbox_views().await);
    let log = env.requests().await;
    let unauthorized = log.iter().find(|e| e["status"] == 401).expect("the fault fired");
    let tokens: Vec<u64> = log
        .iter()
        .filter(|e| is_token_request(e))
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "expected the start-up token and one forced refresh: {tokens:?}"
    );
    assert!(
        tokens[1] > unauthorized["seq"].as_u64().unwrap(),
        "the second token was not fetched after the 401"
    );
    daemon.stop().await;
}
