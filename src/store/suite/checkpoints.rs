//! The store suite: delta links and resync windows.

use std::sync::Arc;

use time::Duration;
use time::macros::datetime;

use super::addr;
use crate::store::{DeltaWindow, Store};

on_both!(
    delta_links_are_kept_per_mailbox_and_folder,
    the_resync_window_starts_at_the_later_of_start_and_checkpoint,
);

async fn delta_links_are_kept_per_mailbox_and_folder(store: Arc<dyn Store>) {
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
}

async fn the_resync_window_starts_at_the_later_of_start_and_checkpoint(store: Arc<dyn Store>) {
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
