//! The store suite: quarantine and replays.

use std::sync::Arc;

use time::OffsetDateTime;
use time::macros::datetime;

use super::{addr, without_ids};
use crate::domain::MailboxAddress;
use crate::store::{QuarantineEntry, Store};

on_both!(
    quarantine_is_idempotent_and_listed_newest_first,
    a_replay_is_asked_for_one_entry_or_a_whole_mailbox_and_released_once_delivered,
);

async fn quarantine_is_idempotent_and_listed_newest_first(store: Arc<dyn Store>) {
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

async fn a_replay_is_asked_for_one_entry_or_a_whole_mailbox_and_released_once_delivered(store: Arc<dyn Store>) {
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
