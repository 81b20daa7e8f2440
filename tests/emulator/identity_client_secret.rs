//! `client_credentials` with a secret: in the form or by HTTP Basic; token lifetimes.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::identity::*;
use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT, status_json};

#[tokio::test]
async fn client_credentials_secret_in_form() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    let claims = assert_app_token(status, &body, CLIENT);
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!(
        (3600..=5400).contains(&expires_in),
        "default lifetime is 60-90 minutes: {expires_in}"
    );
    assert_eq!(
        body["ext_expires_in"].as_i64(),
        Some(expires_in + 3600),
        "ext_expires_in = expires_in + 3600 by default"
    );
    assert!(
        body.get("refresh_in").is_none(),
        "refresh_in only when configured: {body}"
    );
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(roles.contains(&"Mail.Send"), "roles: {claims}");
}

#[tokio::test]
async fn client_credentials_secret_via_http_basic() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let url = emu.at(&format!("/{TENANT}/oauth2/v2.0/token"));

    // RFC 6749 §2.3.1: credentials only in the Authorization header.
    let resp = emu
        .http
        .post(&url)
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_app_token(status, &body, CLIENT);

    // client_id may also be repeated in the body.
    let resp = emu
        .http
        .post(&url)
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_app_token(status, &body, CLIENT);

    // A wrong secret in Basic is refused like one in the form.
    let resp = emu
        .http
        .post(&url)
        .basic_auth(CLIENT, Some("not-the-secret"))
        .form(&[("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_token_error(status, &body, 401, "invalid_client", Some(7000215));
}

#[tokio::test]
async fn default_lifetime_is_randomised_per_token() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let expires_in = body["expires_in"].as_i64().unwrap();
        assert!((3600..=5400).contains(&expires_in), "60-90 minutes: {expires_in}");
        seen.insert(expires_in);
    }
    assert!(
        seen.len() > 1,
        "ten tokens, one lifetime: {seen:?} (clients must not be able to hard-code it)"
    );
}

#[tokio::test]
async fn configured_token_lifetime_and_refresh_in() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.settings(json!({"token_lifetime_secs": 120})).await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    let claims = assert_app_token(status, &body, CLIENT);
    assert_eq!(body["expires_in"].as_i64(), Some(120), "{body}");
    assert_eq!(body["ext_expires_in"].as_i64(), Some(120 + 3600), "{body}");
    assert!(
        body.get("refresh_in").is_none(),
        "refresh_in absent until configured: {body}"
    );
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - (now_unix() + 120)).abs() <= 10, "exp = now + 120: {claims}");

    emu.settings(json!({"refresh_in_secs": 60, "ext_expires_extra_secs": 0}))
        .await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_app_token(status, &body, CLIENT);
    assert_eq!(body["expires_in"].as_i64(), Some(120), "{body}");
    assert_eq!(body["ext_expires_in"].as_i64(), Some(120), "{body}");
    assert_eq!(body["refresh_in"].as_i64(), Some(60), "{body}");
}
