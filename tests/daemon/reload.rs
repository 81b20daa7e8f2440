//! Hot reload: the daemon in-process, its config file rewritten under it.

use std::time::Duration;

use serde_json::json;

use crate::support::{CLIENT, Env, SECRET, eventually, poll_until};

/// A config file whose secret is inline (`dev:`), so the process environment is not needed.
fn config(env: &Env, mailboxes: &[String], secret: &str) -> String {
    env.config(mailboxes, "200ms")
        .replace(
            &format!("client_secret = \"env:{}\"", crate::support::SECRET_ENV),
            &format!("client_secret = \"dev:{secret}\""),
        )
        .replace("[server]\n", "[server]\napi_tokens = [\"dev:reload-token\"]\n")
}

async fn state_of(daemon: &crate::support::Daemon, mailbox: &str) -> String {
    let (_, body) = daemon
        .get(&format!("/v1/mailboxes/{mailbox}"), Some("reload-token"))
        .await;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn wait_state(daemon: &crate::support::Daemon, mailbox: &str, want: &str) -> String {
    eventually(Duration::from_secs(15), || async {
        state_of(daemon, mailbox).await == want
    })
    .await;
    state_of(daemon, mailbox).await
}

async fn metric(daemon: &crate::support::Daemon, line_start: &str) -> Option<f64> {
    let (_, text) = daemon.get("/metrics", None).await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_rotates_and_refuses_bad_files() {
    let env = Env::new().await;
    let (a, b) = ("first@reload.test".to_string(), "second@reload.test".to_string());
    env.mailboxes(&[a.clone(), b.clone()]).await;
    env.deliver(&a, "before reload").await;
    let path = env.write_config(&config(&env, std::slice::from_ref(&a), SECRET));
    let daemon = env.start_with_reload(&path).await;
    assert_eq!(wait_state(&daemon, &a, "active").await, "active");
    assert_eq!(state_of(&daemon, &b).await, "", "second mailbox not configured yet");

    // Add a mailbox: it starts and delivers, the first keeps running.
    env.deliver(&b, "for the new mailbox").await;
    std::fs::write(&path, config(&env, &[a.clone(), b.clone()], SECRET)).unwrap();
    assert_eq!(wait_state(&daemon, &b, "active").await, "active");
    let events = env.wait_for_events(2, Duration::from_secs(15)).await;
    assert!(events.iter().any(|e| e.mailbox == b), "the added mailbox delivered");

    // A bad file changes nothing and is counted.
    std::fs::write(&path, "[server]\npol_interval = 3\n").unwrap();
    poll_until(Duration::from_secs(15), "invalid reload counted", || async {
        match metric(&daemon, "inboxd_config_reloads_total{outcome=\"invalid\"}").await {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!(
                "inboxd_config_reloads_total{{outcome=\"invalid\"}} = {other:?}"
            )),
        }
    })
    .await;
    env.deliver(&a, "after a bad reload").await;
    let events = env.wait_for_events(3, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 3, "the running configuration kept working");

    // The secret is rotated in Entra: the app's mailboxes are flagged ...
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": "rotated-secret"}),
    )
    .await;
    std::fs::write(&path, config(&env, &[a.clone(), b.clone()], "wrong-old-secret")).unwrap();
    assert_eq!(
        wait_state(&daemon, &a, "credential_invalid").await,
        "credential_invalid"
    );
    // ... and the new secret in the file brings them back without a restart.
    std::fs::write(&path, config(&env, &[a.clone(), b.clone()], "rotated-secret")).unwrap();
    assert_eq!(wait_state(&daemon, &a, "active").await, "active");
    assert_eq!(wait_state(&daemon, &b, "active").await, "active");

    // Removing a mailbox stops it; the other goes on.
    std::fs::write(&path, config(&env, std::slice::from_ref(&a), "rotated-secret")).unwrap();
    poll_until(Duration::from_secs(15), "removed mailbox no longer listed", || async {
        match state_of(&daemon, &b).await {
            state if state.is_empty() => Ok(()),
            state => Err(format!("{b} listed as {state}")),
        }
    })
    .await;
    env.deliver(&b, "nobody polls this").await;
    env.deliver(&a, "still polled").await;
    let events = env.wait_for_events(4, Duration::from_secs(15)).await;
    assert!(events.iter().any(|e| e.subject == "still polled"));
    assert!(!events.iter().any(|e| e.subject == "nobody polls this"));
    assert!(
        metric(&daemon, "inboxd_config_reloads_total{outcome=\"applied\"}")
            .await
            .unwrap_or(0.0)
            >= 4.0
    );
    daemon.stop().await;
}

/// A reload that changes `store.encryption_key` cannot re-seal stored tokens under the running
/// daemon: it keeps the running key and says so, naming the setting (never the keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_store_key_is_refused_loudly() {
    const OLD: &str = "reload-store-key-one";
    const NEW: &str = "reload-store-key-two";
    let env = Env::new().await;
    let a = "keyed@reload.test".to_string();
    env.mailboxes(std::slice::from_ref(&a)).await;
    let keyed = |key: &str| {
        env.config(std::slice::from_ref(&a), "200ms").replacen(
            "[store]\n",
            &format!("[store]\nencryption_key = \"dev:{key}\"\n"),
            1,
        )
    };
    let path = env.write_config(&keyed(OLD));
    let binary = env.spawn_binary(&path, 0).await;
    env.deliver(&a, "before the key change").await;
    env.wait_for_events(1, Duration::from_secs(15)).await;

    std::fs::write(&path, keyed(NEW)).unwrap();
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("store.encryption_key") && l.contains("changes only with a restart"))
    };
    let said = crate::support::eventually(Duration::from_secs(15), || async { warned(&binary.stderr()) }).await;
    let log = binary.stderr();
    assert!(said, "the key change was ignored silently; log:\n{log}");
    assert!(!log.contains(OLD) && !log.contains(NEW), "a store key reached the log");
    // The running key stays in use: the mailbox keeps delivering.
    env.deliver(&a, "after the key change").await;
    let events = env.wait_for_events(2, Duration::from_secs(15)).await;
    assert!(events.iter().any(|e| e.subject == "after the key change"), "{log}");
}
