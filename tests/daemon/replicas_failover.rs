//! Replicas losing one of their number or their connections: a killed replica's mailboxes
//! move to the others within the lease TTL plus a poll interval with nothing lost, one stopped
//! with SIGTERM hands its mailboxes over before they expire, and terminated connections heal
//! by themselves.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::replicas::{
    LIMIT, POLL, REPLICAS, Setup, TTL, admin, check_nothing_lost, client_id, delta_polls, even, feed, owners,
    replica_id, seeded, settle, spread,
};
use crate::support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_mailboxes_and_take_over_a_killed_one() {
    let env_mailboxes = 9;
    let per_mailbox = 40;
    let addresses: Vec<String> = (0..env_mailboxes).map(|n| format!("k{n}@load.example.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.load("k", env_mailboxes, per_mailbox).await;
    setup
        .env
        .control("/_emulator/settings", json!({"latency_ms": 50}))
        .await;
    // Mail keeps arriving in every mailbox until after the takeover: the kill lands mid-ingest.
    let (stop_feeding, feeding) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(feed(setup.env.url.clone(), addresses.clone(), feeding));

    // Three replicas at once against an empty schema.
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, env_mailboxes).await;
    println!("spread at start: {:?}", spread(&last));
    assert!(settled, "mailboxes not spread within one of even: {last:?}");
    let migrations: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut setup.schema.connect().await)
        .await
        .unwrap();
    println!("migrations recorded once each: {migrations:?}");
    assert_eq!(migrations, vec![(1, true), (2, true)]);

    // Mid-ingest: the backlog delivered and new mail flowing.
    let backlog = env_mailboxes * per_mailbox;
    let started = eventually(LIMIT, || async { setup.delivered().len() >= backlog }).await;
    assert!(started, "the backlog was not delivered");
    let victims: Vec<String> = last
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("r0"))
        .map(|(m, _)| m.clone())
        .collect();
    replicas[0].kill_9();
    let killed_at = OffsetDateTime::now_utc();
    let at_kill = setup.delivered().len();
    println!(
        "SIGKILL r0 (owner of {} mailboxes) with {at_kill} messages delivered, mail still arriving",
        victims.len(),
    );

    // Each of its mailboxes is polled again by a survivor.
    let mut resumed: HashMap<String, OffsetDateTime> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while resumed.len() < victims.len() && tokio::time::Instant::now() < deadline {
        for (at, mailbox, app) in delta_polls(&setup.env).await {
            if at > killed_at && app != client_id(0) && victims.contains(&mailbox) {
                let first = resumed.entry(mailbox).or_insert(at);
                *first = (*first).min(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = resumed.len() == victims.len();
    assert!(
        moved,
        "not every mailbox of the killed replica was polled again: {resumed:?}"
    );
    let handover = resumed.values().map(|at| *at - killed_at).max().unwrap();
    println!(
        "last of r0's mailboxes polled again {:.2}s after SIGKILL (lease TTL {}s + poll interval {}s)",
        handover.as_seconds_f64(),
        TTL.as_secs(),
        POLL.as_secs()
    );
    assert!(
        handover <= time::Duration::try_from(TTL + POLL).unwrap(),
        "handover took {handover}"
    );

    let _ = stop_feeding.send(true);
    let fed = feeder.await.unwrap();
    let expected = seeded(&setup.env, &addresses).await;
    assert_eq!(expected.len(), backlog + fed);
    let all = eventually(LIMIT, || async { setup.delivered().len() == expected.len() }).await;
    assert!(all, "only {} of {} delivered", setup.delivered().len(), expected.len());
    let duplicates = check_nothing_lost(&setup, &expected);
    let survivors = owners(&replicas[1]).await.unwrap_or_default();
    println!(
        "delivered {} messages, {duplicates} duplicates (same dedup_key); spread after: {:?}",
        expected.len(),
        spread(&survivors)
    );
    assert!(even(&survivors, &ids[1..], env_mailboxes), "{survivors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_recover_by_themselves_when_their_connections_are_terminated() {
    let addresses: Vec<String> = (0..6).map(|n| format!("t{n}@load.example.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.load("t", addresses.len(), 30).await;
    setup
        .env
        .control("/_emulator/settings", json!({"latency_ms": 50}))
        .await;
    let expected = seeded(&setup.env, &addresses).await;
    let mut replicas = setup.start_all().await;
    let mut admin = admin().await;
    let mut terminated = 0;
    for round in 1..=3 {
        let reached = eventually(LIMIT, || async {
            setup.delivered().len() >= expected.len() * round / 5
        })
        .await;
        assert!(reached, "ingest stalled before termination {round}");
        let n: Vec<bool> =
            sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&setup.schema.0)
                .fetch_all(&mut admin)
                .await
                .unwrap();
        terminated += n.len();
    }
    println!(
        "terminated {terminated} connections of the replicas in 3 rounds, at {} of {} delivered",
        setup.delivered().len(),
        expected.len()
    );
    let all = eventually(LIMIT, || async { setup.delivered().len() == expected.len() }).await;
    assert!(all, "only {} of {} delivered", setup.delivered().len(), expected.len());
    let duplicates = check_nothing_lost(&setup, &expected);
    for (i, r) in replicas.iter_mut().enumerate() {
        assert!(r.wait_exit(Duration::ZERO).await.is_none(), "replica {i} exited");
        let ready = r.get("/readyz").await.map(|(s, _)| s).unwrap_or(0);
        assert_eq!(ready, 200, "replica {i} not ready");
    }
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[0], &ids, addresses.len()).await;
    println!(
        "all {} delivered, {duplicates} duplicates; spread: {:?}",
        expected.len(),
        spread(&last)
    );
    assert!(settled, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_hands_its_mailboxes_over_before_they_expire() {
    let addresses: Vec<String> = (0..6).map(|n| format!("term{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "not spread: {last:?}");
    for (i, r) in replicas.iter().enumerate() {
        let text = r.get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
        let held = crate::support::metric(&text, "inboxd_leases", "state=\"held\"");
        assert_eq!(held, Some(2.0), "replica {i}: {held:?}");
    }

    let stopped_at = std::time::Instant::now();
    replicas[0].sigterm();
    assert!(
        replicas[0].wait_exit(LIMIT).await.is_some_and(|s| s.success()),
        "r0 did not exit cleanly"
    );
    let (moved, last) = settle(&replicas[1], &ids[1..], addresses.len()).await;
    let handover = stopped_at.elapsed();
    println!(
        "SIGTERM r0: its mailboxes owned by the others {:.2}s later (lease TTL {}s); spread {:?}",
        handover.as_secs_f64(),
        TTL.as_secs(),
        spread(&last)
    );
    assert!(moved, "{last:?}");
    assert!(
        handover < TTL,
        "took {handover:?}: released leases are taken at the next heartbeat, not at expiry"
    );
    let log = replicas[0].stderr();
    assert!(log.contains("Released this replica's mailbox leases"), "{log}");
}
