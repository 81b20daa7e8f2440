//! The store suite: subscriptions.

use std::sync::Arc;

use time::OffsetDateTime;

use super::addr;
use crate::store::{Store, SubscriptionRecord};

on_both!(a_subscription_is_saved_replaced_and_deleted,);

async fn a_subscription_is_saved_replaced_and_deleted(store: Arc<dyn Store>) {
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
