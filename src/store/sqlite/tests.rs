//! The SQLite store against real database files in a temporary directory.

use std::collections::HashSet;
use std::path::Path;

use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::SqliteStore;
use crate::domain::{MailboxAddress, MailboxState};
use crate::store::{DeltaWindow, MailboxStatus, QuarantineEntry, Store, StoreError};

fn addr(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).unwrap()
}

fn url_in(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("data").join("inboxd.db").display())
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn open_creates_the_file_and_its_directory_with_durable_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    assert!(dir.path().join("data").join("inboxd.db").is_file());
    store.ping().await.unwrap();

    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(
        synchronous, 2,
        "synchronous must be FULL so an acknowledged write survives kill -9"
    );
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(busy >= 1_000, "busy_timeout is {busy} ms");
}

#[tokio::test]
async fn open_refuses_an_unusable_path_with_an_error_naming_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = format!("sqlite://{}", blocker.join("inboxd.db").display());
    match SqliteStore::open(&url).await {
        Err(StoreError::Database(message)) => assert!(message.starts_with("open "), "{message}"),
        other => panic!("expected a database error, got {other:?}"),
    }
    assert!(matches!(
        crate::store::open("postgres://localhost/inboxd").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}

#[tokio::test]
async fn in_memory_store_works_for_quick_use() {
    let store = crate::store::open("sqlite::memory:").await.unwrap();
    let mailbox = addr("support@contoso.com");
    store
        .save_delta_link(&mailbox, "inbox", "https://graph/delta?token=1")
        .await
        .unwrap();
    store
        .mark_delivered(&mailbox, &keys("k", 0..3), OffsetDateTime::now_utc())
        .await
        .unwrap();
    // Every call may use another pooled connection: they must all see the same database.
    for _ in 0..5 {
        assert_eq!(
            store.delta_link(&mailbox, "inbox").await.unwrap().as_deref(),
            Some("https://graph/delta?token=1")
        );
        assert_eq!(store.delivered_total(&mailbox).await.unwrap(), 3);
    }
}

#[tokio::test]
async fn delta_links_are_kept_per_mailbox_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));

    assert_eq!(store.delta_link(&a, "inbox").await.unwrap(), None);
    store.save_delta_link(&a, "inbox", "link-a-inbox-1").await.unwrap();
    store.save_delta_link(&a, "archive", "link-a-archive").await.unwrap();
    store.save_delta_link(&b, "inbox", "link-b-inbox").await.unwrap();
    store.save_delta_link(&a, "inbox", "link-a-inbox-2").await.unwrap();

    assert_eq!(
        store.delta_link(&a, "inbox").await.unwrap().as_deref(),
        Some("link-a-inbox-2")
    );
    assert_eq!(
        store.delta_link(&a, "archive").await.unwrap().as_deref(),
        Some("link-a-archive")
    );
    assert_eq!(
        store.delta_link(&b, "inbox").await.unwrap().as_deref(),
        Some("link-b-inbox")
    );

    store.clear_delta_link(&a, "inbox").await.unwrap();
    assert_eq!(store.delta_link(&a, "inbox").await.unwrap(), None);
    assert_eq!(
        store.delta_link(&a, "archive").await.unwrap().as_deref(),
        Some("link-a-archive")
    );
    assert_eq!(
        store.delta_link(&b, "inbox").await.unwrap().as_deref(),
        Some("link-b-inbox")
    );
    // Clearing what is not there is not an error (a second 410 in a row).
    store.clear_delta_link(&a, "inbox").await.unwrap();
}

#[tokio::test]
async fn mark_delivered_is_idempotent_and_counts_only_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
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

#[tokio::test]
async fn keys_are_matched_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
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

#[tokio::test]
async fn delivered_answers_for_thousands_of_keys_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
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

#[tokio::test]
async fn prune_drops_old_keys_and_keeps_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
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

#[tokio::test]
async fn statuses_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    assert!(store.statuses().await.unwrap().is_empty());

    let plus_two = UtcOffset::from_hms(2, 0, 0).unwrap();
    let needs = MailboxStatus {
        state: MailboxState::NeedsReconsent,
        reason: Some("refresh token revoked".to_string()),
        aadsts: Some(50173),
        // Sub-second precision and a non-UTC offset must come back as the same instant.
        since: datetime!(2025-03-04 05:06:07.123456789 UTC).to_offset(plus_two),
        last_success_at: Some(datetime!(2025-03-04 05:00:00.5 UTC)),
    };
    let starting = MailboxStatus {
        state: MailboxState::Starting,
        reason: None,
        aadsts: None,
        since: OffsetDateTime::now_utc(),
        last_success_at: None,
    };
    store.save_status(&b, &needs).await.unwrap();
    store.save_status(&a, &starting).await.unwrap();
    assert_eq!(
        store.statuses().await.unwrap(),
        vec![(a.clone(), starting.clone()), (b.clone(), needs.clone())]
    );

    let active = MailboxStatus {
        state: MailboxState::Active,
        reason: None,
        aadsts: None,
        since: OffsetDateTime::now_utc(),
        last_success_at: Some(OffsetDateTime::now_utc()),
    };
    store.save_status(&b, &active).await.unwrap();
    assert_eq!(store.statuses().await.unwrap(), vec![(a, starting), (b, active)]);

    for state in MailboxState::ALL {
        let c = addr("c@contoso.com");
        let status = MailboxStatus { state, ..needs.clone() };
        store.save_status(&c, &status).await.unwrap();
        let all = store.statuses().await.unwrap();
        assert_eq!(all.iter().find(|(m, _)| *m == c).map(|(_, s)| s), Some(&status));
    }
}

#[tokio::test]
async fn a_corrupt_row_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    sqlx::query("INSERT INTO mailbox_statuses (mailbox, state, since) VALUES ('a@contoso.com', 'sleepy', 'never')")
        .execute(&store.pool)
        .await
        .unwrap();
    match store.statuses().await {
        Err(StoreError::Database(message)) => {
            assert!(message.starts_with("read mailbox statuses: "), "{message}");
            assert!(message.contains("sleepy"), "{message}");
        }
        other => panic!("expected a database error, got {other:?}"),
    }
}

#[tokio::test]
async fn quarantine_is_idempotent_and_listed_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    let entry = |mailbox: &MailboxAddress, id: &str, reason: &str, at| QuarantineEntry {
        id: String::new(),
        mailbox: mailbox.clone(),
        folder: "inbox".to_string(),
        graph_id: id.to_string(),
        reason: reason.to_string(),
        at,
    };
    // 10:00:00 sorts before 10:00:00.5 only if fractional seconds are stored at a fixed width.
    let first = entry(&a, "m1", "malformed body", datetime!(2025-01-01 10:00:00.5 UTC));
    let earlier = entry(&b, "m1", "too large", datetime!(2025-01-01 10:00:00 UTC));
    let latest = entry(&a, "m2", "sink refused: 400", datetime!(2025-01-02 00:00:00 UTC));
    store.quarantine(&first).await.unwrap();
    store.quarantine(&earlier).await.unwrap();
    store.quarantine(&latest).await.unwrap();
    let first_id = store.quarantined(Some(&a)).await.unwrap()[1].id.clone();
    // The same message again (a replay that failed) adds no row: it keeps its id and first
    // time and takes the newest reason.
    store
        .quarantine(&entry(&a, "m1", "other", datetime!(2025-01-03 00:00:00 UTC)))
        .await
        .unwrap();
    let first = QuarantineEntry {
        reason: "other".into(),
        ..first
    };

    assert_eq!(
        without_ids(store.quarantined(None).await.unwrap()),
        vec![latest.clone(), first.clone(), earlier.clone()]
    );
    assert_eq!(store.quarantined(Some(&a)).await.unwrap()[1].id, first_id);
    assert_eq!(
        without_ids(store.quarantined(Some(&a)).await.unwrap()),
        vec![latest, first]
    );
    assert_eq!(without_ids(store.quarantined(Some(&b)).await.unwrap()), vec![earlier]);
    assert!(
        store
            .quarantined(Some(&addr("c@contoso.com")))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Entries with the store-assigned ids blanked, to compare with what was quarantined.
fn without_ids(entries: Vec<QuarantineEntry>) -> Vec<QuarantineEntry> {
    entries
        .into_iter()
        .map(|e| QuarantineEntry { id: String::new(), ..e })
        .collect()
}

#[tokio::test]
async fn a_replay_is_asked_for_one_entry_or_a_whole_mailbox_and_released_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    for (mailbox, id) in [(&a, "m1"), (&a, "m2"), (&b, "m3")] {
        let entry = QuarantineEntry {
            id: String::new(),
            mailbox: mailbox.clone(),
            folder: "inbox".into(),
            graph_id: id.into(),
            reason: "sink rejected the event: 422".into(),
            at: OffsetDateTime::now_utc(),
        };
        store.quarantine(&entry).await.unwrap();
    }
    assert!(store.replays_due(&a).await.unwrap().is_empty(), "nothing asked yet");
    let m1 = store
        .quarantined(Some(&a))
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.graph_id == "m1")
        .unwrap();

    let asked = store.request_replay(&m1.id).await.unwrap().expect("the entry exists");
    assert_eq!(asked.graph_id, "m1");
    assert!(store.request_replay("no-such-id").await.unwrap().is_none());
    let due: Vec<_> = store
        .replays_due(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.graph_id)
        .collect();
    assert_eq!(due, vec!["m1"]);

    assert_eq!(store.request_replays(&a).await.unwrap(), 2);
    assert_eq!(store.replays_due(&a).await.unwrap().len(), 2);
    assert!(
        store.replays_due(&b).await.unwrap().is_empty(),
        "other mailboxes untouched"
    );

    // Delivered: gone. Refused again: stays, with the new reason, no longer due.
    store.release_quarantined(&a, "m1").await.unwrap();
    let again = QuarantineEntry {
        id: String::new(),
        mailbox: a.clone(),
        folder: "inbox".into(),
        graph_id: "m2".into(),
        reason: "sink rejected the event: 400".into(),
        at: OffsetDateTime::now_utc(),
    };
    store.quarantine(&again).await.unwrap();
    assert!(store.replays_due(&a).await.unwrap().is_empty());
    let left = store.quarantined(Some(&a)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reason, "sink rejected the event: 400");
}

/// Writes one of everything, for the restart tests.
async fn write_everything(store: &SqliteStore, mailbox: &MailboxAddress, status: &MailboxStatus, q: &QuarantineEntry) {
    store
        .save_delta_link(mailbox, "inbox", "https://graph/delta?$deltatoken=abc")
        .await
        .unwrap();
    store
        .mark_delivered(mailbox, &keys("k", 0..100), OffsetDateTime::now_utc())
        .await
        .unwrap();
    store.save_status(mailbox, status).await.unwrap();
    store.quarantine(q).await.unwrap();
}

/// Checks what `write_everything` wrote.
async fn check_everything(store: &SqliteStore, mailbox: &MailboxAddress, status: &MailboxStatus, q: &QuarantineEntry) {
    assert_eq!(
        store.delta_link(mailbox, "inbox").await.unwrap().as_deref(),
        Some("https://graph/delta?$deltatoken=abc")
    );
    assert_eq!(store.delivered(mailbox, &keys("k", 0..200)).await.unwrap().len(), 100);
    assert_eq!(store.delivered_total(mailbox).await.unwrap(), 100);
    assert_eq!(store.statuses().await.unwrap(), vec![(mailbox.clone(), status.clone())]);
    assert_eq!(without_ids(store.quarantined(None).await.unwrap()), vec![q.clone()]);
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = url_in(dir.path());
    let mailbox = addr("support@contoso.com");
    let status = MailboxStatus {
        state: MailboxState::Backoff,
        reason: Some("throttled".to_string()),
        aadsts: None,
        since: OffsetDateTime::now_utc(),
        last_success_at: Some(OffsetDateTime::now_utc() - Duration::minutes(1)),
    };
    let q = QuarantineEntry {
        id: String::new(),
        mailbox: mailbox.clone(),
        folder: "inbox".to_string(),
        graph_id: "AAMkAD=".to_string(),
        reason: "malformed".to_string(),
        at: OffsetDateTime::now_utc(),
    };

    // A clean shutdown.
    let store = SqliteStore::open(&url).await.unwrap();
    write_everything(&store, &mailbox, &status, &q).await;
    store.close().await;
    let store = SqliteStore::open(&url).await.unwrap();
    check_everything(&store, &mailbox, &status, &q).await;
    // Reopening an up-to-date database does not re-run migrations or touch the data.
    store
        .mark_delivered(&mailbox, &keys("k", 0..100), OffsetDateTime::now_utc())
        .await
        .unwrap();
    store.close().await;

    // No shutdown at all: the pool is dropped with its WAL still open.
    let dir2 = tempfile::tempdir().unwrap();
    let url2 = url_in(dir2.path());
    let store = SqliteStore::open(&url2).await.unwrap();
    write_everything(&store, &mailbox, &status, &q).await;
    drop(store);
    let store = SqliteStore::open(&url2).await.unwrap();
    check_everything(&store, &mailbox, &status, &q).await;

    // The first file was closed above: its lock is free again.
    let store = SqliteStore::open(&url).await.unwrap();
    check_everything(&store, &mailbox, &status, &q).await;
}

#[tokio::test]
async fn a_second_open_of_one_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let url = url_in(dir.path());
    let first = SqliteStore::open(&url).await.unwrap();
    let lock = dir.path().join("data").join("inboxd.db.lock");
    match SqliteStore::open(&url).await {
        Err(StoreError::Locked(path)) => assert_eq!(path, lock),
        other => panic!("expected the lock to be held, got {other:?}"),
    }
    // A clone shares the lock; dropping it does not release it.
    drop(first.clone());
    assert!(matches!(SqliteStore::open(&url).await, Err(StoreError::Locked(_))));
    first.close().await;
    let second = SqliteStore::open(&url).await.unwrap();
    second.ping().await.unwrap();
    drop(second);
    // Dropping (not closing) releases it too, as a process exit does.
    SqliteStore::open(&url).await.unwrap().ping().await.unwrap();
    // In-memory stores take no lock.
    let _a = SqliteStore::open("sqlite::memory:").await.unwrap();
    let _b = SqliteStore::open("sqlite::memory:").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_from_many_tasks_and_both_pools_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let url = url_in(dir.path());
    // One store per file (its lock), but two handles whose connections (four FULL plus the
    // checkpoint one) race for SQLite's single write lock.
    let store = SqliteStore::open(&url).await.unwrap();
    let stores = [store.clone(), store];
    let mailbox = addr("support@contoso.com");
    const TASKS: usize = 16;
    const ROUNDS: usize = 40;
    const BATCH: usize = 5;

    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = stores[task % 2].clone();
        let mailbox = mailbox.clone();
        handles.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let batch = keys(&format!("t{task}-r{round}"), 0..BATCH);
                // Half the tasks also replay the previous batch: overlapping keys must not count twice.
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
                let status = MailboxStatus {
                    state: MailboxState::Active,
                    reason: None,
                    aadsts: None,
                    since: OffsetDateTime::now_utc(),
                    last_success_at: Some(OffsetDateTime::now_utc()),
                };
                store.save_status(&mailbox, &status).await?;
                store.delivered(&mailbox, &batch).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let expected = (TASKS * ROUNDS * BATCH) as u64;
    assert_eq!(stores[0].delivered_total(&mailbox).await.unwrap(), expected);
    assert_eq!(stores[1].delivered_total(&mailbox).await.unwrap(), expected);
    for task in 0..TASKS {
        let link = stores[0].delta_link(&mailbox, &format!("folder-{task}")).await.unwrap();
        assert_eq!(link, Some(format!("link-{}", ROUNDS - 1)));
    }
}

#[tokio::test]
async fn keys_a_resync_could_reach_outlive_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
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

#[tokio::test]
async fn the_resync_window_starts_at_the_later_of_start_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let mailbox = addr("support@contoso.com");
    let started = datetime!(2025-01-10 00:00:00 UTC);
    assert_eq!(
        store.delta_window(&mailbox, "inbox").await.unwrap(),
        DeltaWindow::default()
    );

    store
        .begin_delta(&mailbox, "inbox", "first", Some(started))
        .await
        .unwrap();
    let window = store.delta_window(&mailbox, "inbox").await.unwrap();
    assert_eq!(
        window.resync_from(Duration::days(1)),
        Some(started),
        "first round: where it started"
    );

    // A checkpoint soon after the start: the margin must not reach before the start.
    store
        .save_checkpoint(&mailbox, "inbox", "delta-1", started + Duration::hours(1))
        .await
        .unwrap();
    // A plain link save (a resync's first link) keeps the window.
    store.save_delta_link(&mailbox, "inbox", "resync").await.unwrap();
    let window = store.delta_window(&mailbox, "inbox").await.unwrap();
    assert_eq!(window.resync_from(Duration::days(1)), Some(started));

    // Weeks later: the checkpoint less the margin.
    let later = started + Duration::days(20);
    store
        .save_checkpoint(&mailbox, "inbox", "delta-2", later)
        .await
        .unwrap();
    let window = store.delta_window(&mailbox, "inbox").await.unwrap();
    assert_eq!(window.resync_from(Duration::days(1)), Some(later - Duration::days(1)));
    assert_eq!(
        store.delta_link(&mailbox, "inbox").await.unwrap().as_deref(),
        Some("delta-2")
    );

    // `start_at = "all"`, nothing completed: everything.
    store.begin_delta(&mailbox, "archive", "first", None).await.unwrap();
    let window = store.delta_window(&mailbox, "archive").await.unwrap();
    assert_eq!(window.resync_from(Duration::days(1)), None);
}

#[tokio::test]
async fn last_progress_is_the_later_of_the_last_success_and_the_oldest_folder_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url_in(dir.path())).await.unwrap();
    let a = addr("a@contoso.com");
    let folders = vec!["inbox".to_string(), "archive".to_string()];
    assert_eq!(store.last_progress(&a, &folders).await.unwrap(), None);

    let set_link_time = |folder: &'static str, at: &'static str| {
        let store = store.clone();
        let a = a.clone();
        async move {
            store.save_delta_link(&a, folder, "link").await.unwrap();
            sqlx::query("UPDATE delta_links SET updated_at = ?1 WHERE mailbox = ?2 AND folder = ?3")
                .bind(at)
                .bind(a.as_str())
                .bind(folder)
                .execute(&store.pool)
                .await
                .unwrap();
        }
    };
    // One folder checkpointed, the other never: no round of the whole mailbox is known.
    set_link_time("inbox", "2025-03-04T06:00:00.000000000Z").await;
    assert_eq!(store.last_progress(&a, &folders).await.unwrap(), None);
    set_link_time("archive", "2025-03-04T05:00:00.000000000Z").await;
    assert_eq!(
        store.last_progress(&a, &folders).await.unwrap(),
        Some(datetime!(2025-03-04 05:00:00 UTC))
    );
    // A stored last success later than the checkpoints wins; an earlier one does not.
    let status = |at| MailboxStatus {
        state: MailboxState::Active,
        reason: None,
        aadsts: None,
        since: at,
        last_success_at: Some(at),
    };
    store
        .save_status(&a, &status(datetime!(2025-03-04 05:30:00 UTC)))
        .await
        .unwrap();
    assert_eq!(
        store.last_progress(&a, &folders).await.unwrap(),
        Some(datetime!(2025-03-04 05:30:00 UTC))
    );
    store
        .save_status(&a, &status(datetime!(2025-03-04 04:00:00 UTC)))
        .await
        .unwrap();
    assert_eq!(
        store.last_progress(&a, &folders).await.unwrap(),
        Some(datetime!(2025-03-04 05:00:00 UTC))
    );
    // Another mailbox's rows do not count.
    assert_eq!(
        store.last_progress(&addr("b@contoso.com"), &folders).await.unwrap(),
        None
    );
}
