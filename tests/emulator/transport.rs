//! Asynchronous mail transport: `send`, `sendMail`, `reply`, `replyAll` and `forward` answer
//! 202 and leave the item in the Outbox; after the transport delay (emulator time) it reaches
//! Sent Items under a new id and its recipients, or, when transport fails, a non-delivery
//! report reaches the sender. Soft and permanent deletes; `createReply` that ignores
//! extended properties.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::compose::send_draft;
use crate::support::graph::{
    ALICE, Resp, SUPPORT, control_folder, deliver_with, enc, gdelete, gget_h, gpatch, gpost, into_resp, message_from,
    setup, user,
};
use crate::support::{Emu, TENANT};

/// The marker property used in these tests.
const MARK: &str = "String {0b6f2a34-97c1-4d1e-a6f8-3c2d1e0f9a87} Name TransportTest";
/// Immutable ids, as a client that follows items across folders asks for them.
const IMMUTABLE: (&str, &str) = ("Prefer", "IdType=\"ImmutableId\"");

/// Support and Alice, an app token, and the given transport delay.
async fn team(delay_ms: u64) -> (Emu, String) {
    let (emu, token) = setup().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.settings(json!({"transport_delay_ms": delay_ms})).await;
    (emu, token)
}

/// Moves the emulator clock forward.
async fn advance(emu: &Emu, secs: f64) {
    let (status, body) = emu.post("/_emulator/clock", json!({"advance_secs": secs})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn post_immutable(emu: &Emu, token: &str, path: &str, body: Value) -> Resp {
    let resp = emu
        .http
        .post(emu.at(path))
        .bearer_auth(token)
        .header(IMMUTABLE.0, IMMUTABLE.1)
        .json(&body)
        .send()
        .await
        .unwrap();
    into_resp(resp).await
}

/// Graph's view of a support folder, immutable ids and the marker expanded.
async fn folder(emu: &Emu, token: &str, name: &str) -> Vec<Value> {
    let path = format!(
        "{}/mailFolders/{name}/messages?$top=100&$expand={}",
        user(SUPPORT),
        enc(&format!("singleValueExtendedProperties($filter=id eq '{MARK}')"))
    );
    let resp = gget_h(emu, token, &path, &[IMMUTABLE]).await;
    assert_eq!(resp.status, StatusCode::OK, "{name}: {}", resp.text);
    resp.body["value"].as_array().cloned().unwrap_or_default()
}

/// A marked draft to Alice; returns its immutable id.
async fn marked_draft(emu: &Emu, token: &str, subject: &str) -> String {
    let resp = post_immutable(
        emu,
        token,
        &format!("{}/messages", user(SUPPORT)),
        json!({
            "subject": subject, "body": {"contentType": "text", "content": "hello"},
            "toRecipients": [{"emailAddress": {"address": ALICE}}],
            "singleValueExtendedProperties": [{"id": MARK, "value": "v1"}],
        }),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    resp.body["id"].as_str().unwrap().to_string()
}

fn marker(m: &Value) -> Option<&str> {
    m["singleValueExtendedProperties"][0]["value"].as_str()
}

#[tokio::test]
async fn a_sent_draft_waits_in_the_outbox_then_reaches_sent_items_under_a_new_id() {
    let (emu, token) = team(15_000).await;
    let draft = marked_draft(&emu, &token, "In transit").await;
    let resp = send_draft(&emu, &token, &draft).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);

    // Accepted, not done: in the Outbox under the same immutable id, nowhere else yet.
    let outbox = folder(&emu, &token, "outbox").await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0]["id"], draft.as_str());
    assert_eq!(marker(&outbox[0]), Some("v1"));
    assert!(folder(&emu, &token, "drafts").await.is_empty());
    assert!(folder(&emu, &token, "sentitems").await.is_empty());
    assert!(control_folder(&emu, ALICE, "inbox").await.is_empty());
    // Sending it again is refused: it is no longer a draft.
    assert_eq!(send_draft(&emu, &token, &draft).await.status, StatusCode::BAD_REQUEST);

    advance(&emu, 14.0).await;
    assert_eq!(
        folder(&emu, &token, "outbox").await.len(),
        1,
        "before the delay is over"
    );
    advance(&emu, 1.5).await;
    let sent = folder(&emu, &token, "sentitems").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_ne!(
        sent[0]["id"],
        draft.as_str(),
        "the Sent Items copy has a new immutable id"
    );
    assert_eq!(marker(&sent[0]), Some("v1"), "the marker travels with the copy");
    assert!(folder(&emu, &token, "outbox").await.is_empty());
    let resp = gget_h(
        &emu,
        &token,
        &format!("{}/messages/{draft}", user(SUPPORT)),
        &[IMMUTABLE],
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::NOT_FOUND,
        "the draft's id is stale: {}",
        resp.text
    );
    let received = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["subject"], "In transit");
}

#[tokio::test]
async fn reply_forward_and_send_mail_go_through_the_outbox() {
    let (emu, token) = team(2_000).await;
    let original = deliver_with(&emu, SUPPORT, message_from(ALICE, SUPPORT, "Question")).await;
    let id = original["immutable_id"]
        .as_str()
        .or(original["id"].as_str())
        .unwrap()
        .to_string();
    let base = user(SUPPORT);
    for (path, body) in [
        (format!("{base}/messages/{id}/reply"), json!({"comment": "r"})),
        (format!("{base}/messages/{id}/replyAll"), json!({"comment": "ra"})),
        (
            format!("{base}/messages/{id}/forward"),
            json!({"comment": "f", "toRecipients": [{"emailAddress": {"address": ALICE}}]}),
        ),
        (
            format!("{base}/sendMail"),
            json!({"message": {"subject": "New", "toRecipients": [{"emailAddress": {"address": ALICE}}]}}),
        ),
    ] {
        let resp = gpost(&emu, &token, &path, body).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{path}: {}", resp.text);
    }
    assert_eq!(control_folder(&emu, SUPPORT, "outbox").await.len(), 4);
    assert!(control_folder(&emu, SUPPORT, "sentitems").await.is_empty());
    assert!(control_folder(&emu, ALICE, "inbox").await.is_empty());
    advance(&emu, 2.5).await;
    assert!(control_folder(&emu, SUPPORT, "outbox").await.is_empty());
    assert_eq!(control_folder(&emu, SUPPORT, "sentitems").await.len(), 4);
    assert_eq!(control_folder(&emu, ALICE, "inbox").await.len(), 4);
}

#[tokio::test]
async fn a_transport_failure_comes_back_as_a_non_delivery_report() {
    let (emu, token) = team(1_000).await;
    let reason = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup";
    emu.settings(json!({"transport_failure": reason})).await;
    let draft = marked_draft(&emu, &token, "Doomed").await;
    assert_eq!(send_draft(&emu, &token, &draft).await.status, StatusCode::ACCEPTED);
    advance(&emu, 1.5).await;

    assert!(
        control_folder(&emu, ALICE, "inbox").await.is_empty(),
        "nobody received it"
    );
    let sent = folder(&emu, &token, "sentitems").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let message_id = sent[0]["internetMessageId"].as_str().unwrap().to_string();
    let conversation = sent[0]["conversationId"].as_str().unwrap().to_string();
    // Found the way a client finds it: by conversation, then by its headers.
    let path = format!(
        "{}/mailFolders/inbox/messages?$filter={}&$select=subject,body,from,internetMessageHeaders",
        user(SUPPORT),
        enc(&format!("conversationId eq '{conversation}'"))
    );
    let resp = gget_h(&emu, &token, &path, &[]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let ndrs = resp.body["value"].as_array().cloned().unwrap_or_default();
    assert_eq!(ndrs.len(), 1, "{ndrs:?}");
    let ndr = &ndrs[0];
    assert_eq!(ndr["subject"], "Undeliverable: Doomed");
    let headers = ndr["internetMessageHeaders"].as_array().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(|h| h["value"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(header("In-Reply-To").as_deref(), Some(message_id.as_str()));
    assert!(header("X-MS-Exchange-Message-Is-Ndr").is_some(), "{headers:?}");
    assert!(ndr["body"]["content"].as_str().unwrap().contains(reason), "{ndr}");

    // Switched off: transport delivers again.
    emu.settings(json!({"transport_failure": null})).await;
    let draft = marked_draft(&emu, &token, "Fine").await;
    assert_eq!(send_draft(&emu, &token, &draft).await.status, StatusCode::ACCEPTED);
    advance(&emu, 1.5).await;
    assert_eq!(control_folder(&emu, ALICE, "inbox").await.len(), 1);
}

#[tokio::test]
async fn delete_moves_to_deleted_items_and_permanent_delete_purges() {
    let (emu, token) = team(0).await;
    let first = marked_draft(&emu, &token, "Soft").await;
    let second = marked_draft(&emu, &token, "Hard").await;
    let resp = gdelete(&emu, &token, &format!("{}/messages/{first}", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    let deleted = folder(&emu, &token, "deleteditems").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(marker(&deleted[0]), Some("v1"), "a deleted draft keeps its marker");
    let resp = post_immutable(
        &emu,
        &token,
        &format!("{}/messages/{second}/permanentDelete", user(SUPPORT)),
        json!({}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    assert!(folder(&emu, &token, "drafts").await.is_empty());
    assert_eq!(folder(&emu, &token, "deleteditems").await.len(), 1, "purged, not moved");
    let resp = gget_h(
        &emu,
        &token,
        &format!("{}/messages/{second}", user(SUPPORT)),
        &[IMMUTABLE],
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

/// `createReply` asking for the marker; returns the draft's immutable id.
async fn create_marked_reply(emu: &Emu, token: &str, original: &str) -> String {
    let resp = post_immutable(
        emu,
        token,
        &format!("{}/messages/{original}/createReply", user(SUPPORT)),
        json!({"message": {"singleValueExtendedProperties": [{"id": MARK, "value": "v1"}]}}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    resp.body["id"].as_str().unwrap().to_string()
}

/// A message with the marker expanded.
async fn with_marker(emu: &Emu, token: &str, id: &str) -> Value {
    let expand = enc(&format!("singleValueExtendedProperties($filter=id eq '{MARK}')"));
    let path = format!("{}/messages/{id}?$expand={expand}", user(SUPPORT));
    let resp = gget_h(emu, token, &path, &[IMMUTABLE]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    resp.body
}

#[tokio::test]
async fn create_reply_can_be_made_to_ignore_extended_properties() {
    let (emu, token) = team(0).await;
    let original = deliver_with(&emu, SUPPORT, message_from(ALICE, SUPPORT, "Mark me")).await;
    let original = original["immutable_id"]
        .as_str()
        .or(original["id"].as_str())
        .unwrap()
        .to_string();
    let honoured = create_marked_reply(&emu, &token, &original).await;
    let got = with_marker(&emu, &token, &honoured).await;
    assert_eq!(marker(&got), Some("v1"), "by default the marker is kept: {got}");

    emu.settings(json!({"create_response_ignores_extended_properties": true}))
        .await;
    let ignored = create_marked_reply(&emu, &token, &original).await;
    let got = with_marker(&emu, &token, &ignored).await;
    assert_eq!(marker(&got), None, "the switch drops the marker: {got}");
    let resp = gpatch(
        &emu,
        &token,
        &format!("{}/messages/{ignored}", user(SUPPORT)),
        json!({"singleValueExtendedProperties": [{"id": MARK, "value": "v1"}]}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(
        marker(&with_marker(&emu, &token, &ignored).await),
        Some("v1"),
        "a PATCH sets it"
    );
}
