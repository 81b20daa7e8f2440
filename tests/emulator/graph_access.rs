//! Graph access-token checks: missing, tampered, expired, role-less, foreign-tenant and
//! delegated tokens.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::graph::*;
use crate::support::{CLIENT, Emu, SECRET, TENANT, status_json};

#[tokio::test]
async fn missing_garbage_or_tampered_token_is_401_with_challenge() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders", user(SUPPORT));

    let none = call(&emu, Method::GET, None, &path, &[], None).await;
    let garbage = gget(&emu, "not-a-jwt", &path).await;
    // Flip one character in the middle of the signature.
    let mut tampered = token.clone().into_bytes();
    let dot = token.rfind('.').unwrap();
    let mid = dot + (token.len() - dot) / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = gget(&emu, &String::from_utf8(tampered).unwrap(), &path).await;

    for resp in [&none, &garbage, &tampered] {
        let code = assert_graph_error(resp, StatusCode::UNAUTHORIZED);
        assert_eq!(code, "InvalidAuthenticationToken");
        let challenge = resp.header("www-authenticate").expect("WWW-Authenticate header on 401");
        assert!(challenge.starts_with("Bearer"), "challenge: {challenge}");
    }
    assert_eq!(
        gget(&emu, &token, &path).await.status,
        StatusCode::OK,
        "the untampered token works"
    );
}

#[tokio::test]
async fn expired_token_is_401() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders/inbox/messages", user(SUPPORT));
    assert_eq!(gget(&emu, &token, &path).await.status, StatusCode::OK);

    let (status, body) = emu.post("/_emulator/clock", json!({"advance_secs": 7200})).await;
    assert_eq!(status, StatusCode::OK, "clock: {body}");

    let resp = gget(&emu, &token, &path).await;
    assert_eq!(
        assert_graph_error(&resp, StatusCode::UNAUTHORIZED),
        "InvalidAuthenticationToken"
    );
    assert!(
        resp.header("www-authenticate").is_some(),
        "WWW-Authenticate on an expired token"
    );

    let fresh = emu.default_token().await;
    assert_eq!(
        gget(&emu, &fresh, &path).await.status,
        StatusCode::OK,
        "a new token works"
    );
}

#[tokio::test]
async fn app_without_mail_roles_is_403() {
    let (emu, _) = setup().await;
    let client = "0d9c8b7a-6f5e-4d3c-8b2a-1f0e9d8c7b6a";
    emu.app(TENANT, client, "no-roles-secret", &[]).await;
    let token = emu.app_token(TENANT, client, "no-roles-secret").await;

    let resp = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(SUPPORT))).await;
    assert_graph_error(&resp, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_of_another_tenant_is_refused() {
    let (emu, token) = setup().await;
    emu.app(
        OTHER_TENANT,
        OTHER_CLIENT,
        OTHER_SECRET,
        &["Mail.ReadWrite", "Mail.Send"],
    )
    .await;
    emu.mailbox(OTHER_TENANT, BOB).await;
    let other = emu.app_token(OTHER_TENANT, OTHER_CLIENT, OTHER_SECRET).await;

    let own = gget(&emu, &other, &format!("{}/mailFolders/inbox/messages", user(BOB))).await;
    assert_eq!(
        own.status,
        StatusCode::OK,
        "the other tenant's app reads its own mailbox: {}",
        own.text
    );

    for (token, mailbox) in [(&other, SUPPORT), (&token, BOB)] {
        let resp = gget(&emu, token, &format!("{}/mailFolders/inbox/messages", user(mailbox))).await;
        assert!(
            resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::FORBIDDEN,
            "cross-tenant read of {mailbox} refused, got {}: {}",
            resp.status,
            resp.text
        );
        assert_graph_error(&resp, resp.status);
    }
}

/// Exchanges an emulator-issued refresh token for a delegated access token of `address`.
async fn delegated_token(emu: &Emu, address: &str) -> String {
    let (status, body) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({
                "tenant_id": TENANT,
                "client_id": CLIENT,
                "address": address,
                "scopes": "offline_access Mail.ReadWrite Mail.Send"
            }),
        )
        .await;
    assert!(status.is_success(), "refresh-tokens: {status} {body}");
    let refresh = body["refresh_token"].as_str().expect("refresh_token").to_string();
    let resp = emu
        .http
        .post(emu.at(&format!("/{TENANT}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "refresh grant: {body}");
    body["access_token"].as_str().expect("access_token").to_string()
}

#[tokio::test]
async fn delegated_token_reads_only_its_own_mailbox() {
    let (emu, _) = setup().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.deliver(SUPPORT, "For support").await;
    emu.deliver(ALICE, "For alice").await;
    let token = delegated_token(&emu, SUPPORT).await;

    for path in [
        "/v1.0/me/mailFolders/inbox/messages".to_string(),
        format!("{}/mailFolders/inbox/messages", user(SUPPORT)),
    ] {
        let resp = gget(&emu, &token, &path).await;
        assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text);
        let subjects: Vec<&str> = resp.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["subject"].as_str())
            .collect();
        assert_eq!(subjects, vec!["For support"], "{path}");
    }
    let me_folders = gget(&emu, &token, "/v1.0/me/mailFolders").await;
    assert_eq!(me_folders.status, StatusCode::OK, "{}", me_folders.text);

    let other = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(ALICE))).await;
    assert_graph_error(&other, StatusCode::FORBIDDEN);
    assert!(!other.text.contains("For alice"));
}
