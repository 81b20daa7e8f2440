//! Fencing: a paused replica does not poll the mailboxes it lost, and a message asked of any
//! replica is sent once, even when one replica is killed halfway.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::replicas::{
    LIMIT, REPLICAS, Setup, check_nothing_lost, client_id, delta_polls, owners, replica_id, seeded, settle,
};
use crate::support::{API_TOKEN, Binary, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_does_not_poll_the_mailboxes_it_lost() {
    let addresses: Vec<String> = (0..6).map(|n| format!("p{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    for m in &addresses {
        setup.env.deliver(m, "before the pause").await;
    }
    let replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "not spread: {last:?}");
    assert!(eventually(LIMIT, || async { setup.delivered().len() == addresses.len() }).await);
    let lost: Vec<String> = last
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("r0"))
        .map(|(m, _)| m.clone())
        .collect();

    signal("-STOP", &replicas[0]);
    let paused_at = OffsetDateTime::now_utc();
    let taken = eventually(LIMIT, || async {
        owners(&replicas[1])
            .await
            .is_some_and(|o| lost.iter().all(|m| matches!(o.get(m), Some(Some(r)) if r != "r0")))
    })
    .await;
    assert!(taken, "r0's mailboxes were not taken over while it was paused");
    println!(
        "r0 paused; its {} mailboxes taken over after {:.2}s",
        lost.len(),
        (OffsetDateTime::now_utc() - paused_at).as_seconds_f64()
    );
    for m in &lost {
        setup.env.deliver(m, "during the pause").await;
    }
    let n = addresses.len() + lost.len();
    assert!(eventually(LIMIT, || async { setup.delivered().len() == n }).await);

    let resumed_at = OffsetDateTime::now_utc();
    signal("-CONT", &replicas[0]);
    // Let it wake, find its leases gone, and rejoin: its heartbeat shows again.
    // It wakes, finds each lease gone (renewal refused, or its own deadline passed) and says so.
    let noticed = eventually(LIMIT, || async {
        let log = replicas[0].stderr();
        lost.iter().all(|m| {
            log.lines().any(|l| {
                l.contains(&format!("\"mailbox\":\"{m}\""))
                    && (l.contains("Lost the mailbox's lease") || l.contains("could not be renewed in time"))
            })
        })
    })
    .await;
    assert!(
        noticed,
        "r0 did not notice it lost its leases:\n{}",
        replicas[0].stderr()
    );
    let mut conn = setup.schema.connect().await;
    let claims: HashMap<String, (Option<String>, i64)> =
        sqlx::query_as::<_, (String, Option<String>, i64)>("SELECT mailbox, owner, claimed_ms FROM mailbox_leases")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|(m, o, c)| (m, (o, c)))
            .collect();
    let mut stale = Vec::new();
    let mut reclaimed = 0;
    for (at, mailbox, app) in delta_polls(&setup.env).await {
        if app != client_id(0) || at < resumed_at || !lost.contains(&mailbox) {
            continue;
        }
        // Allowed only under a lease r0 claimed anew after it resumed.
        match claims.get(&mailbox) {
            Some((Some(owner), claimed_ms))
                if owner == "r0" && i128::from(*claimed_ms) * 1_000_000 <= at.unix_timestamp_nanos() =>
            {
                reclaimed += 1
            }
            _ => stale.push((at, mailbox)),
        }
    }
    let metrics = replicas[0].get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    let refusals = crate::support::metric(&metrics, "inboxd_fencing_rejections_total", "");
    println!(
        "after SIGCONT: {} delta polls by r0 for mailboxes it lost, {reclaimed} under a lease claimed anew; fencing refusals on r0: {refusals:?}",
        stale.len()
    );
    assert!(stale.is_empty(), "r0 polled mailboxes it no longer owned: {stale:?}");
    let total = check_nothing_lost(&setup, &seeded(&setup.env, &addresses).await);
    println!("nothing lost; {total} duplicates");
}

/// Sends a signal to a replica.
fn signal(which: &str, binary: &Binary) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .arg(binary.pid().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} failed");
}

/// POSTs a new message through a replica's API; returns the status and the answer.
async fn send_through(binary: &Binary, mailbox: &str, key: &str, subject: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/mailboxes/{mailbox}/send", binary.addr()))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", key)
        .json(&json!({
            "to": [{"name": "Customer", "address": "customer@example.net"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Sent by one replica of three."},
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the replica answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_asked_of_any_replica_are_sent_once_even_when_one_is_killed() {
    let addresses: Vec<String> = (0..6).map(|n| format!("out{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, _) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "mailboxes not spread");

    // Every replica accepts a message for every mailbox; the same key asked of another replica
    // answers with the same id. Halfway, r0 is killed and its share goes to the others.
    let mut asked: HashMap<String, String> = HashMap::new();
    let mut killed = false;
    for (n, mailbox) in addresses.iter().enumerate() {
        if n == addresses.len() / 2 {
            replicas[0].kill_9();
            killed = true;
        }
        for via in 0..REPLICAS {
            let via = if killed && via == 0 { 1 } else { via };
            let key = format!("key-{n}-{via}");
            let subject = format!("Ticket {n}-{via}");
            let (status, answer) = send_through(&replicas[via], mailbox, &key, &subject).await;
            assert_eq!(status, 202, "{answer}");
            let id = answer["id"].as_str().expect("an outbound id").to_string();
            let again = if via == 2 { 1 } else { 2 };
            let (status, repeat) = send_through(&replicas[again], mailbox, &key, &subject).await;
            assert!(status == 200 || status == 202, "{status} {repeat}");
            assert_eq!(
                repeat["id"].as_str(),
                Some(id.as_str()),
                "the key is unique across replicas"
            );
            asked.insert(subject, mailbox.clone());
        }
    }

    // Each message reaches Sent Items exactly once.
    let mut copies: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        copies.clear();
        for mailbox in &addresses {
            for m in setup.env.folder_messages(mailbox, "sentitems").await {
                if let Some(subject) = m["subject"].as_str() {
                    *copies.entry(subject.to_string()).or_insert(0) += 1;
                }
            }
        }
        if asked.keys().all(|s| copies.contains_key(s)) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent: usize = copies.values().sum();
    println!(
        "{} messages asked of three replicas (one killed halfway), {} distinct sent, {sent} copies in Sent Items",
        asked.len(),
        copies.len()
    );
    let missing: Vec<_> = asked.keys().filter(|s| !copies.contains_key(*s)).collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(copies.len(), asked.len());
}
