//! PATCH and move of messages.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::compose::*;
use crate::support::graph::{
    ALICE, CAROL, SUPPORT, addresses, assert_graph_error, control_folder, gget, gget_h, gpatch, gpost, setup,
};

#[tokio::test]
async fn patch_is_read_and_categories_returns_the_updated_message() {
    let (emu, token) = setup().await;
    let id = emu.deliver(SUPPORT, "Patch me").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let read = gpatch(&emu, &token, &msg(&id), json!({"isRead": true})).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.body["id"], id.as_str());
    assert_eq!(read.body["isRead"], true);
    assert_eq!(read.body["subject"], "Patch me");

    let categories = json!(["Routed", "Blue category"]);
    let tagged = gpatch(&emu, &token, &msg(&id), json!({"categories": categories})).await;
    assert_eq!(tagged.status, StatusCode::OK, "{}", tagged.text);
    assert_eq!(tagged.body["categories"], categories);
    assert_eq!(tagged.body["isRead"], true, "earlier update kept");

    let fetched = gget(&emu, &token, &msg(&id)).await;
    assert_eq!(fetched.body["isRead"], true);
    assert_eq!(fetched.body["categories"], categories);
    let inbox = control_folder(&emu, SUPPORT, "inbox").await;
    assert_eq!(inbox[0]["is_read"], true, "the store changed: {}", inbox[0]);
}

#[tokio::test]
async fn patch_subject_or_body_of_a_received_message_is_400() {
    let (emu, token) = setup().await;
    let id = emu.deliver(SUPPORT, "Fixed subject").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let subject = gpatch(&emu, &token, &msg(&id), json!({"subject": "Rewritten"})).await;
    assert_graph_error(&subject, StatusCode::BAD_REQUEST);
    let body = gpatch(
        &emu,
        &token,
        &msg(&id),
        json!({"body": {"contentType": "text", "content": "Rewritten"}}),
    )
    .await;
    assert_graph_error(&body, StatusCode::BAD_REQUEST);

    let fetched = gget_h(
        &emu,
        &token,
        &msg(&id),
        &[("Prefer", "outlook.body-content-type=\"text\"")],
    )
    .await;
    assert_eq!(fetched.body["subject"], "Fixed subject");
    assert!(!fetched.body["body"]["content"].as_str().unwrap().contains("Rewritten"));
}

#[tokio::test]
async fn patch_body_and_recipients_of_a_draft() {
    let (emu, token) = setup_team().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({
            "subject": "Draft one",
            "body": {"contentType": "text", "content": "first version"},
            "toRecipients": [recipient(ALICE)]
        }),
    )
    .await;
    let id = draft["id"].as_str().unwrap();
    assert_eq!(
        draft["parentFolderId"],
        folder_id(&emu, &token, "drafts").await.as_str(),
        "drafts live in Drafts"
    );

    let patched = gpatch(
        &emu,
        &token,
        &msg(id),
        json!({
            "subject": "Draft one, revised",
            "body": {"contentType": "text", "content": "second version"},
            "toRecipients": [recipient(CAROL)]
        }),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["subject"], "Draft one, revised");
    assert_eq!(addresses(&patched.body["toRecipients"]), vec![CAROL.to_string()]);

    let fetched = gget_h(
        &emu,
        &token,
        &msg(id),
        &[("Prefer", "outlook.body-content-type=\"text\"")],
    )
    .await;
    let content = fetched.body["body"]["content"].as_str().unwrap();
    assert!(
        content.contains("second version") && !content.contains("first version"),
        "{content}"
    );
    assert_eq!(addresses(&fetched.body["toRecipients"]), vec![CAROL.to_string()]);
    assert_eq!(fetched.body["isDraft"], true);
}

#[tokio::test]
async fn move_returns_201_with_the_message_under_a_new_id() {
    let (emu, token) = setup().await;
    let id = emu.deliver(SUPPORT, "Move me").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = folder_id(&emu, &token, "archive").await;

    let moved = gpost(
        &emu,
        &token,
        &format!("{}/move", msg(&id)),
        json!({"destinationId": "archive"}),
    )
    .await;
    assert_eq!(moved.status, StatusCode::CREATED, "{}", moved.text);
    let new_id = moved.body["id"].as_str().unwrap();
    assert_ne!(new_id, id, "move gives a new id");
    assert_eq!(moved.body["subject"], "Move me");
    assert_eq!(moved.body["parentFolderId"], archive.as_str());

    assert_eq!(
        gget(&emu, &token, &msg(new_id)).await.body["parentFolderId"],
        archive.as_str()
    );
    assert_graph_error(&gget(&emu, &token, &msg(&id)).await, StatusCode::NOT_FOUND);
    assert!(with_subject(&control_folder(&emu, SUPPORT, "inbox").await, "Move me").is_empty());
    assert_eq!(
        with_subject(&control_folder(&emu, SUPPORT, "archive").await, "Move me").len(),
        1
    );

    // A folder id works as destination too.
    let inbox = folder_id(&emu, &token, "inbox").await;
    let back = gpost(
        &emu,
        &token,
        &format!("{}/move", msg(new_id)),
        json!({"destinationId": inbox}),
    )
    .await;
    assert_eq!(back.status, StatusCode::CREATED, "{}", back.text);
    assert_eq!(back.body["parentFolderId"], inbox.as_str());
}
