//! Graph v1.0 mail, writing side: PATCH, move, reply/replyAll/forward, draft replies and
//! `send`, extended-property lookups, `sendMail`, draft attachments and upload sessions.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::graph_read::{
    ALICE, CAROL, Resp, SUPPORT, addresses, assert_graph_error, control_folder, deliver_with, enc, gget, gget_h,
    gpatch, gpost, into_resp, message_from, setup, user,
};
use crate::support::{Emu, TENANT};

/// The idempotency marker property inboxd puts on outbound drafts.
const OUTBOUND_PROP: &str = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name OutboundId";

/// Support, Alice and Carol mailboxes in one tenant, and an app token; transport without
/// delay, so what was sent is in Sent Items on the next look (`transport.rs` covers the delay).
async fn setup_team() -> (Emu, String) {
    let (emu, token) = setup().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, CAROL).await;
    let (status, body) = emu.post("/_emulator/settings", json!({"transport_delay_ms": 0})).await;
    assert_eq!(status, 200, "{body}");
    (emu, token)
}

/// A Graph recipient.
fn recipient(address: &str) -> Value {
    json!({"emailAddress": {"name": address.split('@').next().unwrap(), "address": address}})
}

/// The path of a support-mailbox message.
fn msg(id: &str) -> String {
    format!("{}/messages/{id}", user(SUPPORT))
}

/// The text of a control-API body (`{"content"}` or a plain string).
fn body_text(message: &Value) -> String {
    let body = &message["body"];
    body.as_str()
        .or_else(|| body["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// True when a control-API `references` value (string or list) ends with `id`.
fn references_end_with(references: &Value, id: &str) -> bool {
    match references {
        Value::String(s) => s.split_whitespace().last() == Some(id),
        Value::Array(items) => items.last().and_then(Value::as_str) == Some(id),
        _ => false,
    }
}

/// Messages of a control-API folder listing whose subject contains `needle`.
fn with_subject<'a>(messages: &'a [Value], needle: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(needle)))
        .collect()
}

/// The id of a well-known folder of the support mailbox.
async fn folder_id(emu: &Emu, token: &str, name: &str) -> String {
    let resp = gget(emu, token, &format!("{}/mailFolders/{name}", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::OK, "mailFolders/{name}: {}", resp.text);
    resp.body["id"].as_str().unwrap().to_string()
}

/// Graph ids of the messages in a support-mailbox folder.
async fn graph_folder_ids(emu: &Emu, token: &str, folder: &str) -> Vec<String> {
    let resp = gget(
        emu,
        token,
        &format!("{}/mailFolders/{folder}/messages?$top=100", user(SUPPORT)),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    resp.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// `POST …/send` with `Content-Length: 0` and no body, as the docs require.
async fn send_draft(emu: &Emu, token: &str, id: &str) -> Resp {
    let resp = emu
        .http
        .post(emu.at(&format!("{}/send", msg(id))))
        .bearer_auth(token)
        .header(CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    into_resp(resp).await
}

/// Creates a draft in the support mailbox; returns its Graph representation.
async fn create_draft(emu: &Emu, token: &str, body: Value) -> Value {
    let resp = gpost(emu, token, &format!("{}/messages", user(SUPPORT)), body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "create draft: {}", resp.text);
    assert_eq!(resp.body["isDraft"], true);
    resp.body
}

/// A `PUT` of one upload chunk, without Authorization.
async fn put_chunk(emu: &Emu, url: &str, range: &str, bytes: &[u8]) -> Resp {
    let resp = emu
        .http
        .put(url)
        .header(CONTENT_RANGE, range)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    into_resp(resp).await
}

/// Deterministic test bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8).collect()
}

// ---------------------------------------------------------------------------
// PATCH and move
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// reply / replyAll / forward
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Draft replies and send
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Idempotency marker: extended property filter
// ---------------------------------------------------------------------------

/// The `$filter` that finds a message by its OutboundId value.
fn outbound_filter(value: &str) -> String {
    enc(&format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{OUTBOUND_PROP}' and ep/value eq '{value}')"
    ))
}

/// Messages in a support folder whose OutboundId is `value`.
async fn find_outbound(emu: &Emu, token: &str, folder: &str, value: &str) -> Vec<Value> {
    let path = format!(
        "{}/mailFolders/{folder}/messages?$filter={}",
        user(SUPPORT),
        outbound_filter(value)
    );
    let resp = gget(emu, token, &path).await;
    assert_eq!(resp.status, StatusCode::OK, "{folder} filter: {}", resp.text);
    resp.body["value"].as_array().unwrap().clone()
}

#[tokio::test]
async fn outbound_id_extended_property_finds_the_draft_then_the_sent_item() {
    let (emu, token) = setup_team().await;
    let key = uuid::Uuid::new_v4().to_string();
    let other_key = uuid::Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for (subject, value) in [("Marked A", &key), ("Marked B", &other_key)] {
        let draft = create_draft(
            &emu,
            &token,
            json!({
                "subject": subject,
                "body": {"contentType": "text", "content": "marked"},
                "toRecipients": [recipient(ALICE)],
                "singleValueExtendedProperties": [{"id": OUTBOUND_PROP, "value": value}]
            }),
        )
        .await;
        ids.push(draft["id"].as_str().unwrap().to_string());
    }

    let found = find_outbound(&emu, &token, "drafts", &key).await;
    assert_eq!(found.len(), 1, "exactly the marked draft: {found:?}");
    assert_eq!(found[0]["id"], ids[0].as_str());
    assert!(
        find_outbound(&emu, &token, "drafts", &uuid::Uuid::new_v4().to_string())
            .await
            .is_empty()
    );
    assert!(
        find_outbound(&emu, &token, "sentitems", &key).await.is_empty(),
        "not sent yet"
    );

    let sent = send_draft(&emu, &token, &ids[0]).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);

    assert!(
        find_outbound(&emu, &token, "drafts", &key).await.is_empty(),
        "gone from Drafts"
    );
    let in_sent = find_outbound(&emu, &token, "sentitems", &key).await;
    assert_eq!(in_sent.len(), 1, "the property survived the move to Sent Items");
    assert_eq!(in_sent[0]["subject"], "Marked A");
    assert_eq!(
        find_outbound(&emu, &token, "drafts", &other_key).await.len(),
        1,
        "the other draft stays"
    );

    let control = control_folder(&emu, SUPPORT, "sentitems").await;
    let props = &with_subject(&control, "Marked A")[0]["extended_properties"];
    assert!(
        props
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == OUTBOUND_PROP && p["value"] == key.as_str()),
        "control API shows the property: {props}"
    );
}

// ---------------------------------------------------------------------------
// sendMail
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Draft attachments and upload sessions
// ---------------------------------------------------------------------------

/// Starts an upload session on a draft; returns the answer after checking its shape.
async fn upload_session(emu: &Emu, token: &str, draft: &str, name: &str, size: usize) -> Value {
    let resp = gpost(
        emu,
        token,
        &format!("{}/attachments/createUploadSession", msg(draft)),
        json!({"AttachmentItem": {"attachmentType": "file", "name": name, "size": size}}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "createUploadSession: {}", resp.text);
    let url = resp.body["uploadUrl"].as_str().expect("uploadUrl");
    assert!(url.starts_with(&emu.url), "uploadUrl on the emulator: {url}");
    assert!(
        resp.body["expirationDateTime"].as_str().is_some_and(|t| !t.is_empty()),
        "expirationDateTime"
    );
    assert_eq!(resp.body["nextExpectedRanges"], json!(["0-"]));
    resp.body
}

#[tokio::test]
async fn draft_attachments_small_and_by_upload_session_reach_the_recipient() {
    let (emu, token) = setup_team().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Big file", "body": {"contentType": "text", "content": "see attached"}, "toRecipients": [recipient(ALICE)]}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();

    let note = b"a small note".to_vec();
    let small = gpost(
        &emu,
        &token,
        &format!("{}/attachments", msg(draft_id)),
        json!({"@odata.type": "#microsoft.graph.fileAttachment", "name": "note.txt", "contentType": "text/plain", "contentBytes": B64.encode(&note)}),
    )
    .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text);
    assert_eq!(small.body["name"], "note.txt");
    assert!(small.body["id"].as_str().is_some());

    const TOTAL: usize = 5 * 1024 * 1024;
    const CHUNK: usize = 2 * 1024 * 1024;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "big.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let mut start = 0;
    while start + CHUNK < TOTAL {
        let end = start + CHUNK;
        let range = format!("bytes {start}-{}/{TOTAL}", end - 1);
        let resp = put_chunk(&emu, url, &range, &data[start..end]).await;
        assert_eq!(resp.status, StatusCode::OK, "{range}: {}", resp.text);
        let next = resp.body["nextExpectedRanges"][0].as_str().expect("nextExpectedRanges");
        assert!(next.starts_with(&format!("{end}-")), "next range: {next}");
        start = end;
    }
    let range = format!("bytes {start}-{}/{TOTAL}", TOTAL - 1);
    let last = put_chunk(&emu, url, &range, &data[start..]).await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);
    assert!(last.header("location").is_some(), "Location header on the final chunk");

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let big = items
        .iter()
        .find(|a| a["name"] == "big.bin")
        .expect("big.bin on the draft");
    assert_eq!(big["size"], TOTAL);

    let sent = send_draft(&emu, &token, draft_id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);

    let alice = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(alice.len(), 1);
    let attachments = alice[0]["attachments"].as_array().unwrap();
    assert!(
        attachments.iter().any(|a| a["name"] == "big.bin" && a["size"] == TOTAL),
        "{attachments:?}"
    );

    let inbox = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(ALICE))).await;
    let received = inbox.body["value"][0]["id"].as_str().unwrap();
    let got = gget(
        &emu,
        &token,
        &format!("{}/messages/{received}/attachments", user(ALICE)),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let got = got.body["value"].as_array().unwrap();
    let bytes_of = |name: &str| {
        let item = got
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} received"));
        B64.decode(item["contentBytes"].as_str().unwrap()).unwrap()
    };
    assert!(bytes_of("big.bin") == data, "the recipient gets identical bytes");
    assert_eq!(bytes_of("note.txt"), note);
}

#[tokio::test]
async fn upload_session_refuses_a_wrong_content_range() {
    let (emu, token) = setup().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Ranges", "body": {"contentType": "text", "content": "x"}}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();
    const TOTAL: usize = 4 * 1024 * 1024;
    const HALF: usize = TOTAL / 2;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "ranges.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let skipped = put_chunk(&emu, url, &format!("bytes 100-199/{TOTAL}"), &data[100..200]).await;
    assert!(
        skipped.status.is_client_error(),
        "a chunk that skips bytes: {} {}",
        skipped.status,
        skipped.text
    );
    let short = put_chunk(&emu, url, &format!("bytes 0-99/{TOTAL}"), &data[..50]).await;
    assert!(
        short.status.is_client_error(),
        "range longer than the body: {} {}",
        short.status,
        short.text
    );
    let wrong_total = put_chunk(&emu, url, "bytes 0-99/1000", &data[..100]).await;
    assert!(
        wrong_total.status.is_client_error(),
        "total differs from the session: {}",
        wrong_total.status
    );
    let garbled = put_chunk(&emu, url, "items 0-99", &data[..100]).await;
    assert!(
        garbled.status.is_client_error(),
        "unparseable Content-Range: {}",
        garbled.status
    );

    // The session is intact after the refusals.
    let first = put_chunk(&emu, url, &format!("bytes 0-{}/{TOTAL}", HALF - 1), &data[..HALF]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert!(
        first.body["nextExpectedRanges"][0]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{HALF}-")))
    );
    let last = put_chunk(&emu, url, &format!("bytes {HALF}-{}/{TOTAL}", TOTAL - 1), &data[HALF..]).await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one attachment, no fragments: {items:?}");
    assert_eq!(items[0]["size"], TOTAL);
}

#[tokio::test]
async fn upload_session_accepts_chunks_just_under_4_mb() {
    let (emu, token) = setup().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Large chunks", "body": {"contentType": "text", "content": "x"}}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();
    // The docs only ask that each chunk stay under 4 MB.
    const CHUNK: usize = 4 * 1024 * 1024 - 64 * 1024;
    const TOTAL: usize = CHUNK + 1024 * 1024;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "large.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let first = put_chunk(&emu, url, &format!("bytes 0-{}/{TOTAL}", CHUNK - 1), &data[..CHUNK]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let last = put_chunk(
        &emu,
        url,
        &format!("bytes {CHUNK}-{}/{TOTAL}", TOTAL - 1),
        &data[CHUNK..],
    )
    .await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["size"], TOTAL);
    assert!(B64.decode(items[0]["contentBytes"].as_str().unwrap()).unwrap() == data);
}
