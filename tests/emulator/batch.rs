//! JSON batching (`POST /v1.0/$batch`, as Microsoft's JSON batching page describes it).

use crate::support::{CLIENT, Emu, TENANT};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;

const ALICE: &str = "alice@contoso.example";

/// Emulator with the default app, one mailbox holding `messages` messages; returns
/// the emulator, a token and the message ids (subjects are `Message {i}`).
async fn setup(messages: usize) -> (Emu, String, Vec<String>) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    let mut ids = Vec::new();
    for i in 0..messages {
        let answer = emu.deliver(ALICE, &format!("Message {i}")).await;
        ids.push(answer["id"].as_str().expect("delivered message id").to_string());
    }
    let token = emu.default_token().await;
    (emu, token, ids)
}

async fn batch(emu: &Emu, token: &str, requests: Vec<Value>) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .graph_post(token, "/v1.0/$batch", json!({"requests": requests}))
        .await;
    (status, body)
}

fn message_url(id: &str) -> String {
    format!("/users/{ALICE}/messages/{id}")
}

fn get(id: &str, url: String) -> Value {
    json!({"id": id, "method": "GET", "url": url})
}

fn mark_read(id: &str, message: &str) -> Value {
    json!({
        "id": id,
        "method": "PATCH",
        "url": message_url(message),
        "headers": {"Content-Type": "application/json"},
        "body": {"isRead": true}
    })
}

/// The per-request answers by id; checks each has id, status and body and ids are unique.
fn by_id(body: &Value) -> HashMap<String, Value> {
    let responses = body["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("no responses array: {body}"));
    let mut map = HashMap::new();
    for response in responses {
        let id = response["id"]
            .as_str()
            .unwrap_or_else(|| panic!("response without id: {response}"));
        assert!(
            response["status"].is_u64(),
            "response {id} has a numeric status: {response}"
        );
        assert!(response.get("body").is_some(), "response {id} has a body: {response}");
        assert!(
            map.insert(id.to_string(), response.clone()).is_none(),
            "id {id} answered twice"
        );
    }
    map
}

/// `is_read` of a message, read from the control API.
async fn is_read(emu: &Emu, id: &str) -> bool {
    let (status, list) = emu
        .get(&format!("/_emulator/mailboxes/{ALICE}/folders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let message = list
        .as_array()
        .unwrap_or_else(|| panic!("folder listing is an array: {list}"))
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("message {id} in inbox: {list}"))
        .clone();
    message["is_read"]
        .as_bool()
        .unwrap_or_else(|| panic!("is_read: {message}"))
}

fn assert_bad_request(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["code"].is_string(), "Graph error envelope: {body}");
}

#[tokio::test]
async fn twenty_requests_answered_each_with_status_and_body() {
    let (emu, token, ids) = setup(4).await;
    let mut requests: Vec<Value> = (1..=19)
        .map(|n| get(&n.to_string(), message_url(&ids[n % ids.len()])))
        .collect();
    requests.push(mark_read("20", &ids[0]));

    let (status, body) = batch(&emu, &token, requests).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answers = by_id(&body);
    assert_eq!(answers.len(), 20, "one answer per request: {body}");
    for n in 1..=19 {
        let answer = &answers[&n.to_string()];
        let expected = &ids[n % ids.len()];
        assert_eq!(answer["status"], 200, "request {n}: {answer}");
        assert_eq!(answer["body"]["id"], expected.as_str(), "request {n}: {answer}");
        assert_eq!(
            answer["body"]["subject"],
            format!("Message {}", n % ids.len()),
            "request {n}"
        );
    }
    let patched = &answers["20"];
    assert_eq!(patched["status"], 200, "{patched}");
    assert_eq!(patched["body"]["isRead"], true, "{patched}");
    assert!(is_read(&emu, &ids[0]).await, "the PATCH inside the batch took effect");
}

#[tokio::test]
async fn more_than_twenty_requests_is_a_bad_request() {
    let (emu, token, ids) = setup(1).await;
    let mut requests: Vec<Value> = (1..=20).map(|n| get(&n.to_string(), message_url(&ids[0]))).collect();
    requests.push(mark_read("21", &ids[0]));

    let (status, body) = batch(&emu, &token, requests).await;
    assert_bad_request(status, &body);
    assert!(!is_read(&emu, &ids[0]).await, "nothing of a refused batch runs");
}

#[tokio::test]
async fn duplicate_ids_are_a_bad_request() {
    let (emu, token, ids) = setup(2).await;
    let requests = vec![
        mark_read("1", &ids[0]),
        get("2", message_url(&ids[1])),
        get("1", message_url(&ids[1])),
    ];

    let (status, body) = batch(&emu, &token, requests).await;
    assert_bad_request(status, &body);
    assert!(!is_read(&emu, &ids[0]).await, "nothing of a refused batch runs");
}

#[tokio::test]
async fn dependents_of_a_failed_request_get_424() {
    let (emu, token, ids) = setup(1).await;
    let mut dependent = mark_read("2", &ids[0]);
    dependent["dependsOn"] = json!(["1"]);
    let requests = vec![
        get("1", format!("/users/{ALICE}/messages/AAMkNoSuchMessage000=")),
        dependent,
    ];

    let (status, body) = batch(&emu, &token, requests).await;
    assert_eq!(status, StatusCode::OK, "the batch itself succeeds: {body}");
    let answers = by_id(&body);
    assert_eq!(answers["1"]["status"], 404, "{body}");
    assert!(
        answers["1"]["body"]["error"]["code"].is_string(),
        "a per-request Graph error: {body}"
    );
    assert_eq!(answers["2"]["status"], 424, "{body}");
    assert!(!is_read(&emu, &ids[0]).await, "the dependent request did not run");
}

#[tokio::test]
async fn body_without_content_type_fails_that_request_only() {
    let (emu, token, ids) = setup(1).await;
    let requests = vec![
        json!({"id": "1", "method": "PATCH", "url": message_url(&ids[0]), "body": {"isRead": true}}),
        get("2", message_url(&ids[0])),
    ];

    let (status, body) = batch(&emu, &token, requests).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answers = by_id(&body);
    assert_eq!(
        answers["1"]["status"], 400,
        "a body needs a Content-Type header: {body}"
    );
    assert_eq!(answers["2"]["status"], 200, "{body}");
    assert!(!is_read(&emu, &ids[0]).await, "the refused PATCH did not run");
}

#[tokio::test]
async fn requests_inside_a_batch_are_logged_with_the_batch_seq() {
    let (emu, token, ids) = setup(2).await;
    let requests = vec![get("a", message_url(&ids[0])), get("b", message_url(&ids[1]))];
    let (status, body) = batch(&emu, &token, requests).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let log = emu.requests().await;
    let outer = log
        .iter()
        .find(|e| {
            e["method"] == "POST"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("$batch") || p.ends_with("%24batch"))
        })
        .unwrap_or_else(|| panic!("the $batch request is logged: {log:?}"));
    assert!(
        outer["batch"].is_null(),
        "the outer request is not inside a batch: {outer}"
    );
    let outer_seq = outer["seq"].clone();
    assert!(outer_seq.is_u64(), "seq: {outer}");

    for id in &ids {
        let suffix = format!("/users/{ALICE}/messages/{id}");
        let inner = log
            .iter()
            .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(&suffix)))
            .unwrap_or_else(|| panic!("inner request for {id} logged: {log:?}"));
        assert_eq!(inner["batch"], outer_seq, "inner request names its batch: {inner}");
        assert_eq!(inner["method"], "GET", "{inner}");
        assert_eq!(inner["status"], 200, "{inner}");
        assert_eq!(inner["mailbox"], ALICE, "{inner}");
        assert_eq!(inner["app"], CLIENT, "{inner}");
    }
    let inside = log.iter().filter(|e| !e["batch"].is_null()).count();
    assert_eq!(inside, 2, "exactly the two inner requests carry a batch: {log:?}");
}
