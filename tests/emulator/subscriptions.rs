//! Change-notification subscriptions: the handshake, lifetime limits, delivery and retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::support::{CLIENT, Emu, SECRET, TENANT};

/// How the test's notification endpoint behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// As documented: the decoded token, text/plain; notifications 202.
    Good,
    /// Echoes the token still URL-encoded.
    Encoded,
    /// Never answers: only the emulator's own timeout can end its wait.
    Slow,
    /// Handshakes fine; the first notification POST is never answered, later ones at once.
    SlowOnce,
}

#[derive(Clone)]
struct Receiver {
    mode: Mode,
    /// Notification bodies received (handshakes not included).
    got: Arc<Mutex<Vec<Value>>>,
}

async fn endpoint(
    State(r): State<Receiver>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Some(token) = q.get("validationToken") {
        if r.mode == Mode::Slow {
            // The emulator drops the request when its timeout ends, and this future with it.
            std::future::pending::<()>().await;
        }
        let answer = if r.mode == Mode::Encoded {
            uri.query()
                .unwrap_or_default()
                .trim_start_matches("validationToken=")
                .to_string()
        } else {
            token.clone()
        };
        return (StatusCode::OK, [("content-type", "text/plain")], answer).into_response();
    }
    let first = {
        let mut got = r.got.lock().unwrap();
        got.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        got.len() == 1
    };
    if r.mode == Mode::Slow || (r.mode == Mode::SlowOnce && first) {
        std::future::pending::<()>().await;
    }
    StatusCode::ACCEPTED.into_response()
}

/// Serves the endpoint on a loopback port; returns its URL and what it received.
async fn receiver(mode: Mode) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(endpoint))
        .with_state(Receiver { mode, got: got.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn setup() -> (Emu, String) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, "sub@contoso.test").await;
    let token = emu.app_token(TENANT, CLIENT, SECRET).await;
    (emu, token)
}

fn in_minutes(minutes: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn request(url: &str, minutes: i64) -> Value {
    json!({
        "changeType": "created", "notificationUrl": url, "lifecycleNotificationUrl": url,
        "resource": "users/sub@contoso.test/mailFolders('inbox')/messages",
        "expirationDateTime": in_minutes(minutes), "clientState": "secret-state",
    })
}

async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test]
async fn a_subscription_needs_a_handshake_and_a_lifetime_within_the_cap() {
    let (emu, token) = setup().await;
    let (encoded, _) = receiver(Mode::Encoded).await;
    let (status, _, body) = emu
        .graph_post(&token, "/v1.0/subscriptions", request(&encoded, 60))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "ValidationError");

    let (slow, _) = receiver(Mode::Slow).await;
    emu.post(
        "/_emulator/subscriptions/settings",
        json!({"validation_timeout_ms": 300}),
    )
    .await;
    let (status, _, body) = emu.graph_post(&token, "/v1.0/subscriptions", request(&slow, 60)).await;
    assert_eq!(status, 400, "a slow handshake fails the create: {body}");

    let (good, _) = receiver(Mode::Good).await;
    let (status, _, body) = emu
        .graph_post(&token, "/v1.0/subscriptions", request(&good, 5000))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "Subscription expiration can only be 4230 minutes in the future."
    );
    emu.post("/_emulator/subscriptions/settings", json!({"max_minutes": 100}))
        .await;
    let (_, _, body) = emu.graph_post(&token, "/v1.0/subscriptions", request(&good, 101)).await;
    assert_eq!(
        body["error"]["message"],
        "Subscription expiration can only be 100 minutes in the future."
    );
    let (status, _, body) = emu.graph_post(&token, "/v1.0/subscriptions", request(&good, 10)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["clientState"], "secret-state");
    let expires = time::OffsetDateTime::parse(
        body["expirationDateTime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        expires - time::OffsetDateTime::now_utc() > time::Duration::minutes(44),
        "lifetimes under 45 minutes are raised to 45"
    );

    let (status, _, _) = emu
        .graph_post(
            &token,
            "/v1.0/subscriptions",
            json!({"changeType": "created", "notificationUrl": "http://example.com/hook",
                   "resource": "users/sub@contoso.test/messages", "expirationDateTime": in_minutes(60)}),
        )
        .await;
    assert_eq!(status, 400, "plain http is refused off loopback");
}

#[tokio::test]
async fn new_mail_is_notified_and_a_slow_endpoint_gets_it_again() {
    let (emu, token) = setup().await;
    emu.post(
        "/_emulator/subscriptions/settings",
        json!({"delivery_delay_ms": 0, "notification_timeout_ms": 500, "retry_delay_ms": 100}),
    )
    .await;
    let (url, got) = receiver(Mode::SlowOnce).await;
    let (status, _, sub) = emu.graph_post(&token, "/v1.0/subscriptions", request(&url, 60)).await;
    assert_eq!(status, 201, "{sub}");
    emu.deliver("sub@contoso.test", "hello").await;
    assert!(
        wait_until(Duration::from_secs(20), || got.lock().unwrap().len() >= 2).await,
        "the slow first delivery was not retried"
    );
    let first = got.lock().unwrap()[0].clone();
    let item = &first["value"][0];
    assert_eq!(item["subscriptionId"], sub["id"]);
    assert_eq!(item["clientState"], "secret-state");
    assert_eq!(item["changeType"], "created");
    assert_eq!(item["resourceData"]["@odata.type"], "#Microsoft.Graph.Message");
    let (_, log) = emu.get("/_emulator/notifications").await;
    let attempts: Vec<Value> = log["notifications"].as_array().unwrap().clone();
    assert_eq!(attempts[0]["error"], "timeout", "{log}");
    assert!(
        attempts.iter().any(|a| a["attempt"] == 2 && a["status"] == 202),
        "{log}"
    );

    // A lifecycle event on demand; subscriptionRemoved takes the subscription away.
    let id = sub["id"].as_str().unwrap();
    let (status, _) = emu
        .post(
            &format!("/_emulator/subscriptions/{id}/lifecycle"),
            json!({"event": "subscriptionRemoved"}),
        )
        .await;
    assert_eq!(status, 202);
    assert!(
        wait_until(Duration::from_secs(20), || {
            got.lock()
                .unwrap()
                .iter()
                .any(|b| b["value"][0]["lifecycleEvent"] == "subscriptionRemoved")
        })
        .await
    );
    let (status, _, _) = emu.graph_get(&token, &format!("/v1.0/subscriptions/{id}")).await;
    assert_eq!(status, 404);
}
