//! What only the Postgres store does: migrations under a lock, leases and fencing, against the
//! local PostgreSQL (a schema per test). Lease times are passed in, so expiry needs no sleep.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::fence::{Fence, Held};
use super::{PgStore, redacted};
use crate::store::prelude::*;
use crate::store::suite::pg::Schema;
use crate::store::suite::{addr, keys};
use crate::store::{OutboundRecord, StoreError};

const TTL: Duration = Duration::from_secs(10);

fn replica(name: &str) -> (Arc<Fence>, Counter) {
    let refusals = Counter::default();
    (Arc::new(Fence::new(name, refusals.clone())), refusals)
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000 + seconds).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let schema = Schema::create().await;
    let opens = (0..6).map(|_| {
        let options = schema.options();
        let name = schema.name.clone();
        tokio::spawn(async move { PgStore::connect(options, &name).await })
    });
    let stores: Vec<PgStore> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&stores[0].pool)
        .await
        .unwrap();
    println!("6 stores opened at once on an empty schema; migrations recorded: {applied:?}");
    assert_eq!(applied, vec![(1, true), (2, true)]);
    // Every one of them works.
    for (i, store) in stores.iter().enumerate() {
        store
            .mark_delivered(
                &addr("a@x.test"),
                &keys(&format!("s{i}"), 0..2),
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
    }
    assert_eq!(stores[5].delivered_total(&addr("a@x.test")).await.unwrap(), 12);
}

#[tokio::test]
async fn an_unreachable_server_is_named_and_a_password_never_shown() {
    let url = "postgres://inboxd:hunter2-secret@127.0.0.1:9/inboxd";
    match crate::store::open(url).await {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("127.0.0.1:9"), "{message}");
            assert!(!message.contains("hunter2-secret"), "{message}");
        }
        Err(other) => panic!("expected a database error, got {other:?}"),
        Ok(_) => panic!("nothing listens on port 9"),
    }
    assert!(!redacted(url).contains("hunter2-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_lease_fences_the_old_owners_writes() {
    let schema = Schema::create().await;
    let base = schema.open().await;
    let (fa, refusals_a) = replica("a");
    let (fb, refusals_b) = replica("b");
    let (a, b) = (base.fenced(fa.clone()), base.fenced(fb.clone()));
    let (m1, m2) = (addr("m1@x.test"), addr("m2@x.test"));
    let all = vec![m1.clone(), m2.clone()];
    a.ensure_leases(&all).await.unwrap();

    let got = a.claim(&all, at(0), TTL, 10).await.unwrap();
    assert_eq!(got.iter().map(|g| g.epoch).collect::<Vec<_>>(), vec![1, 1]);
    assert!(
        b.claim(&all, at(1), TTL, 10).await.unwrap().is_empty(),
        "held leases are not claimable"
    );
    a.mark_delivered(&m1, &keys("a", 0..3), at(1)).await.unwrap();
    a.save_delta_link(&m1, "inbox", "link-a").await.unwrap();
    // A replica without the lease cannot write for the mailbox at all.
    assert!(matches!(
        b.save_delta_link(&m1, "inbox", "link-b").await,
        Err(StoreError::Fenced { epoch: 0, .. })
    ));
    assert_eq!(refusals_b.get(), 1);

    // a stops renewing (paused, partitioned); at 10s its leases expire and b takes over.
    let taken = b.claim(&all, at(11), TTL, 10).await.unwrap();
    assert_eq!(taken.iter().map(|g| g.epoch).collect::<Vec<_>>(), vec![2, 2]);
    b.save_delta_link(&m1, "inbox", "link-b").await.unwrap();
    // a still believes it holds the lease (its own clock says so): the database says no.
    for result in [
        a.save_delta_link(&m1, "inbox", "stale").await,
        a.mark_delivered(&m1, &keys("stale", 0..3), at(12)).await,
        a.save_checkpoint(&m1, "inbox", "stale", at(12)).await,
    ] {
        match result {
            Err(StoreError::Fenced { mailbox, epoch }) => assert_eq!((mailbox, epoch), (m1.clone(), 1)),
            other => panic!("expected a fencing refusal, got {other:?}"),
        }
    }
    assert_eq!(refusals_a.get(), 3);
    println!("stale writes refused: {}", refusals_a.get());
    assert_eq!(base.delta_link(&m1, "inbox").await.unwrap().as_deref(), Some("link-b"));
    assert!(base.delivered(&m1, &keys("stale", 0..3)).await.unwrap().is_empty());
    assert_eq!(base.delivered_total(&m1).await.unwrap(), 3);
    // Its renewal finds out, and it forgets the leases.
    assert!(a.renew(at(12), TTL).await.unwrap().is_empty());
    assert!(fa.held().is_empty());
    assert_eq!(b.renew(at(12), TTL).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_leases_and_release_hands_them_over_at_once() {
    let schema = Schema::create().await;
    let base = schema.open().await;
    let (fa, _) = replica("a");
    let (fb, _) = replica("b");
    let (a, b) = (base.fenced(fa.clone()), base.fenced(fb));
    let mailboxes: Vec<_> = (0..6).map(|i| addr(&format!("m{i}@x.test"))).collect();
    a.ensure_leases(&mailboxes).await.unwrap();
    assert_eq!(
        a.claim(&mailboxes, at(0), TTL, 4).await.unwrap().len(),
        4,
        "claims stop at the limit"
    );
    // Renewed well before expiry, the leases outlive their first TTL.
    assert_eq!(a.renew(at(6), TTL).await.unwrap().len(), 4);
    assert!(
        b.claim(&mailboxes, at(12), TTL, 10).await.unwrap().len() == 2,
        "only the 2 unclaimed ones"
    );
    let counts = a.lease_counts(&mailboxes, at(12)).await.unwrap();
    assert_eq!((counts.held, counts.other, counts.free), (4, 2, 0));

    let give: Vec<_> = fa.held().into_keys().take(2).collect();
    assert_eq!(a.release(&give).await.unwrap(), 2);
    let got = b.claim(&mailboxes, at(13), TTL, 10).await.unwrap();
    assert_eq!(got.len(), 2, "released leases are claimable before they would expire");
    assert!(got.iter().all(|g| g.epoch == 2));
    let owners = base.owners(at(13)).await.unwrap();
    assert_eq!(owners.values().filter(|o| o.as_deref() == Some("b")).count(), 4);
    assert_eq!(owners.values().filter(|o| o.as_deref() == Some("a")).count(), 2);
    // Expired leases show no owner.
    assert!(base.owners(at(60)).await.unwrap().values().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_heartbeats() {
    let schema = Schema::create().await;
    let base = schema.open().await;
    let (a, b) = (base.fenced(replica("a").0), base.fenced(replica("b").0));
    a.heartbeat(at(0)).await.unwrap();
    b.heartbeat(at(0)).await.unwrap();
    assert_eq!(
        base.fenced(replica("x").0).live_replicas(at(5), TTL).await.unwrap(),
        vec!["a", "b"]
    );
    b.heartbeat(at(8)).await.unwrap();
    assert_eq!(a.live_replicas(at(15), TTL).await.unwrap(), vec!["b"], "a fell silent");
    b.leave().await.unwrap();
    assert!(a.live_replicas(at(15), TTL).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_local_validity_a_replica_neither_polls_nor_sends_nor_writes() {
    let schema = Schema::create().await;
    let base = schema.open().await;
    let (fa, refusals) = replica("a");
    let a = base.fenced(fa.clone());
    let m = addr("m@x.test");
    a.ensure_leases(std::slice::from_ref(&m)).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let grant = a.claim(std::slice::from_ref(&m), now, TTL, 1).await.unwrap();
    a.enqueue_outbound(&OutboundRecord::queued(
        &m,
        "k".into(),
        "h".into(),
        "{}".into(),
        "reply",
        now,
    ))
    .await
    .unwrap();
    assert_eq!(a.outbound_due_mailboxes(now).await.unwrap(), vec![m.clone()]);
    assert!(a.delta_link(&m, "inbox").await.is_ok());
    // The database was not heard from in time: the lease still runs there, but not here.
    fa.hold(
        m.clone(),
        Held {
            epoch: grant[0].epoch,
            valid_until: Instant::now(),
        },
    );
    assert!(matches!(
        a.delta_link(&m, "inbox").await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        a.next_due_outbound(&m, now).await.unwrap(),
        None,
        "nothing to send here"
    );
    assert!(matches!(a.replays_due(&m).await, Err(StoreError::Fenced { .. })));
    assert!(matches!(
        a.save_delta_link(&m, "inbox", "x").await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(
        a.outbound_due_mailboxes(now).await.unwrap().is_empty(),
        "the sender skips it"
    );
    assert_eq!(refusals.get(), 3);
    assert_eq!(fa.expire(Instant::now()), vec![m.clone()]);
    // The unfenced store (the API's reads, other replicas' rows) is unaffected.
    assert_eq!(base.outbound_due_mailboxes(now).await.unwrap(), vec![m]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_or_a_new_grant_on_any_replica_wakes_the_owner() {
    use super::Wake;
    use crate::store::{DelegatedToken, QuarantineEntry};
    let schema = Schema::create().await;
    let store = schema.open().await;
    let mut listener = store.wake_listener().await.unwrap();
    let m = addr("m@x.test");
    store
        .quarantine(&QuarantineEntry {
            id: String::new(),
            mailbox: m.clone(),
            folder: "inbox".into(),
            graph_id: "g1".into(),
            reason: "sink refused: 400".into(),
            at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    assert_eq!(store.request_replays(&m).await.unwrap(), 1);
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Wake::parse(heard.payload()), Some((Wake::Replay, m.clone())));
    // A consent completed on a replica that does not own the mailbox: stored unfenced, and the
    // owner hears of it. A rotation by a non-owner is refused.
    let (fence, _) = replica("elsewhere");
    let other = store.fenced(fence);
    let token = DelegatedToken {
        mailbox: m.clone(),
        sealed_token: vec![1, 2, 3],
        scopes: "Mail.Read".into(),
        last_used_at: OffsetDateTime::now_utc(),
    };
    other.save_granted_token(&token).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Wake::parse(heard.payload()), Some((Wake::Grant, m.clone())));
    assert!(matches!(
        other.save_delegated_token(&token).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.delegated_token(&m).await.unwrap(), Some(token));
    assert_eq!(Wake::parse("nonsense"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_when_asked_and_an_unverifiable_server_is_refused() {
    // Debian's PostgreSQL serves TLS with a self-signed ("snakeoil") certificate.
    let schema = Schema::create().await;
    let url = |mode: &str| {
        format!(
            "{}?sslmode={mode}&options=-c%20search_path%3D{}",
            crate::store::suite::pg::server_url(),
            schema.name
        )
    };
    let store = PgStore::open(&url("require")).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(ssl, "sslmode=require must encrypt");
    store.close().await;
    match PgStore::open(&url("verify-full")).await {
        Err(StoreError::Database(message)) => {
            assert!(message.starts_with("open "), "{message}");
            println!("verify-full against a self-signed server: {message}");
        }
        other => panic!("a certificate no trusted root signed must be refused, got {other:?}"),
    }
}
