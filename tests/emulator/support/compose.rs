//! Helpers of the Graph writing-side tests: a team of mailboxes, drafts, folders and
//! upload chunks.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::support::graph::{ALICE, CAROL, Resp, SUPPORT, gget, gpost, into_resp, setup, user};
use crate::support::{Emu, TENANT};

/// The idempotency marker property inboxd puts on outbound drafts.
pub const OUTBOUND_PROP: &str = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name OutboundId";

/// Support, Alice and Carol mailboxes in one tenant, and an app token; transport without
/// delay, so what was sent is in Sent Items on the next look (`transport.rs` covers the delay).
pub async fn setup_team() -> (Emu, String) {
    let (emu, token) = setup().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, CAROL).await;
    let (status, body) = emu.post("/_emulator/settings", json!({"transport_delay_ms": 0})).await;
    assert_eq!(status, 200, "{body}");
    (emu, token)
}

/// A Graph recipient.
pub fn recipient(address: &str) -> Value {
    json!({"emailAddress": {"name": address.split('@').next().unwrap(), "address": address}})
}

/// The path of a support-mailbox message.
pub fn msg(id: &str) -> String {
    format!("{}/messages/{id}", user(SUPPORT))
}

/// The text of a control-API body (`{"content"}` or a plain string).
pub fn body_text(message: &Value) -> String {
    let body = &message["body"];
    body.as_str()
        .or_else(|| body["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// True when a control-API `references` value (string or list) ends with `id`.
pub fn references_end_with(references: &Value, id: &str) -> bool {
    match references {
        Value::String(s) => s.split_whitespace().last() == Some(id),
        Value::Array(items) => items.last().and_then(Value::as_str) == Some(id),
        _ => false,
    }
}

/// Messages of a control-API folder listing whose subject contains `needle`.
pub fn with_subject<'a>(messages: &'a [Value], needle: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(needle)))
        .collect()
}

/// The id of a well-known folder of the support mailbox.
pub async fn folder_id(emu: &Emu, token: &str, name: &str) -> String {
    let resp = gget(emu, token, &format!("{}/mailFolders/{name}", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::OK, "mailFolders/{name}: {}", resp.text);
    resp.body["id"].as_str().unwrap().to_string()
}

/// Graph ids of the messages in a support-mailbox folder.
pub async fn graph_folder_ids(emu: &Emu, token: &str, folder: &str) -> Vec<String> {
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
pub async fn send_draft(emu: &Emu, token: &str, id: &str) -> Resp {
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
pub async fn create_draft(emu: &Emu, token: &str, body: Value) -> Value {
    let resp = gpost(emu, token, &format!("{}/messages", user(SUPPORT)), body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "create draft: {}", resp.text);
    assert_eq!(resp.body["isDraft"], true);
    resp.body
}

/// A `PUT` of one upload chunk, without Authorization.
pub async fn put_chunk(emu: &Emu, url: &str, range: &str, bytes: &[u8]) -> Resp {
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
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8).collect()
}
