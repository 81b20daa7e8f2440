//! The control API for settings and the clock.

use crate::support::control::*;
use crate::support::{Emu, TENANT};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[tokio::test]
async fn settings_defaults_and_partial_updates() {
    let emu = Emu::start().await;
    let (status, settings) = emu.get("/_emulator/settings").await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    let defaults = json!({
        "token_lifetime_secs": null,
        "ext_expires_extra_secs": 3600,
        "refresh_in_secs": null,
        "consent": "allow",
        "delta_page_size": 10,
        "delta_replay": false,
        "delta_max_generations": 16,
        "delta_max_age_secs": null,
        "throttle_concurrency": 4,
        "throttle_requests": 10000,
        "throttle_window_secs": 600,
        "throttle_retry_after_secs": 2.5,
        "latency_ms": 0
    });
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    };
    for (key, expected) in defaults.as_object().unwrap() {
        let actual = settings
            .get(key)
            .unwrap_or_else(|| panic!("settings lack {key}: {settings}"));
        assert!(
            same(actual, expected),
            "default {key}: expected {expected}, got {actual}"
        );
    }

    emu.settings(json!({"latency_ms": 7, "consent": "deny", "throttle_retry_after_secs": 1.25}))
        .await;
    let (_, changed) = emu.get("/_emulator/settings").await;
    for (key, expected) in defaults.as_object().unwrap() {
        let expected = match key.as_str() {
            "latency_ms" => json!(7),
            "consent" => json!("deny"),
            "throttle_retry_after_secs" => json!(1.25),
            _ => expected.clone(),
        };
        assert!(
            same(&changed[key], &expected),
            "after update {key}: expected {expected}, got {}",
            changed[key]
        );
    }
}

#[tokio::test]
async fn clock_moves_forward_only_and_expires_tokens() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.settings(json!({"token_lifetime_secs": 300})).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");

    let before = OffsetDateTime::now_utc();
    let (status, body) = advance_clock(&emu, 3600).await;
    let after = OffsetDateTime::now_utc();
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = rfc3339(&body["now"]);
    let hour = time::Duration::seconds(3600);
    let slack = time::Duration::seconds(1);
    assert!(
        first >= before + hour - slack && first <= after + hour + slack,
        "now {first} ≈ real time + 1 h"
    );

    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the 300 s token expired on the emulator clock: {body}"
    );
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken", "{body}");

    let (status, body) = advance_clock(&emu, 60).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = rfc3339(&body["now"]);
    assert!(
        second >= first + time::Duration::seconds(60) - slack,
        "{second} is a minute after {first}"
    );

    let (status, body) = advance_clock(&emu, -600).await;
    if status.is_success() {
        assert!(rfc3339(&body["now"]) >= second, "the clock never goes back: {body}");
    } else {
        assert!(status.is_client_error(), "{status} {body}");
    }

    // A token issued now lives on the advanced clock.
    let fresh = emu.default_token().await;
    let (status, _, body) = emu.graph_get(&fresh, &inbox).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
