//! Per app + mailbox throttling (Outlook limits; the Dev Proxy RetryAfterPlugin idea):
//! four concurrent requests, a request budget per window, a decimal `Retry-After`,
//! and a second 429 for a client that retries before `Retry-After` has elapsed.

use crate::support::{Emu, TENANT};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Status, headers and JSON body of one answer.
type Answer = (StatusCode, HeaderMap, Value);

const BUSY: &str = "busy@contoso.example";
const CALM: &str = "calm@contoso.example";

/// A cheap Graph read on one mailbox.
fn inbox_path(address: &str) -> String {
    format!("/v1.0/users/{address}/mailFolders/inbox")
}

/// Starts an emulator with the default app and the two mailboxes; returns it and a token.
async fn setup() -> (Emu, String) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, BUSY).await;
    emu.mailbox(TENANT, CALM).await;
    let token = emu.default_token().await;
    (emu, token)
}

/// Checks a throttling answer: 429, decimal `Retry-After` > 0, Graph error envelope.
/// Returns the `Retry-After` seconds.
fn assert_throttled(status: StatusCode, headers: &HeaderMap, body: &Value) -> f64 {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "expected 429, body: {body}");
    let retry_after = headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After; body: {body}"))
        .to_str()
        .expect("Retry-After is ASCII");
    let seconds: f64 = retry_after
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not a decimal number of seconds: {retry_after:?}"));
    assert!(seconds > 0.0, "Retry-After must be positive, got {retry_after:?}");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code: {body}"));
    assert!(
        code == "ApplicationThrottled" || code == "TooManyRequests",
        "unexpected throttling code {code:?}: {body}"
    );
    assert!(body["error"]["message"].is_string(), "no error.message: {body}");
    seconds
}

/// Fires `n` GETs at once for `address`; returns (status, headers, body) of each.
fn fire(emu: &Emu, token: &str, address: &str, n: usize) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| {
            let http = emu.http.clone();
            let url = emu.at(&inbox_path(address));
            let token = token.to_string();
            tokio::spawn(async move {
                let resp = http.get(url).bearer_auth(token).send().await.expect("request sent");
                let status = resp.status();
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await.unwrap_or_default();
                (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
            })
        })
        .collect()
}

async fn collect(handles: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task completes"));
    }
    out
}

/// Counts successes, checks every other answer is a proper throttling 429; returns
/// (successes, throttled, largest Retry-After).
fn tally(results: &[Answer]) -> (usize, usize, f64) {
    let mut ok = 0;
    let mut throttled = 0;
    let mut longest: f64 = 0.0;
    for (status, headers, body) in results {
        if *status == StatusCode::OK {
            ok += 1;
        } else {
            longest = longest.max(assert_throttled(*status, headers, body));
            throttled += 1;
        }
    }
    (ok, throttled, longest)
}

async fn advance_clock(emu: &Emu, secs: f64) {
    let (status, body) = emu
        .post("/_emulator/clock", json!({"advance_secs": secs.ceil() as u64}))
        .await;
    assert_eq!(status, StatusCode::OK, "advance clock: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn four_concurrent_requests_per_app_and_mailbox() {
    let (emu, token) = setup().await;
    emu.settings(json!({"latency_ms": 300})).await;

    let results = collect(fire(&emu, &token, BUSY, 6)).await;
    let (ok, throttled, _) = tally(&results);
    assert_eq!(ok, 4, "exactly four of six concurrent requests pass");
    assert_eq!(throttled, 2, "the other two are throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn another_mailbox_of_the_same_app_is_not_affected() {
    let (emu, token) = setup().await;
    emu.settings(json!({"latency_ms": 300})).await;

    let busy = fire(&emu, &token, BUSY, 6);
    let calm = fire(&emu, &token, CALM, 4);
    let busy = collect(busy).await;
    let calm = collect(calm).await;

    let (ok, throttled, _) = tally(&busy);
    assert_eq!((ok, throttled), (4, 2), "busy mailbox: four pass, two throttled");
    for (status, _, body) in &calm {
        assert_eq!(*status, StatusCode::OK, "the other mailbox is not throttled: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn retrying_before_retry_after_is_throttled_again() {
    let (emu, token) = setup().await;
    // A long Retry-After so that real time cannot make the early retry legal.
    emu.settings(json!({"latency_ms": 300, "throttle_retry_after_secs": 30.5}))
        .await;

    let results = collect(fire(&emu, &token, BUSY, 6)).await;
    let (ok, throttled, retry_after) = tally(&results);
    assert_eq!((ok, throttled), (4, 2));
    assert!(
        (retry_after - 30.5).abs() < 1e-6,
        "Retry-After follows the setting (30.5), got {retry_after}"
    );

    // Nothing else is in flight now: the only reason for a 429 is the early retry.
    let (status, headers, body) = emu.graph_get(&token, &inbox_path(BUSY)).await;
    let again = assert_throttled(status, &headers, &body);

    // Other mailboxes of the same app are not punished.
    let (status, _, body) = emu.graph_get(&token, &inbox_path(CALM)).await;
    assert_eq!(status, StatusCode::OK, "other mailbox: {body}");

    // Honour the Retry-After (on the emulator clock): the request passes.
    advance_clock(&emu, again.max(retry_after) + 1.0).await;
    let (status, _, body) = emu.graph_get(&token, &inbox_path(BUSY)).await;
    assert_eq!(status, StatusCode::OK, "after Retry-After has elapsed: {body}");
}

#[tokio::test]
async fn request_budget_per_window() {
    let (emu, token) = setup().await;
    emu.settings(json!({"throttle_requests": 5, "throttle_window_secs": 600}))
        .await;

    for i in 0..5 {
        let (status, _, body) = emu.graph_get(&token, &inbox_path(BUSY)).await;
        assert_eq!(status, StatusCode::OK, "request {} of the budget: {body}", i + 1);
    }
    let (status, headers, body) = emu.graph_get(&token, &inbox_path(BUSY)).await;
    assert_throttled(status, &headers, &body);

    // The budget is per app + mailbox.
    let (status, _, body) = emu.graph_get(&token, &inbox_path(CALM)).await;
    assert_eq!(status, StatusCode::OK, "other mailbox has its own budget: {body}");

    advance_clock(&emu, 600.0).await;
    let (status, _, body) = emu.graph_get(&token, &inbox_path(BUSY)).await;
    assert_eq!(status, StatusCode::OK, "a new window: {body}");
}
