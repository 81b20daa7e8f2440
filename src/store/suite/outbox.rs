//! The store suite: the outbox.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use super::addr;
use crate::domain::MailboxAddress;
use crate::store::{OutboundRecord, OutboundStatus, SendStep, Store};

on_both!(outbox_rows_load_one_at_a_time_and_the_idempotency_key_answers_once,);

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

async fn outbox_rows_load_one_at_a_time_and_the_idempotency_key_answers_once(store: Arc<dyn Store>) {
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
