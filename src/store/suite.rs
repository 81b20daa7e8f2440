//! One behaviour suite for every store: each check is a function over the trait, run against
//! SQLite (a file in a temporary directory) and PostgreSQL (a schema of its own, created for
//! the test and dropped after it). PostgreSQL must be running: a test that cannot reach it
//! fails, naming the address it tried.

use std::collections::HashSet;
use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::domain::{MailboxAddress, MailboxState};
use crate::store::{
    DeltaWindow, MailboxStatus, OutboundRecord, OutboundStatus, PgStore, QuarantineEntry, SendStep, SqliteStore, Store,
    SubscriptionRecord,
};

pub(crate) mod pg;

pub(crate) fn addr(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).unwrap()
}

pub(crate) fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A SQLite store in a fresh directory (kept as long as the guard lives).
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data").join("inboxd.db").display());
    (Arc::new(SqliteStore::open(&url).await.unwrap()), dir)
}

/// A Postgres store on a schema of its own (dropped with the guard).
async fn postgres() -> (Arc<dyn Store>, pg::Schema) {
    let schema = pg::Schema::create().await;
    let store: PgStore = schema.open().await;
    (Arc::new(store), schema)
}

/// Runs each named check against both stores.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _schema) = super::postgres().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both!(
    delta_links_are_kept_per_mailbox_and_folder,
    mark_delivered_is_idempotent_and_counts_only_new_keys,
    keys_are_matched_exactly,
    delivered_answers_for_thousands_of_keys_at_once,
    prune_drops_old_keys_and_keeps_the_total,
    statuses_round_trip_exactly,
    quarantine_is_idempotent_and_listed_newest_first,
    a_replay_is_asked_for_one_entry_or_a_whole_mailbox_and_released_once_delivered,
    keys_a_resync_could_reach_outlive_the_retention,
    the_resync_window_starts_at_the_later_of_start_and_checkpoint,
    outbox_rows_load_one_at_a_time_and_the_idempotency_key_answers_once,
    a_subscription_is_saved_replaced_and_deleted,
    delegated_tokens_and_consent_states,
    concurrent_writers_all_succeed,
);

/// Entries with the store-assigned ids blanked, to compare with what was quarantined.
pub(crate) fn without_ids(entries: Vec<QuarantineEntry>) -> Vec<QuarantineEntry> {
    entries
        .into_iter()
        .map(|e| QuarantineEntry { id: String::new(), ..e })
        .collect()
}

fn outbound_row(mailbox: &MailboxAddress, key: &str, now: OffsetDateTime) -> OutboundRecord {
    OutboundRecord::queued(
        mailbox,
        key.into(),
        format!("hash-{key}"),
        format!("{{\"kind\":\"reply\",\"payload\":\"{}\"}}", "x".repeat(10_000)),
        "reply",
        now,
    )
}

pub(super) async fn outbox_rows_load_one_at_a_time_and_the_idempotency_key_answers_once(store: Arc<dyn Store>) {
    let (a, b) = (addr("a@x.test"), addr("b@x.test"));
    let now = OffsetDateTime::now_utc();
    let first = store
        .enqueue_outbound(&outbound_row(&a, "k1", now - Duration::seconds(2)))
        .await
        .unwrap();
    // The same key again: the first row answers, nothing new is stored.
    let again = store.enqueue_outbound(&outbound_row(&a, "k1", now)).await.unwrap();
    assert_eq!(again.id, first.id);
    let second = store
        .enqueue_outbound(&outbound_row(&a, "k2", now - Duration::seconds(1)))
        .await
        .unwrap();
    store.enqueue_outbound(&outbound_row(&b, "k3", now)).await.unwrap();
    assert!(first.request.is_empty(), "enqueue answers without echoing the payload");
    let mut due = store.outbound_due_mailboxes(now).await.unwrap();
    due.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(due, vec![a.clone(), b.clone()]);
    assert!(
        store
            .outbound_due_mailboxes(now - Duration::minutes(1))
            .await
            .unwrap()
            .is_empty()
    );

    let mut next = store.next_due_outbound(&a, now).await.unwrap().unwrap();
    assert_eq!(next.id, first.id);
    assert!(next.request.len() > 10_000);
    next.step = SendStep::Accepted;
    next.status = OutboundStatus::Sending;
    next.submitted_at = Some(now);
    next.internet_message_id = Some("<m@x>".into());
    store.update_outbound(&next).await.unwrap();
    let again = store.next_due_outbound(&a, now).await.unwrap().unwrap();
    assert_eq!(again.id, first.id);
    assert!(again.request.is_empty(), "handed to Graph: loaded without its payload");
    assert_eq!(again.internet_message_id.as_deref(), Some("<m@x>"));
    assert_eq!(
        again.submitted_at.map(|t| t.unix_timestamp()),
        Some(now.unix_timestamp())
    );

    let mut done = again;
    done.status = OutboundStatus::Sent;
    done.updated_at = now - Duration::days(8);
    store.update_outbound(&done).await.unwrap();
    let mut recent = store.next_due_outbound(&a, now).await.unwrap().unwrap();
    assert_eq!(recent.id, second.id);
    recent.status = OutboundStatus::Unconfirmed;
    store.update_outbound(&recent).await.unwrap();
    assert_eq!(store.prune_outbound(now - Duration::days(7)).await.unwrap(), 1);
    assert_eq!(store.prune_outbound(now - Duration::days(7)).await.unwrap(), 0);
    let kept = store.outbound_by_key(&a, "k1").await.unwrap().unwrap();
    assert_eq!(
        (kept.id, kept.status, kept.request_hash),
        (first.id.clone(), OutboundStatus::Sent, "hash-k1".into())
    );
    assert_eq!(
        store.outbound(&first.id).await.unwrap().unwrap().status,
        OutboundStatus::Sent
    );
    assert!(store.outbound("no-such-id").await.unwrap().is_none());
    let recent: Vec<String> = store
        .recent_outbound(2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert!(r.request.is_empty(), "listed without payloads");
            r.idempotency_key
        })
        .collect();
    assert_eq!(recent, vec!["k3", "k2"], "newest first");
    assert!(store.next_due_outbound(&a, now).await.unwrap().is_none());
}

pub(super) async fn a_subscription_is_saved_replaced_and_deleted(store: Arc<dyn Store>) {
    let mailbox = addr("a@b.test");
    let at = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let mut record = SubscriptionRecord {
        mailbox: mailbox.clone(),
        folder: "inbox".into(),
        id: "sub-1".into(),
        expires_at: at,
        sealed_client_state: vec![1, 2, 3],
        notification_url: "https://x.test/graph/notifications".into(),
    };
    store.save_subscription(&record).await.unwrap();
    record.id = "sub-2".into();
    store.save_subscription(&record).await.unwrap();
    assert_eq!(store.subscriptions(&mailbox).await.unwrap(), vec![record.clone()]);
    store.delete_subscription(&mailbox, "inbox").await.unwrap();
    assert!(store.subscriptions(&mailbox).await.unwrap().is_empty());
    store.ping().await.unwrap();
}

pub(super) async fn delegated_tokens_and_consent_states(store: Arc<dyn Store>) {
    use crate::store::{ConsentState, DelegatedToken};
    let mailbox = addr("user@contoso.com");
    assert!(store.delegated_token(&mailbox).await.unwrap().is_none());
    let token = DelegatedToken {
        mailbox: mailbox.clone(),
        sealed_token: vec![0, 1, 2, 255],
        scopes: "Mail.Read offline_access".into(),
        last_used_at: datetime!(2025-03-04 05:06:07.5 UTC),
    };
    store.save_granted_token(&token).await.unwrap();
    assert_eq!(store.delegated_token(&mailbox).await.unwrap(), Some(token.clone()));
    let rotated = DelegatedToken {
        sealed_token: vec![9; 40],
        ..token
    };
    store.save_delegated_token(&rotated).await.unwrap();
    assert_eq!(store.delegated_token(&mailbox).await.unwrap(), Some(rotated));

    let later = OffsetDateTime::now_utc() + Duration::minutes(10);
    let state = ConsentState {
        state: "s-1".into(),
        mailbox: mailbox.clone(),
        sealed_verifier: vec![7; 12],
        expires_at: later,
    };
    store.save_consent_state(&state).await.unwrap();
    let taken = store.take_consent_state("s-1").await.unwrap().unwrap();
    assert_eq!((taken.mailbox, taken.sealed_verifier), (mailbox.clone(), vec![7; 12]));
    assert!(
        store.take_consent_state("s-1").await.unwrap().is_none(),
        "a state works once"
    );
    assert!(store.claim_consent_state("s-2", &mailbox, later).await.unwrap());
    assert!(!store.claim_consent_state("s-2", &mailbox, later).await.unwrap());
}

pub(super) async fn concurrent_writers_all_succeed(store: Arc<dyn Store>) {
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

pub(super) async fn delta_links_are_kept_per_mailbox_and_folder(store: Arc<dyn Store>) {
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

pub(super) async fn mark_delivered_is_idempotent_and_counts_only_new_keys(store: Arc<dyn Store>) {
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

pub(super) async fn keys_are_matched_exactly(store: Arc<dyn Store>) {
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

pub(super) async fn delivered_answers_for_thousands_of_keys_at_once(store: Arc<dyn Store>) {
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

pub(super) async fn prune_drops_old_keys_and_keeps_the_total(store: Arc<dyn Store>) {
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

pub(super) async fn statuses_round_trip_exactly(store: Arc<dyn Store>) {
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

pub(super) async fn quarantine_is_idempotent_and_listed_newest_first(store: Arc<dyn Store>) {
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

pub(super) async fn a_replay_is_asked_for_one_entry_or_a_whole_mailbox_and_released_once_delivered(
    store: Arc<dyn Store>,
) {
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
pub(super) async fn keys_a_resync_could_reach_outlive_the_retention(store: Arc<dyn Store>) {
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

pub(super) async fn the_resync_window_starts_at_the_later_of_start_and_checkpoint(store: Arc<dyn Store>) {
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
