//! The store suite: delivered keys: lookups, totals, retention, concurrent writers.

use std::collections::HashSet;
use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{addr, keys, set};
use crate::store::Store;

on_both!(
    mark_delivered_is_idempotent_and_counts_only_new_keys,
    keys_are_matched_exactly,
    delivered_answers_for_thousands_of_keys_at_once,
    prune_drops_old_keys_and_keeps_the_total,
    keys_a_resync_could_reach_outlive_the_retention,
    concurrent_writers_all_succeed,
);

async fn mark_delivered_is_idempotent_and_counts_only_new_keys(store: Arc<dyn Store>) {
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    let now = OffsetDateTime::now_utc();
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    assert_eq!(store.delivered_total(&a).await.unwrap(), 0);
    store.mark_delivered(&a, &v(&["k1", "k2"]), now).await.unwrap();
    assert_eq!(store.delivered_total(&a).await.unwrap(), 2);
    store.mark_delivered(&a, &v(&["k1", "k2"]), now).await.unwrap();
    assert_eq!(
        store.delivered_total(&a).await.unwrap(),
        2,
        "a replay must not count twice"
    );
    store.mark_delivered(&a, &v(&["k2", "k3", "k3"]), now).await.unwrap();
    assert_eq!(
        store.delivered_total(&a).await.unwrap(),
        3,
        "only k3 is new, even if repeated in the slice"
    );
    store.mark_delivered(&a, &[], now).await.unwrap();
    assert_eq!(store.delivered_total(&a).await.unwrap(), 3);

    let asked = v(&["k1", "k2", "k3", "k4"]);
    assert_eq!(store.delivered(&a, &asked).await.unwrap(), set(&["k1", "k2", "k3"]));
    assert!(store.delivered(&a, &[]).await.unwrap().is_empty());

    // Keys belong to their mailbox: the same key elsewhere is new.
    assert!(store.delivered(&b, &asked).await.unwrap().is_empty());
    assert_eq!(store.delivered_total(&b).await.unwrap(), 0);
    store.mark_delivered(&b, &v(&["k1"]), now).await.unwrap();
    assert_eq!(store.delivered_total(&b).await.unwrap(), 1);
    assert_eq!(store.delivered_total(&a).await.unwrap(), 3);
}

async fn keys_are_matched_exactly(store: Arc<dyn Store>) {
    let a = addr("a@contoso.com");
    let odd = vec![
        "AAMk=/+\"quoted\"".to_string(),
        "ünïcode ✉".to_string(),
        "with,comma".to_string(),
    ];
    store.mark_delivered(&a, &odd, OffsetDateTime::now_utc()).await.unwrap();
    let asked = vec![
        odd[0].clone(),
        odd[0].to_lowercase(),
        odd[1].clone(),
        "with".to_string(),
        odd[2].clone(),
    ];
    let found = store.delivered(&a, &asked).await.unwrap();
    assert_eq!(found, odd.iter().cloned().collect::<HashSet<_>>());
}

async fn delivered_answers_for_thousands_of_keys_at_once(store: Arc<dyn Store>) {
    let a = addr("a@contoso.com");
    let now = OffsetDateTime::now_utc();
    // 40,000 keys in one call: more than SQLite's 32,766 bound variables.
    let done = keys("done", 0..40_000);
    store.mark_delivered(&a, &done, now).await.unwrap();
    assert_eq!(store.delivered_total(&a).await.unwrap(), 40_000);

    let mut asked = keys("done", 0..2_500);
    asked.extend(keys("new", 0..2_500));
    let found = store.delivered(&a, &asked).await.unwrap();
    assert_eq!(found.len(), 2_500);
    assert!(found.iter().all(|k| k.starts_with("done-")));
    assert_eq!(found, keys("done", 0..2_500).into_iter().collect::<HashSet<_>>());

    let found = store.delivered(&a, &done).await.unwrap();
    assert_eq!(found.len(), 40_000);
}

async fn prune_drops_old_keys_and_keeps_the_total(store: Arc<dyn Store>) {
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    let old = datetime!(2025-01-01 00:00:00 UTC);
    let cut = datetime!(2025-02-01 00:00:00 UTC);

    // More old keys than one prune batch, so the batching loop must go round.
    store.mark_delivered(&a, &keys("old", 0..12_000), old).await.unwrap();
    store.mark_delivered(&b, &keys("old", 0..10), old).await.unwrap();
    store.mark_delivered(&a, &["at-cut".to_string()], cut).await.unwrap();
    store
        .mark_delivered(&a, &keys("new", 0..5), cut + Duration::days(1))
        .await
        .unwrap();

    assert_eq!(store.prune_delivered(cut, Duration::days(1)).await.unwrap(), 12_010);
    assert_eq!(store.prune_delivered(cut, Duration::days(1)).await.unwrap(), 0);

    assert!(store.delivered(&a, &keys("old", 0..12_000)).await.unwrap().is_empty());
    assert!(store.delivered(&b, &keys("old", 0..10)).await.unwrap().is_empty());
    let mut kept = keys("new", 0..5);
    kept.push("at-cut".to_string());
    assert_eq!(
        store.delivered(&a, &kept).await.unwrap().len(),
        6,
        "keys at or after the cut stay"
    );

    assert_eq!(
        store.delivered_total(&a).await.unwrap(),
        12_006,
        "pruning must not lower the total"
    );
    assert_eq!(store.delivered_total(&b).await.unwrap(), 10);
}

async fn keys_a_resync_could_reach_outlive_the_retention(store: Arc<dyn Store>) {
    let (stalled, busy, fresh) = (
        addr("stalled@contoso.com"),
        addr("busy@contoso.com"),
        addr("all@contoso.com"),
    );
    let cut = datetime!(2025-03-01 00:00:00 UTC);
    // Stalled since mid-January: its resync reaches back to its last checkpoint less a day.
    let stalled_checkpoint = datetime!(2025-01-15 00:00:00 UTC);
    store
        .save_checkpoint(&stalled, "inbox", "link", stalled_checkpoint)
        .await
        .unwrap();
    store
        .mark_delivered(
            &stalled,
            &keys("before-window", 0..3),
            datetime!(2025-01-10 00:00:00 UTC),
        )
        .await
        .unwrap();
    store
        .mark_delivered(&stalled, &keys("in-window", 0..3), datetime!(2025-01-14 12:00:00 UTC))
        .await
        .unwrap();
    // Busy: checkpointed recently, its old keys can go.
    store.save_checkpoint(&busy, "inbox", "link", cut).await.unwrap();
    store
        .mark_delivered(&busy, &keys("old", 0..3), datetime!(2025-01-14 12:00:00 UTC))
        .await
        .unwrap();
    // Started with `start_at = "all"` and never completed a round: a resync reads everything.
    store.begin_delta(&fresh, "inbox", "first", None).await.unwrap();
    store
        .mark_delivered(&fresh, &keys("old", 0..3), datetime!(2025-01-01 00:00:00 UTC))
        .await
        .unwrap();

    assert_eq!(store.prune_delivered(cut, Duration::days(1)).await.unwrap(), 6);

    assert!(
        store
            .delivered(&stalled, &keys("before-window", 0..3))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.delivered(&stalled, &keys("in-window", 0..3)).await.unwrap().len(),
        3
    );
    assert!(store.delivered(&busy, &keys("old", 0..3)).await.unwrap().is_empty());
    assert_eq!(store.delivered(&fresh, &keys("old", 0..3)).await.unwrap().len(), 3);
}

async fn concurrent_writers_all_succeed(store: Arc<dyn Store>) {
    let mailbox = addr("support@contoso.com");
    const TASKS: usize = 8;
    const ROUNDS: usize = 20;
    const BATCH: usize = 5;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (store, mailbox) = (store.clone(), mailbox.clone());
        handles.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let batch = keys(&format!("t{task}-r{round}"), 0..BATCH);
                // Half the tasks also replay the previous batch: overlapping keys count once.
                let mut slice = batch.clone();
                if task % 2 == 0 && round > 0 {
                    slice.extend(keys(&format!("t{task}-r{}", round - 1), 0..BATCH));
                }
                store
                    .mark_delivered(&mailbox, &slice, OffsetDateTime::now_utc())
                    .await?;
                store
                    .save_delta_link(&mailbox, &format!("folder-{task}"), &format!("link-{round}"))
                    .await?;
            }
            Ok::<_, crate::store::StoreError>(())
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(
        store.delivered_total(&mailbox).await.unwrap(),
        (TASKS * ROUNDS * BATCH) as u64
    );
    for task in 0..TASKS {
        let link = store.delta_link(&mailbox, &format!("folder-{task}")).await.unwrap();
        assert_eq!(link, Some(format!("link-{}", ROUNDS - 1)));
    }
}
