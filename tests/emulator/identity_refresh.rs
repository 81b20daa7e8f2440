//! The `refresh_token` grant: rotation, scope, revocation, MFA and conditional access.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::identity::*;
use crate::support::{CLIENT, Emu, TENANT};

#[tokio::test]
async fn refresh_token_rotates_and_old_one_stays_valid() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let rt0 = mint_refresh_token(&emu, CLIENT, ADDRESS).await;

    let (status, body) = refresh_grant(&emu, CLIENT, &rt0, None).await;
    let claims = assert_delegated_token(status, &body, ADDRESS);
    assert!(scope_has(claims["scp"].as_str().unwrap(), "Mail.Send"), "scp: {claims}");
    let rt1 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt0, "each use returns a new refresh token");

    // The old one is not revoked by the rotation.
    let (status, body) = refresh_grant(&emu, CLIENT, &rt0, None).await;
    assert_delegated_token(status, &body, ADDRESS);
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    assert!(rt2 != rt0 && rt2 != rt1, "another new token");

    // The new one works too, with a subset of the scopes.
    let (status, body) = refresh_grant(&emu, CLIENT, &rt1, Some("offline_access Mail.ReadWrite")).await;
    assert_delegated_token(status, &body, ADDRESS);
}

#[tokio::test]
async fn refresh_token_scope_beyond_grant_is_65001() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let rt = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let (status, body) = refresh_grant(
        &emu,
        CLIENT,
        &rt,
        Some("offline_access Mail.ReadWrite Calendars.ReadWrite"),
    )
    .await;
    assert_token_error(status, &body, 400, "invalid_grant", Some(65001));
    // The token itself is fine.
    let (status, body) = refresh_grant(&emu, CLIENT, &rt, None).await;
    assert_delegated_token(status, &body, ADDRESS);
}

/// Mints rt0, rotates it to rt1, revokes with `code`; returns both failures' bodies.
async fn revoked_case(code: u64) -> Vec<(StatusCode, Value)> {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let rt0 = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let (status, body) = refresh_grant(&emu, CLIENT, &rt0, None).await;
    assert_delegated_token(status, &body, ADDRESS);
    let rt1 = body["refresh_token"].as_str().unwrap().to_string();
    post_ok(&emu, "/_emulator/revoke", json!({"address": ADDRESS, "aadsts": code})).await;
    let mut out = Vec::new();
    for rt in [&rt0, &rt1] {
        let (status, body) = refresh_grant(&emu, CLIENT, rt, None).await;
        assert_eq!(body["error_codes"], json!([code]), "error_codes: {body}");
        assert!(
            body["access_token"].is_null() && body["refresh_token"].is_null(),
            "{body}"
        );
        out.push((status, body));
    }
    out
}

#[tokio::test]
async fn revoked_refresh_token_50173() {
    for (status, body) in revoked_case(50173).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(50173));
    }
}

#[tokio::test]
async fn revoked_refresh_token_70008() {
    for (status, body) in revoked_case(70008).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(70008));
    }
}

#[tokio::test]
async fn revoked_refresh_token_700082() {
    for (status, body) in revoked_case(700082).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(700082));
    }
}

/// `claims` is a JSON string holding a JSON object.
fn assert_claims_string(body: &Value) {
    let claims = body["claims"]
        .as_str()
        .unwrap_or_else(|| panic!("claims is a string: {body}"));
    let parsed: Value = serde_json::from_str(claims).unwrap_or_else(|e| panic!("claims is JSON ({e}): {claims}"));
    assert!(parsed.is_object(), "claims is a JSON object: {claims}");
}

#[tokio::test]
async fn mfa_required_50076_is_invalid_grant_basic_action() {
    for (status, body) in revoked_case(50076).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(50076));
        assert_eq!(body["suberror"], "basic_action", "{body}");
        assert_claims_string(&body);
    }
}

#[tokio::test]
async fn mfa_enrollment_50079_is_interaction_required() {
    for (status, body) in revoked_case(50079).await {
        assert_token_error(status, &body, 400, "interaction_required", Some(50079));
        assert_claims_string(&body);
    }
}

#[tokio::test]
async fn conditional_access_53003_is_invalid_grant_message_only() {
    for (status, body) in revoked_case(53003).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(53003));
        assert_eq!(body["suberror"], "message_only", "{body}");
    }
}

#[tokio::test]
async fn consent_missing_65001_is_invalid_grant() {
    for (status, body) in revoked_case(65001).await {
        assert_token_error(status, &body, 400, "invalid_grant", Some(65001));
    }
}

#[tokio::test]
async fn revoke_by_client_only_affects_that_client() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    register_app(&emu, CLIENT2).await;
    let mine = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let theirs = mint_refresh_token(&emu, CLIENT2, ADDRESS).await;
    post_ok(
        &emu,
        "/_emulator/revoke",
        json!({"client_id": CLIENT2, "aadsts": 50173}),
    )
    .await;
    let (status, body) = refresh_grant(&emu, CLIENT2, &theirs, None).await;
    assert_token_error(status, &body, 400, "invalid_grant", Some(50173));
    let (status, body) = refresh_grant(&emu, CLIENT, &mine, None).await;
    assert_delegated_token(status, &body, ADDRESS);
}

#[tokio::test]
async fn revoke_by_address_only_affects_that_user() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    emu.mailbox(TENANT, ADDRESS2).await;
    let first = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let second = mint_refresh_token(&emu, CLIENT, ADDRESS2).await;
    post_ok(&emu, "/_emulator/revoke", json!({"address": ADDRESS, "aadsts": 70008})).await;
    let (status, body) = refresh_grant(&emu, CLIENT, &first, None).await;
    assert_token_error(status, &body, 400, "invalid_grant", Some(70008));
    let (status, body) = refresh_grant(&emu, CLIENT, &second, None).await;
    assert_delegated_token(status, &body, ADDRESS2);
}

#[tokio::test]
async fn refresh_token_of_another_client_is_refused() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    register_app(&emu, CLIENT2).await;
    let rt = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let (status, body) = refresh_grant(&emu, CLIENT2, &rt, None).await;
    assert_token_error(status, &body, 400, "invalid_grant", None);
    let (status, body) = refresh_grant(&emu, CLIENT, "not-a-refresh-token", None).await;
    assert_token_error(status, &body, 400, "invalid_grant", None);
}
