//! `sendMail`: saving to Sent Items and custom headers.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::compose::*;
use crate::support::graph::{ALICE, SUPPORT, addresses, control_folder, gget, gpost, user};

#[tokio::test]
async fn send_mail_honours_save_to_sent_items() {
    let (emu, token) = setup_team().await;
    let path = format!("{}/sendMail", user(SUPPORT));
    let message = |subject: &str| json!({"subject": subject, "body": {"contentType": "text", "content": format!("Text of {subject}")}, "toRecipients": [recipient(ALICE)]});

    let resp = gpost(
        &emu,
        &token,
        &path,
        json!({"message": message("Unsaved"), "saveToSentItems": false}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert!(resp.text.is_empty(), "202 has no body");
    let resp = gpost(&emu, &token, &path, json!({"message": message("Saved by default")})).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);

    let sent = control_folder(&emu, SUPPORT, "sentitems").await;
    assert!(
        with_subject(&sent, "Unsaved").is_empty(),
        "saveToSentItems false keeps no copy"
    );
    assert_eq!(
        with_subject(&sent, "Saved by default").len(),
        1,
        "saveToSentItems defaults to true"
    );
    assert!(
        control_folder(&emu, SUPPORT, "drafts").await.is_empty(),
        "no draft left behind"
    );

    let alice = control_folder(&emu, ALICE, "inbox").await;
    for subject in ["Unsaved", "Saved by default"] {
        let got = with_subject(&alice, subject);
        assert_eq!(got.len(), 1, "Alice receives {subject}");
        assert!(body_text(got[0]).contains(&format!("Text of {subject}")));
        assert_eq!(
            addresses(&json!([got[0]["from"]])),
            vec![SUPPORT.to_string()],
            "from the sending mailbox"
        );
    }
}

#[tokio::test]
async fn send_mail_custom_headers_reach_the_recipient() {
    let (emu, token) = setup_team().await;
    let resp = gpost(
        &emu,
        &token,
        &format!("{}/sendMail", user(SUPPORT)),
        json!({"message": {
            "subject": "Tagged",
            "body": {"contentType": "text", "content": "tagged body"},
            "toRecipients": [recipient(ALICE)],
            "internetMessageHeaders": [{"name": "x-inboxd-ref", "value": "ref-123"}]
        }}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);

    let alice = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(alice.len(), 1);
    let header = alice[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| {
            h["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("x-inboxd-ref"))
        })
        .cloned();
    assert_eq!(
        header.map(|h| h["value"].clone()),
        Some(json!("ref-123")),
        "control API headers: {}",
        alice[0]["headers"]
    );

    // And through Graph, as the recipient's own reader would see it.
    let list = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(ALICE))).await;
    let id = list.body["value"][0]["id"].as_str().unwrap();
    let read = gget(
        &emu,
        &token,
        &format!("{}/messages/{id}?$select=internetMessageHeaders", user(ALICE)),
    )
    .await;
    let headers = read.body["internetMessageHeaders"]
        .as_array()
        .expect("headers selected");
    assert!(
        headers.iter().any(|h| h["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case("x-inboxd-ref"))
            && h["value"] == "ref-123"),
        "{headers:?}"
    );
}
