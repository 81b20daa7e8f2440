//! reply, replyAll and forward: saved, delivered and threaded.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::compose::*;
use crate::support::graph::{
    ALICE, CAROL, SUPPORT, addresses, assert_graph_error, control_folder, deliver_with, gpost, message_from,
};

#[tokio::test]
async fn reply_is_saved_and_delivered_with_threading() {
    let (emu, token) = setup_team().await;
    let original = deliver_with(&emu, SUPPORT, message_from(ALICE, SUPPORT, "Question about my order")).await;
    let imid = original["internet_message_id"].as_str().unwrap();
    let id = original["id"].as_str().unwrap();

    let resp = gpost(
        &emu,
        &token,
        &format!("{}/reply", msg(id)),
        json!({"comment": "Here is the answer"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(resp.text.is_empty(), "202 has no body: {}", resp.text);

    let sent = control_folder(&emu, SUPPORT, "sentitems").await;
    let sent = with_subject(&sent, "Question about my order");
    assert_eq!(sent.len(), 1, "one copy in Sent Items");
    assert!(
        sent[0]["subject"].as_str().unwrap().starts_with("RE:"),
        "{}",
        sent[0]["subject"]
    );
    assert_eq!(addresses(&sent[0]["to"]), vec![ALICE.to_string()]);

    let received = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(received.len(), 1, "Alice receives the reply");
    let reply = &received[0];
    assert!(reply["subject"].as_str().unwrap().starts_with("RE:"));
    assert_eq!(reply["in_reply_to"], imid);
    assert!(
        references_end_with(&reply["references"], imid),
        "references: {}",
        reply["references"]
    );
    assert_eq!(reply["conversation_id"], original["conversation_id"]);
    assert!(body_text(reply).contains("Here is the answer"), "{reply}");
    assert_ne!(reply["internet_message_id"], imid, "the reply has its own Message-ID");
}

#[tokio::test]
async fn reply_with_comment_and_message_body_is_400() {
    let (emu, token) = setup_team().await;
    let original = deliver_with(&emu, SUPPORT, message_from(ALICE, SUPPORT, "Both at once")).await;
    let id = original["id"].as_str().unwrap();

    let resp = gpost(
        &emu,
        &token,
        &format!("{}/reply", msg(id)),
        json!({"comment": "comment text", "message": {"body": {"contentType": "text", "content": "body text"}}}),
    )
    .await;
    assert_graph_error(&resp, StatusCode::BAD_REQUEST);
    assert!(
        control_folder(&emu, SUPPORT, "sentitems").await.is_empty(),
        "nothing sent"
    );
    assert!(
        control_folder(&emu, ALICE, "inbox").await.is_empty(),
        "nothing delivered"
    );

    // message.body alone is fine.
    let resp = gpost(
        &emu,
        &token,
        &format!("{}/reply", msg(id)),
        json!({"message": {"body": {"contentType": "text", "content": "body only"}}}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(body_text(&control_folder(&emu, ALICE, "inbox").await[0]).contains("body only"));
}

#[tokio::test]
async fn reply_all_includes_the_cc_and_reply_does_not() {
    let (emu, token) = setup_team().await;
    let mut original = message_from(ALICE, SUPPORT, "Team thread");
    original["cc"] = json!([{"name": "Carol", "address": CAROL}]);
    let original = deliver_with(&emu, SUPPORT, original).await;
    let id = original["id"].as_str().unwrap();

    let resp = gpost(
        &emu,
        &token,
        &format!("{}/reply", msg(id)),
        json!({"comment": "Only to Alice"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(
        control_folder(&emu, CAROL, "inbox").await.is_empty(),
        "reply leaves the cc out"
    );

    let resp = gpost(
        &emu,
        &token,
        &format!("{}/replyAll", msg(id)),
        json!({"comment": "To everyone"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(resp.text.is_empty());

    let carol = control_folder(&emu, CAROL, "inbox").await;
    assert_eq!(carol.len(), 1, "Carol receives the reply-all");
    assert!(carol[0]["subject"].as_str().unwrap().starts_with("RE:"));
    assert!(body_text(&carol[0]).contains("To everyone"));
    assert_eq!(carol[0]["in_reply_to"], original["internet_message_id"]);
    let alice = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(alice.len(), 2, "Alice receives both replies");

    let sent = control_folder(&emu, SUPPORT, "sentitems").await;
    let all = sent
        .iter()
        .find(|m| body_text(m).contains("To everyone"))
        .expect("reply-all in Sent Items");
    let mut recipients = addresses(&all["to"]);
    recipients.extend(addresses(&all["cc"]));
    assert!(
        recipients.contains(&ALICE.to_string()) && recipients.contains(&CAROL.to_string()),
        "{recipients:?}"
    );
    assert!(
        !recipients.contains(&SUPPORT.to_string()),
        "the replying mailbox is not a recipient"
    );
}

#[tokio::test]
async fn forward_goes_to_the_given_recipients() {
    let (emu, token) = setup_team().await;
    let original = deliver_with(
        &emu,
        SUPPORT,
        message_from("customer@example.net", SUPPORT, "Forward me"),
    )
    .await;
    let id = original["id"].as_str().unwrap();

    let resp = gpost(
        &emu,
        &token,
        &format!("{}/forward", msg(id)),
        json!({"comment": "FYI Carol", "toRecipients": [recipient(CAROL)]}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(resp.text.is_empty());

    let carol = control_folder(&emu, CAROL, "inbox").await;
    assert_eq!(carol.len(), 1, "Carol receives the forward");
    assert!(
        carol[0]["subject"].as_str().unwrap().starts_with("FW:"),
        "{}",
        carol[0]["subject"]
    );
    assert!(carol[0]["subject"].as_str().unwrap().contains("Forward me"));
    assert!(body_text(&carol[0]).contains("FYI Carol"));
    assert!(control_folder(&emu, ALICE, "inbox").await.is_empty());
    let sent = control_folder(&emu, SUPPORT, "sentitems").await;
    assert_eq!(
        with_subject(&sent, "Forward me").len(),
        1,
        "the forward is in Sent Items"
    );
}
