//! `authorization_code` with PKCE.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::identity::*;
use crate::support::{CLIENT, Emu};

#[tokio::test]
async fn authorization_code_with_pkce_s256() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (code, verifier) = auth_code(&emu).await;
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_delegated_token(status, &body, ADDRESS);
    let keys = jwks(&emu).await;
    assert!(
        verifies(body["access_token"].as_str().unwrap(), &keys),
        "JWKS verifies the token"
    );
    // Its refresh token works.
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let (status, body) = refresh_grant(&emu, CLIENT, &rt, None).await;
    assert_delegated_token(status, &body, ADDRESS);
}

#[tokio::test]
async fn authorization_code_with_pkce_plain() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (verifier, _) = pkce_pair();
    let location = authorize(&emu, &verifier, "plain").await;
    let code = query_param(&location, "code").unwrap_or_else(|| panic!("code in {location}"));
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_delegated_token(status, &body, ADDRESS);
}

#[tokio::test]
async fn authorization_code_wrong_verifier_is_501481() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (code, _) = auth_code(&emu).await;
    let (other_verifier, _) = pkce_pair();
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &other_verifier).await;
    assert_token_error(status, &body, 400, "invalid_grant", Some(501481));
}

#[tokio::test]
async fn authorization_code_redirect_uri_must_match() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (code, verifier) = auth_code(&emu).await;
    let (status, body) = redeem_code(&emu, &code, "http://localhost:8400/other", &verifier).await;
    assert!(
        status == StatusCode::BAD_REQUEST,
        "mismatched redirect_uri: {status} {body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS")),
        "{body}"
    );
    assert!(body["access_token"].is_null(), "{body}");
    assert!(
        ["invalid_grant", "invalid_request", "invalid_client"].contains(&body["error"].as_str().unwrap_or_default()),
        "{body}"
    );
}

#[tokio::test]
async fn authorization_code_reuse_is_54005() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (code, verifier) = auth_code(&emu).await;
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_delegated_token(status, &body, ADDRESS);
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_token_error(status, &body, 400, "invalid_grant", Some(54005));
}

#[tokio::test]
async fn authorization_code_expires_on_the_emulator_clock() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (code, verifier) = auth_code(&emu).await;
    advance_clock(&emu, 700).await;
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_token_error(status, &body, 400, "invalid_grant", None);
    // A fresh code (issued on the advanced clock) still works.
    let (code, verifier) = auth_code(&emu).await;
    let (status, body) = redeem_code(&emu, &code, REDIRECT, &verifier).await;
    assert_delegated_token(status, &body, ADDRESS);
}

#[tokio::test]
async fn authorize_with_consent_denied_redirects_access_denied() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    emu.settings(json!({"consent": "deny"})).await;
    let (_, challenge) = pkce_pair();
    let location = authorize(&emu, &challenge, "S256").await;
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied"),
        "{location}"
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"), "{location}");
    assert!(
        query_param(&location, "code").is_none(),
        "no code when consent is denied: {location}"
    );
}
