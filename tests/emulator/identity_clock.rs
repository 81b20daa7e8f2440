//! The emulator clock expires access tokens at Graph, not at the token endpoint.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::identity::*;
use crate::support::{CLIENT, Emu, SECRET, TENANT};

#[tokio::test]
async fn clock_expires_access_tokens_at_graph_not_at_token_endpoint() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    emu.settings(json!({"token_lifetime_secs": 600})).await;
    let old = emu.default_token().await;
    let rt = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let path = format!("/v1.0/users/{ADDRESS}/mailFolders");
    let (status, _, body) = emu.graph_get(&old, &path).await;
    assert_eq!(status, StatusCode::OK, "fresh token works: {body}");

    advance_clock(&emu, 700).await;

    let (status, headers, body) = emu.graph_get(&old, &path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired token: {body}");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken", "{body}");
    let challenge = headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .expect("WWW-Authenticate on 401")
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Bearer"), "WWW-Authenticate: {challenge}");

    // The token endpoint does not care: secrets and refresh tokens still work, and the
    // new token's lifetime is counted from the emulator's (advanced) clock.
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = body["access_token"].as_str().unwrap().to_string();
    let exp = parse_jwt(&fresh).payload["exp"].as_i64().unwrap();
    assert!(
        (exp - (now_unix() + 700 + 600)).abs() <= 10,
        "exp follows the emulator clock: {exp}"
    );
    let (status, _, body) = emu.graph_get(&fresh, &path).await;
    assert_eq!(status, StatusCode::OK, "new token works: {body}");

    advance_clock(&emu, 86_400).await;
    let (status, body) = refresh_grant(&emu, CLIENT, &rt, None).await;
    assert_delegated_token(status, &body, ADDRESS);
}
