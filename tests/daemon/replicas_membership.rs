//! Membership: a mailbox removed from the config is released and claimed by nobody, and a
//! joining replica takes its share a few mailboxes at a time.

use serde_json::Value;
use std::time::Duration;
use time::OffsetDateTime;

use crate::replicas::{LIMIT, REPLICAS, Setup, delta_polls, replica_id, settle, spread};
use crate::support::Binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_removed_from_the_config_is_released_and_claimed_by_nobody() {
    let addresses: Vec<String> = (0..6).map(|n| format!("cfg{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, _) = settle(&replicas[0], &ids, addresses.len()).await;
    assert!(settled, "not spread");

    // The same ConfigMap change reaches every replica: one mailbox less.
    let removed = addresses[0].clone();
    for path in &setup.configs {
        let toml = std::fs::read_to_string(path).unwrap();
        let edited = toml.replace(
            &format!("\n[[mailboxes]]\naddress = \"{removed}\"\napp = \"test\"\n"),
            "\n",
        );
        assert_ne!(toml, edited);
        std::fs::write(path, edited).unwrap();
    }
    let changed_at = OffsetDateTime::now_utc();
    let mut conn = setup.schema.connect().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut released = false;
    while !released && tokio::time::Instant::now() < deadline {
        let owner: Option<Option<String>> = sqlx::query_scalar("SELECT owner FROM mailbox_leases WHERE mailbox = $1")
            .bind(&removed)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        released = matches!(owner, Some(None));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the removed mailbox's lease was not released");
    let (settled, last) = settle(&replicas[1], &ids, addresses.len() - 1).await;
    assert!(settled && !last.contains_key(&removed), "{last:?}");
    // Several heartbeats later nobody has claimed it, and nobody polls it.
    let quiet_from = OffsetDateTime::now_utc();
    let mut beats = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while beats < 3 && tokio::time::Instant::now() < deadline {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas WHERE heartbeat_ms > $1")
            .bind(i64::try_from(quiet_from.unix_timestamp_nanos() / 1_000_000).unwrap() + 1000 * beats)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if n == REPLICAS as i64 {
            beats += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(beats, 3, "the replicas stopped heartbeating");
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM mailbox_leases WHERE mailbox = $1")
        .bind(&removed)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let polled: Vec<_> = delta_polls(&setup.env)
        .await
        .into_iter()
        .filter(|(at, m, _)| *m == removed && *at > quiet_from)
        .collect();
    println!(
        "{removed} removed at {changed_at}: lease released, owner now {owner:?}, {} polls of it since",
        polled.len()
    );
    assert_eq!(owner, None);
    assert!(polled.is_empty(), "{polled:?}");
}

/// The `field` count of each log line of a replica whose message is `message`.
fn logged_counts(binary: &Binary, message: &str, field: &str) -> Vec<u64> {
    binary
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let fields = if v["fields"].is_object() { &v["fields"] } else { &v };
            (fields["message"] == message).then(|| fields[field].as_u64())?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_takes_its_share_a_few_mailboxes_at_a_time() {
    let addresses: Vec<String> = (0..12).map(|n| format!("join{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let (a, b) = tokio::join!(
        setup.env.spawn_binary(&setup.configs[0], 0),
        setup.env.spawn_binary(&setup.configs[1], 1),
    );
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&a, &ids[..2], addresses.len()).await;
    assert!(settled, "two replicas did not split 12 mailboxes: {last:?}");

    // Only what happens from the join on counts (the first two may have rebalanced at start).
    let gave_before: Vec<usize> = [&a, &b]
        .iter()
        .map(|r| logged_counts(r, "Gave up leases towards an even split.", "released").len())
        .collect();
    let joined_at = std::time::Instant::now();
    let c = setup.env.spawn_binary(&setup.configs[2], 2).await;
    let (settled, last) = settle(&a, &ids, addresses.len()).await;
    let took = joined_at.elapsed();
    assert!(settled, "the third replica did not get its share: {last:?}");
    let claims = logged_counts(&c, "Claimed mailbox leases.", "claimed");
    let gave: Vec<Vec<u64>> = [&a, &b]
        .iter()
        .zip(&gave_before)
        .map(|(r, before)| logged_counts(r, "Gave up leases towards an even split.", "released")[*before..].to_vec())
        .collect();
    let text = c.get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    let handovers = crate::support::metric(&text, "inboxd_lease_handovers_total", "");
    println!(
        "r2 joined: spread {:?} after {:.1}s; released per heartbeat by r0 {:?} and r1 {:?}; r2's claims {claims:?}; handovers {handovers:?}",
        spread(&last),
        took.as_secs_f64(),
        gave[0],
        gave[1]
    );
    assert_eq!(claims.iter().sum::<u64>(), 4, "{claims:?}");
    // Each of the two others gives up at most a quarter of its share (one) per heartbeat.
    assert_eq!(gave.iter().flatten().sum::<u64>(), 4, "{gave:?}");
    assert!(
        gave.iter().flatten().all(|n| *n == 1),
        "moved too many at once: {gave:?}"
    );
    assert_eq!(handovers, Some(4.0));
    drop(b);
}
