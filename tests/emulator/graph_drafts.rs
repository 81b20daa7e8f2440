//! Draft replies and forwards, then `send`.

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Emu;
use crate::support::compose::*;
use crate::support::graph::{
    ALICE, CAROL, SUPPORT, addresses, control_folder, deliver_with, gpatch, gpost, message_from,
};

#[tokio::test]
async fn create_reply_then_patch_and_send_the_draft() {
    let (emu, token) = setup_team().await;
    let original = deliver_with(&emu, SUPPORT, message_from(ALICE, SUPPORT, "Drafted thread")).await;
    let imid = original["internet_message_id"].as_str().unwrap();
    let id = original["id"].as_str().unwrap();

    let draft = gpost(&emu, &token, &format!("{}/createReply", msg(id)), json!({})).await;
    assert_eq!(draft.status, StatusCode::CREATED, "{}", draft.text);
    assert_eq!(draft.body["isDraft"], true);
    assert!(
        draft.body["subject"].as_str().unwrap().starts_with("RE:"),
        "{}",
        draft.body["subject"]
    );
    assert_eq!(addresses(&draft.body["toRecipients"]), vec![ALICE.to_string()]);
    let draft_id = draft.body["id"].as_str().unwrap().to_string();
    assert!(
        graph_folder_ids(&emu, &token, "drafts").await.contains(&draft_id),
        "the draft is in Drafts"
    );
    assert!(
        control_folder(&emu, ALICE, "inbox").await.is_empty(),
        "nothing sent yet"
    );

    let patched = gpatch(
        &emu,
        &token,
        &msg(&draft_id),
        json!({"body": {"contentType": "text", "content": "Drafted answer"}}),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);

    let sent = send_draft(&emu, &token, &draft_id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert!(sent.text.is_empty());

    assert!(
        !graph_folder_ids(&emu, &token, "drafts").await.contains(&draft_id),
        "the draft left Drafts"
    );
    let sent_items = control_folder(&emu, SUPPORT, "sentitems").await;
    let copy = with_subject(&sent_items, "Drafted thread");
    assert_eq!(copy.len(), 1, "the draft is in Sent Items");
    assert_eq!(copy[0]["is_draft"], false);

    let alice = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0]["in_reply_to"], imid);
    assert!(
        references_end_with(&alice[0]["references"], imid),
        "references: {}",
        alice[0]["references"]
    );
    assert_eq!(alice[0]["conversation_id"], original["conversation_id"]);
    assert!(body_text(&alice[0]).contains("Drafted answer"));
    assert_eq!(alice[0]["is_draft"], false);
}

#[tokio::test]
async fn create_reply_all_and_create_forward_make_drafts() {
    let (emu, token) = setup_team().await;
    let mut original = message_from(ALICE, SUPPORT, "Wide thread");
    original["cc"] = json!([{"name": "Carol", "address": CAROL}]);
    let original = deliver_with(&emu, SUPPORT, original).await;
    let id = original["id"].as_str().unwrap();
    let drafts_folder = folder_id(&emu, &token, "drafts").await;

    let all = gpost(&emu, &token, &format!("{}/createReplyAll", msg(id)), json!({})).await;
    assert_eq!(all.status, StatusCode::CREATED, "{}", all.text);
    assert_eq!(all.body["isDraft"], true);
    assert_eq!(all.body["parentFolderId"], drafts_folder.as_str());
    assert!(all.body["subject"].as_str().unwrap().starts_with("RE:"));
    let mut recipients = addresses(&all.body["toRecipients"]);
    recipients.extend(addresses(&all.body["ccRecipients"]));
    assert!(
        recipients.contains(&ALICE.to_string()) && recipients.contains(&CAROL.to_string()),
        "{recipients:?}"
    );
    assert!(!recipients.contains(&SUPPORT.to_string()));

    let fwd = gpost(&emu, &token, &format!("{}/createForward", msg(id)), json!({})).await;
    assert_eq!(fwd.status, StatusCode::CREATED, "{}", fwd.text);
    assert_eq!(fwd.body["isDraft"], true);
    assert_eq!(fwd.body["parentFolderId"], drafts_folder.as_str());
    assert!(
        fwd.body["subject"].as_str().unwrap().starts_with("FW:"),
        "{}",
        fwd.body["subject"]
    );
    let fwd_id = fwd.body["id"].as_str().unwrap();

    let drafts = graph_folder_ids(&emu, &token, "drafts").await;
    assert!(drafts.contains(&all.body["id"].as_str().unwrap().to_string()) && drafts.contains(&fwd_id.to_string()));

    let patched = gpatch(&emu, &token, &msg(fwd_id), json!({"toRecipients": [recipient(CAROL)]})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let sent = send_draft(&emu, &token, fwd_id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let carol = control_folder(&emu, CAROL, "inbox").await;
    assert_eq!(carol.len(), 1);
    assert!(carol[0]["subject"].as_str().unwrap().starts_with("FW:"));
    assert!(
        control_folder(&emu, ALICE, "inbox").await.is_empty(),
        "the forward went to Carol only"
    );
}

/// POSTs with no Content-Length and no body over a raw connection; returns the status code.
async fn raw_post_without_length(emu: &Emu, token: &str, path: &str) -> u16 {
    let host = emu.url.strip_prefix("http://").expect("plain HTTP emulator");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {answer}"))
}

#[tokio::test]
async fn send_without_content_length_is_411() {
    let (emu, token) = setup_team().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Length check", "body": {"contentType": "text", "content": "x"}, "toRecipients": [recipient(ALICE)]}),
    )
    .await;
    let id = draft["id"].as_str().unwrap();

    let status = raw_post_without_length(&emu, &token, &format!("{}/send", msg(id))).await;
    assert_eq!(status, 411, "send without Content-Length");
    assert!(control_folder(&emu, ALICE, "inbox").await.is_empty(), "nothing sent");
    assert!(
        graph_folder_ids(&emu, &token, "drafts").await.contains(&id.to_string()),
        "the draft stays"
    );

    let sent = send_draft(&emu, &token, id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert_eq!(control_folder(&emu, ALICE, "inbox").await.len(), 1);
}
