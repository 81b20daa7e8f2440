//! The Graph error envelope, mailbox lookup and access-policy denials.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TENANT;
use crate::support::graph::*;

#[tokio::test]
async fn errors_use_the_envelope_and_echo_client_request_id() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders", user(SUPPORT));

    let sent_id = "3f1c2b7e-client-chosen-id";
    let resp = call(&emu, Method::GET, None, &path, &[("client-request-id", sent_id)], None).await;
    assert_graph_error(&resp, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.header("client-request-id"),
        Some(sent_id),
        "header echoes the client's id"
    );
    assert_eq!(
        resp.body["error"]["innerError"]["client-request-id"], sent_id,
        "envelope echoes the client's id"
    );

    // Without a client id the emulator makes one up; request ids differ per request.
    let first = gget(&emu, &token, &format!("{}/messages/AAMkAGnotAnId=", user(SUPPORT))).await;
    assert_graph_error(&first, StatusCode::NOT_FOUND);
    let second = gget(&emu, &token, &format!("{}/messages/AAMkAGnotAnId=", user(SUPPORT))).await;
    assert_graph_error(&second, StatusCode::NOT_FOUND);
    assert_ne!(
        first.header("request-id"),
        second.header("request-id"),
        "each request gets its own request-id"
    );
}

#[tokio::test]
async fn unknown_mailbox_is_404() {
    let (emu, token) = setup().await;
    let created = emu.mailbox(TENANT, ALICE).await;

    let unknown_guid = uuid::Uuid::new_v4().to_string();
    for who in ["nobody@contoso.example", unknown_guid.as_str()] {
        let resp = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(who))).await;
        let code = assert_graph_error(&resp, StatusCode::NOT_FOUND);
        assert!(
            code == "MailboxNotEnabledForRESTAPI" || code == "ResourceNotFound",
            "unknown mailbox {who}: code {code}"
        );
    }

    // A known mailbox can be named by its id as well as its address.
    let id = created["id"].as_str().expect("mailbox id");
    let by_id = gget(&emu, &token, &format!("{}/mailFolders/inbox", user(id))).await;
    assert_eq!(by_id.status, StatusCode::OK, "mailbox by id: {}", by_id.text);
}

#[tokio::test]
async fn access_policy_denial_is_403_until_lifted() {
    let (emu, token) = setup().await;
    emu.deliver(SUPPORT, "Behind the policy").await;
    let path = format!("{}/mailFolders/inbox/messages", user(SUPPORT));

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{SUPPORT}/access"), json!({"deny": true}))
        .await;
    assert!(status.is_success(), "deny: {status} {body}");
    let denied = gget(&emu, &token, &path).await;
    assert_eq!(assert_graph_error(&denied, StatusCode::FORBIDDEN), "ErrorAccessDenied");
    let message = denied.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Access to OData is disabled"), "message: {message}");
    assert!(!denied.text.contains("Behind the policy"));

    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{SUPPORT}/access"),
            json!({"deny": false}),
        )
        .await;
    assert!(status.is_success(), "lift: {status} {body}");
    let allowed = gget(&emu, &token, &path).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text);
    assert_eq!(allowed.body["value"][0]["subject"], "Behind the policy");
}
