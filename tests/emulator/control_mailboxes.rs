//! The control API for mailboxes: well-known folders, delivery and listing.

use crate::support::control::*;
use crate::support::{Emu, TENANT};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn mailboxes_have_the_well_known_folders() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, body) = emu
        .post(
            "/_emulator/mailboxes",
            json!({"tenant_id": TENANT, "address": ALICE, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert_eq!(body["address"], ALICE, "{body}");
    let user_id = body["id"].as_str().unwrap().to_string();

    let token = emu.default_token().await;
    let (status, _, folders) = emu.graph_get(&token, &format!("/v1.0/users/{ALICE}/mailFolders")).await;
    assert_eq!(status, StatusCode::OK, "{folders}");
    let names: Vec<&str> = folders["value"]
        .as_array()
        .unwrap_or_else(|| panic!("value array: {folders}"))
        .iter()
        .filter_map(|f| f["displayName"].as_str())
        .collect();
    for expected in ["Inbox", "Drafts", "Sent Items", "Deleted Items"] {
        assert!(names.contains(&expected), "{expected} among {names:?}");
    }

    // The mailbox answers by its id too.
    let (status, _, inbox) = emu
        .graph_get(&token, &format!("/v1.0/users/{user_id}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["displayName"], "Inbox");
    for well_known in ["sentitems", "drafts", "deleteditems", "junkemail", "archive"] {
        assert!(
            folder(&emu, ALICE, well_known).await.is_empty(),
            "{well_known} starts empty"
        );
    }
}

#[tokio::test]
async fn deliver_and_list_messages() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;

    let simple = emu.deliver(ALICE, "Order 1234").await;
    for field in ["id", "immutable_id", "internet_message_id", "conversation_id"] {
        assert!(
            simple[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {simple}"
        );
    }
    let inbox = folder(&emu, ALICE, "inbox").await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    let listed = &inbox[0];
    assert_eq!(listed["id"], simple["id"]);
    assert_eq!(listed["internet_message_id"], simple["internet_message_id"]);
    assert_eq!(listed["subject"], "Order 1234");
    assert_eq!(listed["from"]["address"], "customer@example.net", "{listed}");
    assert_eq!(listed["is_read"], false, "{listed}");
    assert_eq!(listed["is_draft"], false, "{listed}");

    // Explicit folder, headers, attachment, read flag.
    let (status, rich) = emu
        .post(
            &format!("/_emulator/mailboxes/{ALICE}/messages"),
            json!({
                "folder": "junkemail",
                "from": {"name": "Spammer", "address": "spam@example.net"},
                "to": [{"name": "Alice", "address": ALICE}],
                "subject": "Cheap stuff",
                "body": {"content_type": "html", "content": "<p>buy</p>"},
                "internet_message_headers": [{"name": "X-Ticket", "value": "T-42"}],
                "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}],
                "is_read": true
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rich}");
    assert_eq!(
        folder(&emu, ALICE, "inbox").await.len(),
        1,
        "the junk message is not in the inbox"
    );
    let junk = folder(&emu, ALICE, "junkemail").await;
    assert_eq!(junk.len(), 1, "{junk:?}");
    let listed = &junk[0];
    assert_eq!(listed["id"], rich["id"]);
    assert_eq!(listed["is_read"], true, "{listed}");
    let attachments = listed["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("attachments: {listed}"));
    assert_eq!(attachments.len(), 1, "{listed}");
    assert_eq!(attachments[0]["name"], "a.txt");
    assert!(attachments[0]["size"].as_u64().is_some_and(|s| s >= 5), "{listed}");
    let headers = listed["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("headers: {listed}"));
    assert!(
        headers.iter().any(|h| h["name"] == "X-Ticket" && h["value"] == "T-42"),
        "custom header kept: {listed}"
    );

    // Graph sees the same message; the folder listing also accepts the folder id.
    let token = emu.default_token().await;
    let id = rich["id"].as_str().unwrap();
    let (status, _, message) = emu
        .graph_get(&token, &format!("/v1.0/users/{ALICE}/messages/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["subject"], "Cheap stuff");
    assert_eq!(message["internetMessageId"], rich["internet_message_id"]);
    let (status, _, junk_folder) = emu
        .graph_get(&token, &format!("/v1.0/users/{ALICE}/mailFolders/junkemail"))
        .await;
    assert_eq!(status, StatusCode::OK, "{junk_folder}");
    let folder_id = junk_folder["id"].as_str().unwrap();
    let by_id = folder(&emu, ALICE, folder_id).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["id"], rich["id"]);
}
