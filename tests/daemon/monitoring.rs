//! The per-mailbox series the alerts rely on, from the real binary's /metrics: the last-success
//! gauge is seeded at start (from the store, or the start time for a new mailbox), absent for
//! flagged mailboxes, and dropped with its mailbox on reload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support::{Binary, Env, eventually};

/// How long anything the test waits for may take.
const LIMIT: Duration = Duration::from_secs(20);

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The value of the sample whose line starts with `series` (name plus labels), if exported.
async fn sample(daemon: &Binary, series: &str) -> Option<f64> {
    let (_, text) = daemon.get("/metrics").await.ok()?;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn last_success(mailbox: &str) -> String {
    format!("inboxd_last_success_timestamp_seconds{{mailbox=\"{mailbox}\"}}")
}

fn poll_interval(mailbox: &str) -> String {
    format!("inboxd_poll_interval_seconds{{mailbox=\"{mailbox}\"}}")
}

async fn state_count(daemon: &Binary, state: &str) -> f64 {
    sample(daemon, &format!("inboxd_mailboxes{{state=\"{state}\"}}"))
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_success_is_seeded_at_start_hidden_while_flagged_and_dropped_on_removal() {
    let env = Env::new().await;
    let (kept, fresh) = ("kept@monitoring.test".to_string(), "fresh@monitoring.test".to_string());
    // Never created in the emulator: Graph answers 404, the mailbox is flagged not_found.
    let ghost = "ghost@monitoring.test".to_string();
    env.mailboxes(&[kept.clone(), fresh.clone()]).await;

    // Run 1: `kept` polls fine; the flagged `ghost` has no last-success series.
    let path = env.write_config(&env.config(&[kept.clone(), ghost.clone()], "200ms"));
    let mut first = env.spawn_binary(&path, 1).await;
    assert!(
        eventually(LIMIT, || async {
            sample(&first, &last_success(&kept)).await.is_some() && state_count(&first, "not_found").await == 1.0
        })
        .await,
        "kept polled, ghost flagged; log:\n{}",
        first.stderr()
    );
    assert_eq!(sample(&first, &last_success(&ghost)).await, None, "flagged: no series");
    assert_eq!(sample(&first, &poll_interval(&kept)).await, Some(0.2));
    first.sigterm();
    assert!(first.wait_exit(LIMIT).await.is_some_and(|s| s.success()));
    let stopped_at = now_unix();

    // Run 2: Graph fails for both polled mailboxes from the start, so neither succeeds.
    for mailbox in [&kept, &fresh] {
        env.fault(json!({"path_prefix": format!("/v1.0/users/{mailbox}"), "status": 503}))
            .await;
    }
    std::fs::write(&path, env.config(&[kept.clone(), fresh.clone()], "200ms")).unwrap();
    let started_at = now_unix();
    let second = env.spawn_binary(&path, 2).await;
    let failed = "inboxd_graph_requests_total{operation=\"delta\",status=\"503\"}";
    assert!(
        eventually(LIMIT, || async { sample(&second, failed).await.unwrap_or(0.0) >= 2.0 }).await,
        "both were refused; log:\n{}",
        second.stderr()
    );
    // Graph retries within the round, so both are still starting: stuck since this start.
    assert_eq!(state_count(&second, "starting").await, 2.0);
    // `kept` resumes from what the store knows of run 1, not from nothing and not from now.
    let seeded = sample(&second, &last_success(&kept))
        .await
        .expect("seeded from the store");
    assert!(
        seeded <= stopped_at && seeded > stopped_at - LIMIT.as_secs_f64(),
        "seeded {seeded}, run 1 stopped at {stopped_at}"
    );
    // `fresh` never succeeded anywhere: it ages from this start.
    let seeded = sample(&second, &last_success(&fresh)).await.expect("seeded at start");
    assert!(
        seeded >= started_at.floor() && seeded <= now_unix(),
        "seeded {seeded}, run 2 started at {started_at}"
    );

    // Graph recovers; then removing `fresh` by reload drops its series, `kept` keeps its own.
    env.clear_faults().await;
    assert!(
        eventually(LIMIT, || async { state_count(&second, "active").await == 2.0 }).await,
        "both recover; log:\n{}",
        second.stderr()
    );
    std::fs::write(&path, env.config(std::slice::from_ref(&kept), "200ms")).unwrap();
    assert!(
        eventually(LIMIT, || async {
            sample(&second, &last_success(&fresh)).await.is_none()
                && sample(&second, &poll_interval(&fresh)).await.is_none()
        })
        .await,
        "the removed mailbox's series are gone; log:\n{}",
        second.stderr()
    );
    assert!(sample(&second, &last_success(&kept)).await.is_some());
    assert_eq!(state_count(&second, "active").await, 1.0);
}
