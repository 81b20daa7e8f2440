//! The control API for identities: apps, refresh tokens, revocation, secrets, access
//! policies and roles.

use crate::support::control::*;
use crate::support::{CLIENT, Emu, SECRET, TENANT};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn apps_register_and_issue_tokens() {
    let emu = Emu::start().await;
    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                   "roles": ["Mail.ReadWrite", "Mail.Send"], "display_name": "Contoso daemon"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["client_id"], CLIENT, "{body}");

    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].is_string());

    let (status, body) = secret_request(&emu, "00000000-0000-0000-0000-00000000beef", SECRET).await;
    assert_ne!(status, StatusCode::OK, "an unregistered app gets no token: {body}");
}

#[tokio::test]
async fn refresh_tokens_redeem_for_delegated_access() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;

    let refresh_token = issue_refresh_token(&emu, ALICE).await;
    let (status, body) = refresh_request(&emu, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["scope"].is_string(), "delegated answers carry scope: {body}");
    let rotated = body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a new refresh token: {body}"))
        .to_string();
    let access = body["access_token"].as_str().unwrap().to_string();

    let (status, _, inbox) = emu.graph_get(&access, "/v1.0/me/mailFolders/inbox").await;
    assert_eq!(status, StatusCode::OK, "delegated token reads /me: {inbox}");

    // Rotation keeps the old one valid (Entra keeps it until it expires), and the new one works.
    for token in [&refresh_token, &rotated] {
        let (status, body) = refresh_request(&emu, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn revoke_refresh_tokens() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    let alice = issue_refresh_token(&emu, ALICE).await;
    let bob = issue_refresh_token(&emu, BOB).await;

    let (status, body) = emu
        .post("/_emulator/revoke", json!({"address": ALICE, "aadsts": 50173}))
        .await;
    assert!(status.is_success(), "revoke: {status} {body}");
    let (status, body) = refresh_request(&emu, &alice).await;
    assert_aadsts(status, &body, StatusCode::BAD_REQUEST, "invalid_grant", 50173);
    let (status, body) = refresh_request(&emu, &bob).await;
    assert_eq!(status, StatusCode::OK, "another user's token still works: {body}");

    let (status, body) = emu
        .post("/_emulator/revoke", json!({"client_id": CLIENT, "aadsts": 700082}))
        .await;
    assert!(status.is_success(), "revoke: {status} {body}");
    let (status, body) = refresh_request(&emu, &bob).await;
    assert_aadsts(status, &body, StatusCode::BAD_REQUEST, "invalid_grant", 700082);
}

#[tokio::test]
async fn secret_expired_and_rotated() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let other = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
    emu.app(TENANT, other, "old-secret", &["Mail.ReadWrite"]).await;

    let (status, body) = emu
        .post(&format!("/_emulator/apps/{CLIENT}/secret"), json!({"expired": true}))
        .await;
    assert!(status.is_success(), "expire: {status} {body}");
    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert_aadsts(status, &body, StatusCode::UNAUTHORIZED, "invalid_client", 7000222);

    let (status, body) = emu
        .post(
            &format!("/_emulator/apps/{other}/secret"),
            json!({"rotate_to": "new-secret"}),
        )
        .await;
    assert!(status.is_success(), "rotate: {status} {body}");
    let (status, body) = secret_request(&emu, other, "new-secret").await;
    assert_eq!(status, StatusCode::OK, "the new secret works: {body}");
    let (status, body) = secret_request(&emu, other, "old-secret").await;
    assert_aadsts(status, &body, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
}

#[tokio::test]
async fn access_deny_blocks_app_only_calls() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{ALICE}/access"), json!({"deny": true}))
        .await;
    assert!(status.is_success(), "deny: {status} {body}");
    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Access to OData is disabled")),
        "{body}"
    );
    let (status, _, body) = emu
        .graph_get(&token, &format!("/v1.0/users/{BOB}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK, "other mailboxes are not denied: {body}");

    // Delegated access is not an application access policy matter.
    let refresh_token = issue_refresh_token(&emu, ALICE).await;
    let (status, body) = refresh_request(&emu, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delegated = body["access_token"].as_str().unwrap();
    let (status, _, body) = emu.graph_get(delegated, "/v1.0/me/mailFolders/inbox").await;
    assert_eq!(status, StatusCode::OK, "delegated calls are unaffected: {body}");

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{ALICE}/access"), json!({"deny": false}))
        .await;
    assert!(status.is_success(), "allow: {status} {body}");
    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(status, StatusCode::OK, "lifted: {body}");
}

#[tokio::test]
async fn an_access_policy_denial_uses_the_documented_wording_and_rbac_its_own() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");
    for (via, message) in [
        (json!("policy"), "Access to OData is disabled."),
        (
            json!("rbac"),
            "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
        ),
    ] {
        let (status, body) = emu
            .post(
                &format!("/_emulator/mailboxes/{ALICE}/access"),
                json!({"deny": true, "via": via}),
            )
            .await;
        assert!(status.is_success(), "deny via {via}: {status} {body}");
        let (status, _, body) = emu.graph_get(&token, &inbox).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
        assert_eq!(body["error"]["message"], message, "{body}");
    }
    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{ALICE}/access"),
            json!({"deny": true, "via": "firewall"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn changed_roles_reach_tokens_issued_afterwards() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    let before = emu.default_token().await;
    let (status, body) = emu
        .post(
            &format!("/_emulator/apps/{CLIENT}/roles"),
            json!({"roles": "Mail.Read"}),
        )
        .await;
    assert!(status.is_success(), "roles: {status} {body}");
    assert_eq!(body["roles"], json!(["Mail.Read"]), "{body}");
    let after = emu.default_token().await;
    let roles = |token: &str| -> Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["roles"].clone()
    };
    assert_eq!(roles(&after), json!(["Mail.Read"]));
    // Reading still works; writing needs Mail.ReadWrite, which the new token lacks.
    let (status, _, _) = emu
        .graph_get(&after, &format!("/v1.0/users/{ALICE}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let draft = json!({"subject": "x"});
    let (status, _, body) = emu
        .graph_post(&after, &format!("/v1.0/users/{ALICE}/messages"), draft.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A token issued before the change keeps its roles until it expires, as in Entra.
    let (status, _, body) = emu
        .graph_post(&before, &format!("/v1.0/users/{ALICE}/messages"), draft)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = emu
        .post("/_emulator/apps/no-such-app/roles", json!({"roles": []}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
