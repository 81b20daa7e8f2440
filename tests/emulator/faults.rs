//! Injected faults (`POST /_emulator/faults`, in the spirit of Microsoft Dev Proxy):
//! status + Retry-After, method and path filters, delay, connection reset,
//! malformed bodies, times and rate, listing and clearing, identity-style errors.

use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT, status_json};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";

async fn setup() -> (Emu, String) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    let token = emu.default_token().await;
    (emu, token)
}

fn folders(address: &str) -> String {
    format!("/v1.0/users/{address}/mailFolders")
}

fn inbox(address: &str) -> String {
    format!("/v1.0/users/{address}/mailFolders/inbox")
}

/// Registers a fault rule; returns its id.
async fn fault(emu: &Emu, rule: Value) -> Value {
    let (status, body) = emu.post("/_emulator/faults", rule.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "fault {rule}: {body}");
    assert!(!body["id"].is_null(), "fault answer has an id: {body}");
    body["id"].clone()
}

/// The fault rules as listed by `GET /_emulator/faults` (a bare array or `{"faults": [...]}`).
async fn list_faults(emu: &Emu) -> Vec<Value> {
    let (status, body) = emu.get("/_emulator/faults").await;
    assert_eq!(status, StatusCode::OK, "list faults: {body}");
    match &body {
        Value::Array(items) => items.clone(),
        other => other["faults"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("fault list is neither an array nor {{\"faults\": [...]}}: {body}")),
    }
}

async fn advance_clock(emu: &Emu, secs: u64) {
    let (status, body) = emu.post("/_emulator/clock", json!({"advance_secs": secs})).await;
    assert_eq!(status, StatusCode::OK, "advance clock: {body}");
}

/// GET with a bearer token and a `client-request-id` header.
async fn get_with_id(emu: &Emu, token: &str, path: &str, client_request_id: &str) -> (StatusCode, HeaderMap, Value) {
    let resp = emu
        .http
        .get(emu.at(path))
        .bearer_auth(token)
        .header("client-request-id", client_request_id)
        .send()
        .await
        .unwrap();
    let headers = resp.headers().clone();
    let (status, body) = status_json(resp).await;
    (status, headers, body)
}

/// Checks the Graph error envelope of an injected failure.
fn assert_graph_envelope(headers: &HeaderMap, body: &Value, client_request_id: &str) {
    let error = &body["error"];
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "error.code: {body}"
    );
    assert!(error["message"].is_string(), "error.message: {body}");
    let inner = &error["innerError"];
    assert!(
        inner["date"].as_str().is_some_and(|d| !d.is_empty()),
        "innerError.date: {body}"
    );
    let request_id = inner["request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("innerError.request-id: {body}"));
    assert!(!request_id.is_empty());
    assert_eq!(
        inner["client-request-id"], client_request_id,
        "innerError.client-request-id echoes the header: {body}"
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(
        header("request-id").as_deref(),
        Some(request_id),
        "request-id header matches the body"
    );
    assert_eq!(
        header("client-request-id").as_deref(),
        Some(client_request_id),
        "client-request-id header echoed"
    );
}

#[tokio::test]
async fn status_with_retry_after_a_given_number_of_times() {
    let (emu, token) = setup().await;
    fault(
        &emu,
        json!({"path_prefix": folders(ALICE), "status": 503, "retry_after": "1.5", "times": 2}),
    )
    .await;

    for attempt in 1..=2 {
        let crid = uuid::Uuid::new_v4().to_string();
        let (status, headers, body) = get_with_id(&emu, &token, &inbox(ALICE), &crid).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "attempt {attempt}: {body}");
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            Some("1.5"),
            "attempt {attempt}"
        );
        assert_graph_envelope(&headers, &body, &crid);
        // Honour the Retry-After so that only the rule decides the answer.
        advance_clock(&emu, 2).await;
    }
    let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after two faults the answers are normal: {body}"
    );
    assert!(body["id"].is_string(), "a real folder: {body}");
}

#[tokio::test]
async fn method_filter() {
    let (emu, token) = setup().await;
    fault(
        &emu,
        json!({"path_prefix": format!("/v1.0/users/{ALICE}"), "method": "POST", "status": 500}),
    )
    .await;

    let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
    assert_eq!(status, StatusCode::OK, "GET is not matched by a POST rule: {body}");

    for _ in 0..2 {
        let crid = uuid::Uuid::new_v4().to_string();
        let resp = emu
            .http
            .post(emu.at(&format!("/v1.0/users/{ALICE}/messages")))
            .bearer_auth(&token)
            .header("client-request-id", &crid)
            .json(&json!({"subject": "Draft", "body": {"contentType": "text", "content": "x"}}))
            .send()
            .await
            .unwrap();
        let headers = resp.headers().clone();
        let (status, body) = status_json(resp).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "POST matches (no `times`: every time): {body}"
        );
        assert_graph_envelope(&headers, &body, &crid);
    }
}

#[tokio::test]
async fn path_prefix_filter() {
    let (emu, token) = setup().await;
    fault(&emu, json!({"path_prefix": folders(ALICE), "status": 502})).await;

    let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "matched path: {body}");

    let (status, _, body) = emu.graph_get(&token, &format!("/v1.0/users/{ALICE}/messages")).await;
    assert_eq!(status, StatusCode::OK, "another path of the same mailbox: {body}");

    let (status, _, body) = emu.graph_get(&token, &inbox(BOB)).await;
    assert_eq!(status, StatusCode::OK, "another mailbox: {body}");
}

#[tokio::test]
async fn delay() {
    let (emu, token) = setup().await;
    fault(
        &emu,
        json!({"path_prefix": folders(ALICE), "delay_ms": 400, "times": 1}),
    )
    .await;

    let started = Instant::now();
    let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "a delay alone still answers normally: {body}");
    assert!(
        elapsed >= Duration::from_millis(400),
        "answer came after {elapsed:?}, expected at least 400 ms"
    );
}

#[tokio::test]
async fn connection_reset() {
    let (emu, token) = setup().await;
    fault(&emu, json!({"path_prefix": folders(ALICE), "reset": true, "times": 1})).await;

    let outcome = emu.http.get(emu.at(&inbox(ALICE))).bearer_auth(&token).send().await;
    match outcome {
        Err(_) => {}
        Ok(resp) => {
            let status = resp.status();
            assert!(
                resp.bytes().await.is_err(),
                "a reset must be a transport error, got a complete answer with status {status}"
            );
        }
    }

    let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
    assert_eq!(status, StatusCode::OK, "the next request is answered normally: {body}");
}

#[tokio::test]
async fn malformed_body() {
    let (emu, token) = setup().await;
    fault(
        &emu,
        json!({"path_prefix": folders(ALICE), "malformed": true, "times": 1}),
    )
    .await;

    let resp = emu
        .http
        .get(emu.at(&inbox(ALICE)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.expect("the body arrives");
    assert!(
        serde_json::from_slice::<Value>(&bytes).is_err(),
        "a malformed body must not parse as JSON: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    let resp = emu
        .http
        .get(emu.at(&inbox(ALICE)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    assert!(
        serde_json::from_slice::<Value>(&bytes).is_ok(),
        "the next body is JSON again"
    );
}

#[tokio::test]
async fn rate_one_always_fails_rate_zero_never() {
    let (emu, token) = setup().await;
    fault(&emu, json!({"path_prefix": folders(ALICE), "status": 500, "rate": 1.0})).await;
    fault(&emu, json!({"path_prefix": folders(BOB), "status": 500, "rate": 0.0})).await;

    for i in 0..8 {
        let (status, _, body) = emu.graph_get(&token, &inbox(ALICE)).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate 1.0, request {i}: {body}"
        );
        let (status, _, body) = emu.graph_get(&token, &inbox(BOB)).await;
        assert_eq!(status, StatusCode::OK, "rate 0.0, request {i}: {body}");
    }
}

#[tokio::test]
async fn list_and_clear() {
    let (emu, token) = setup().await;
    assert!(list_faults(&emu).await.is_empty(), "no rules at start");

    let first = fault(&emu, json!({"path_prefix": folders(ALICE), "status": 500})).await;
    let second = fault(
        &emu,
        json!({"path_prefix": folders(BOB), "method": "GET", "status": 503}),
    )
    .await;
    assert_ne!(first, second, "each rule has its own id");

    let listed = list_faults(&emu).await;
    assert_eq!(listed.len(), 2, "both rules listed: {listed:?}");
    for id in [&first, &second] {
        assert!(
            listed.iter().any(|rule| &rule["id"] == id),
            "rule {id} listed: {listed:?}"
        );
    }
    assert!(
        listed.iter().any(|rule| rule["path_prefix"] == folders(BOB)),
        "a listed rule shows its path_prefix: {listed:?}"
    );

    let resp = emu.http.delete(emu.at("/_emulator/faults")).send().await.unwrap();
    assert!(resp.status().is_success(), "clear: {}", resp.status());
    assert!(list_faults(&emu).await.is_empty(), "no rules after clearing");

    for address in [ALICE, BOB] {
        let (status, _, body) = emu.graph_get(&token, &inbox(address)).await;
        assert_eq!(status, StatusCode::OK, "{address} after clearing: {body}");
    }
}

/// Token request of the default app; status and body.
async fn token_request(emu: &Emu) -> (StatusCode, Value) {
    let resp = emu
        .http
        .post(emu.at(&format!("/{TENANT}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", GRAPH_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    status_json(resp).await
}

/// Checks an identity-platform error body, not a Graph envelope.
fn assert_identity_error(body: &Value) {
    assert!(
        body["error"].is_string(),
        "identity errors carry `error` as a string: {body}"
    );
    let description = body["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("error_description: {body}"));
    for line in ["Trace ID: ", "Correlation ID: ", "Timestamp: "] {
        assert!(description.contains(line), "error_description has {line:?}: {body}");
    }
    assert!(body["error_codes"].is_array(), "error_codes: {body}");
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field}: {body}");
    }
}

#[tokio::test]
async fn token_path_fault_with_aadsts_code() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let token_path = format!("/{TENANT}/oauth2/v2.0/token");
    fault(
        &emu,
        json!({"path_prefix": token_path, "status": 400, "aadsts": 50196, "times": 1}),
    )
    .await;

    let (status, body) = token_request(&emu).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_identity_error(&body);
    assert!(
        body["error_description"].as_str().unwrap().starts_with("AADSTS50196:"),
        "the injected code leads the description: {body}"
    );
    assert!(
        body["error_codes"].as_array().unwrap().iter().any(|c| c == 50196),
        "error_codes holds 50196: {body}"
    );

    let (status, body) = token_request(&emu).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "times 1: the next token request succeeds: {body}"
    );
}

#[tokio::test]
async fn token_path_fault_with_oauth_error() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let token_path = format!("/{TENANT}/oauth2/v2.0/token");
    fault(
        &emu,
        json!({"path_prefix": token_path, "status": 503, "oauth_error": "temporarily_unavailable", "times": 1}),
    )
    .await;

    let (status, body) = token_request(&emu).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_identity_error(&body);

    let (status, body) = token_request(&emu).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
