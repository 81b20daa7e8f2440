//! The control API's load generator.

use crate::support::control::*;
use crate::support::{CLIENT, Emu, SECRET, TENANT};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn load_generator_fills_mailboxes() {
    let emu = Emu::start().await;
    let addresses = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 3, "messages_per_mailbox": 5, "body_bytes": 1024,
               "attachment_share": 0.4, "attachment_bytes": 2048,
               "address_prefix": "load", "domain": "load.example"}),
    )
    .await;
    assert_eq!(
        addresses.len(),
        3,
        "the answer names the three mailboxes: {addresses:?}"
    );

    for address in &addresses {
        let inbox = folder(&emu, address, "inbox").await;
        assert_eq!(inbox.len(), 5, "{address}: {inbox:#?}");
        for message in &inbox {
            let content = message["body"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("body content: {message}"));
            assert!(
                (900..=4096).contains(&content.len()),
                "about 1 KB body, got {} bytes",
                content.len()
            );
            for attachment in message["attachments"].as_array().into_iter().flatten() {
                assert!(attachment["size"].as_u64().is_some_and(|s| s > 0), "{attachment}");
            }
        }
    }

    // The app exists and reads the generated mail over Graph.
    let token = emu.default_token().await;
    let (status, _, page) = emu
        .graph_get(
            &token,
            &format!("/v1.0/users/{}/mailFolders/inbox/messages", addresses[0]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["value"].as_array().map(Vec::len), Some(5), "{page}");
}

#[tokio::test]
async fn load_generator_attachment_share_extremes() {
    let emu = Emu::start().await;
    let all = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 2, "messages_per_mailbox": 3, "attachment_share": 1.0,
               "address_prefix": "with", "domain": "with.example"}),
    )
    .await;
    let none = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 2, "messages_per_mailbox": 3, "attachment_share": 0.0,
               "address_prefix": "without", "domain": "without.example"}),
    )
    .await;
    assert_eq!((all.len(), none.len()), (2, 2), "{all:?} {none:?}");
    for address in &all {
        for message in folder(&emu, address, "inbox").await {
            let count = message["attachments"].as_array().map_or(0, Vec::len);
            assert!(count >= 1, "share 1.0: every message has an attachment: {message}");
        }
    }
    for address in &none {
        for message in folder(&emu, address, "inbox").await {
            let count = message["attachments"].as_array().map_or(0, Vec::len);
            assert_eq!(count, 0, "share 0.0: no attachments: {message}");
        }
    }
}
