//! The fallback app keeps mail flowing while a grant needs consent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delegated::*;
use crate::support::{CLIENT, Env, TENANT, eventually, is_graph_request, log_path};
use crate::support::{addr, last_seq, requests_since};

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
