//! The control API for faults, the request log and reset.

use crate::support::control::*;
use crate::support::{CLIENT, Emu, SECRET, TENANT};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn faults_endpoint_creates_lists_and_clears() {
    let emu = Emu::start().await;
    let (status, body) = emu
        .post("/_emulator/faults", json!({"path_prefix": "/v1.0/", "status": 500}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body["id"].is_null(), "{body}");
    let (status, listed) = emu.get("/_emulator/faults").await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed.to_string().contains("/v1.0/"), "{listed}");
    let resp = emu.http.delete(emu.at("/_emulator/faults")).send().await.unwrap();
    assert!(resp.status().is_success());
    let (_, listed) = emu.get("/_emulator/faults").await;
    assert!(!listed.to_string().contains("/v1.0/"), "cleared: {listed}");
}

/// The log entry answering a request whose path is `path`, the latest one.
fn entry<'a>(log: &'a [Value], method: &str, path: &str) -> &'a Value {
    log.iter()
        .rev()
        .find(|e| e["method"] == method && e["path"] == path)
        .unwrap_or_else(|| panic!("{method} {path} logged: {log:#?}"))
}

fn as_seconds(value: &Value) -> Option<f64> {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

#[tokio::test]
async fn request_log_records_what_happened() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    emu.settings(json!({"token_lifetime_secs": 300})).await;
    let token = emu.default_token().await;
    let alice_inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");
    let bob_inbox = format!("/v1.0/users/{BOB}/mailFolders/inbox");

    let crid = uuid::Uuid::new_v4().to_string();
    let resp = emu
        .http
        .get(emu.at(&alice_inbox))
        .bearer_auth(&token)
        .header("client-request-id", &crid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = emu
        .http
        .get(emu.at(&format!("/v1.0/users/{ALICE}/messages?$top=1")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = emu
        .http
        .get(emu.at(&bob_inbox))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = emu.http.get(emu.at(&bob_inbox)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (status, body) = emu
        .post(
            "/_emulator/faults",
            json!({"path_prefix": bob_inbox, "status": 429, "retry_after": "7", "times": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = emu.graph_get(&token, &bob_inbox).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    let (status, body) = advance_clock(&emu, 400).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = emu.graph_get(&token, &alice_inbox).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired token: {body}");

    let log = emu.requests().await;
    assert!(
        log.iter()
            .all(|e| !e["path"].as_str().unwrap_or("").starts_with("/_emulator")),
        "control calls are not logged"
    );

    let token_entry = entry(&log, "POST", &format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(token_entry["status"], 200, "{token_entry}");
    assert_eq!(token_entry["app"], CLIENT, "token request names the app: {token_entry}");

    let ok = log
        .iter()
        .find(|e| e["path"] == alice_inbox.as_str() && e["status"] == 200)
        .unwrap_or_else(|| panic!("successful inbox read: {log:#?}"));
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["app"], CLIENT, "{ok}");
    assert_eq!(ok["mailbox"], ALICE, "{ok}");
    assert_eq!(ok["token"], "valid", "{ok}");
    assert_eq!(ok["headers"]["client-request-id"], crid.as_str(), "{ok}");
    assert!(ok["retry_after"].is_null(), "{ok}");
    assert!(ok["batch"].is_null(), "{ok}");
    assert!(ok["seq"].is_u64(), "{ok}");
    assert!(ok["duration_ms"].is_number(), "{ok}");
    rfc3339(&ok["time"]);

    let with_query = entry(&log, "GET", &format!("/v1.0/users/{ALICE}/messages"));
    assert!(
        with_query["query"].as_str().is_some_and(|q| q.contains("top=1")),
        "query recorded: {with_query}"
    );

    let bob_entries: Vec<&Value> = log.iter().filter(|e| e["path"] == bob_inbox.as_str()).collect();
    assert_eq!(bob_entries.len(), 3, "{bob_entries:#?}");
    assert_eq!(bob_entries[0]["token"], "invalid", "{:?}", bob_entries[0]);
    assert_eq!(bob_entries[0]["status"], 401);
    assert_eq!(bob_entries[1]["token"], "none", "{:?}", bob_entries[1]);
    assert_eq!(bob_entries[2]["status"], 429);
    assert_eq!(
        as_seconds(&bob_entries[2]["retry_after"]),
        Some(7.0),
        "{:?}",
        bob_entries[2]
    );

    let expired = log.last().unwrap();
    assert_eq!(expired["path"], alice_inbox.as_str());
    assert_eq!(expired["status"], 401);
    assert_eq!(expired["token"], "expired", "{expired}");

    // Sequence numbers grow; filters.
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq grows: {seqs:?}");
    let last = *seqs.last().unwrap();
    emu.graph_get(&token, &bob_inbox).await;
    let (_, since) = emu.get(&format!("/_emulator/requests?since={last}")).await;
    let since = since["requests"].as_array().cloned().unwrap_or_default();
    assert!(
        !since.is_empty() && since.iter().all(|e| e["seq"].as_u64().unwrap() >= last),
        "since: {since:#?}"
    );
    assert!(
        since.iter().any(|e| e["seq"].as_u64().unwrap() > last),
        "the newer request is returned"
    );
    let (_, only_bob) = emu
        .get(&format!("/_emulator/requests?path_prefix=/v1.0/users/{BOB}"))
        .await;
    let only_bob = only_bob["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(only_bob.len(), 4, "{only_bob:#?}");
    assert!(only_bob.iter().all(|e| e["path"] == bob_inbox.as_str()));
}

#[tokio::test]
async fn reset_forgets_everything() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.deliver(ALICE, "Before reset").await;
    emu.default_token().await;
    emu.settings(json!({"latency_ms": 5, "delta_page_size": 3})).await;
    let (status, _) = emu
        .post("/_emulator/faults", json!({"path_prefix": "/v1.0/", "status": 500}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = emu.post("/_emulator/reset", json!({})).await;
    assert!(status.is_success(), "reset: {status} {body}");

    assert!(emu.requests().await.is_empty(), "the request log is empty");
    let (status, settings) = emu.get("/_emulator/settings").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        settings["latency_ms"].as_f64(),
        Some(0.0),
        "settings back to defaults: {settings}"
    );
    assert_eq!(settings["delta_page_size"].as_f64(), Some(10.0), "{settings}");
    let (_, faults) = emu.get("/_emulator/faults").await;
    assert!(!faults.to_string().contains("/v1.0/"), "faults cleared: {faults}");
    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{ALICE}/folders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the mailbox is gone: {body}");

    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert!(status.is_client_error(), "the old app is gone: {status} {body}");
    assert!(body["error"].is_string(), "identity error body: {body}");
}
