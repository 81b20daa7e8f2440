//! A routing receiver (webhook sink) that refuses with 422 every message whose subject contains
//! "poison" while `reject` is on, so the daemon quarantines it for real; it accepts the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

/// What it answered so far; `reject` switches the refusal.
#[derive(Default)]
pub struct Receiver {
    /// Refuse poison subjects (on at start).
    pub reject: AtomicBool,
    /// Message events accepted.
    pub accepted: AtomicUsize,
    /// Message events refused.
    pub refused: AtomicUsize,
    /// The text of its refusals (routing's own words end up in the quarantine reason).
    pub refusal: std::sync::Mutex<String>,
}

async fn inbound(State(rx): State<Arc<Receiver>>, body: Bytes) -> (StatusCode, String) {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if event["schema"] != "inboxd.message.v1" {
        return (StatusCode::OK, String::new());
    }
    let poison = event["subject"].as_str().unwrap_or_default().contains("poison");
    if poison && rx.reject.load(Ordering::SeqCst) {
        rx.refused.fetch_add(1, Ordering::SeqCst);
        let text = rx.refusal.lock().unwrap().clone();
        return (StatusCode::UNPROCESSABLE_ENTITY, text);
    }
    rx.accepted.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, String::new())
}

impl Receiver {
    /// Serves on 127.0.0.1; returns it and its URL. `refusal` is the body of its 422s.
    pub async fn serve(refusal: &str) -> (Arc<Receiver>, String) {
        let rx = Arc::new(Receiver {
            reject: AtomicBool::new(true),
            refusal: std::sync::Mutex::new(refusal.to_string()),
            ..Receiver::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/inbound", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/inbound", axum::routing::post(inbound))
            .with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, url)
    }
}

/// `toml` (a generated config) with its file sink swapped for the webhook at `url`.
pub fn with_webhook(env: &crate::support::Env, toml: &str, url: &str) -> String {
    let file_sink = format!("[sink]\ntype = \"file\"\npath = \"{}\"\n", env.events_path().display());
    assert!(toml.contains(&file_sink), "generated config has the file sink");
    toml.replace(
        &file_sink,
        &format!("[sink]\ntype = \"webhook\"\nurl = \"{url}\"\nsigning_secret = \"dev:whsec-ui-test\"\n"),
    )
}
