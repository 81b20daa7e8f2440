//! What only the SQLite store does (its file, pragmas, lock, restarts), against real database
//! files in a temporary directory; the behaviour both stores share is in `store/suite.rs`.

use std::path::Path;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::SqliteStore;
use crate::domain::{MailboxAddress, MailboxState};
use crate::store::prelude::*;
use crate::store::suite::{addr, keys, without_ids};
use crate::store::{MailboxStatus, QuarantineEntry, StoreError};

fn url_in(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("data").join("inboxd.db").display())
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
        crate::store::open("mysql://localhost/inboxd").await,
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
