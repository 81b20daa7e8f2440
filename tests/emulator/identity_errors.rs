//! Token-endpoint error bodies (with their AADSTS codes), tenants by domain, and
//! `temporarily_unavailable`.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::identity::*;
use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT};

#[tokio::test]
async fn wrong_secret_is_invalid_client_7000215() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, "wrong-secret").await;
    assert_token_error(status, &body, 401, "invalid_client", Some(7000215));
    assert!(body["access_token"].is_null(), "{body}");
}

#[tokio::test]
async fn expired_secret_is_invalid_client_7000222() {
    let emu = Emu::start().await;
    emu.default_app().await;
    post_ok(
        &emu,
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"expired": true}),
    )
    .await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_token_error(status, &body, 401, "invalid_client", Some(7000222));
}

#[tokio::test]
async fn rotated_secret_old_fails_new_works() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let new_secret = "rotated~secret.value-2";
    post_ok(
        &emu,
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": new_secret}),
    )
    .await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_token_error(status, &body, 401, "invalid_client", Some(7000215));
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, new_secret).await;
    assert_app_token(status, &body, CLIENT);
}

#[tokio::test]
async fn unknown_client_is_unauthorized_client_700016() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, body) = secret_grant(&emu, TENANT, CLIENT2, SECRET).await;
    assert_token_error(status, &body, 400, "unauthorized_client", Some(700016));
}

#[tokio::test]
async fn unknown_tenant_is_90002() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ADDRESS).await;
    for tenant in [OTHER_TENANT, "fabrikam.test"] {
        let (status, body) = secret_grant(&emu, tenant, CLIENT, SECRET).await;
        let error = body["error"].as_str().unwrap_or_default().to_string();
        assert!(
            ["invalid_request", "invalid_tenant", "unauthorized_client"].contains(&error.as_str()),
            "unknown tenant {tenant}: {body}"
        );
        assert_token_error(status, &body, 400, &error, Some(90002));
    }
}

#[tokio::test]
async fn bad_scope_is_invalid_scope() {
    let emu = Emu::start().await;
    emu.default_app().await;
    // A delegated permission name is not `{resource}/.default`.
    for scope in ["Mail.Read", "https://graph.microsoft.com/Mail.Read"] {
        let (status, _, body) = emu
            .token_request(
                TENANT,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT),
                    ("client_secret", SECRET),
                    ("scope", scope),
                ],
            )
            .await;
        assert_token_error(status, &body, 400, "invalid_scope", Some(70011));
    }
    // Two resources in one request.
    let two = format!("{GRAPH_SCOPE} https://outlook.office.com/.default");
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("scope", &two),
            ],
        )
        .await;
    let code = body["error_codes"][0].as_u64().unwrap_or_default();
    assert!(
        code == 70011 || code == 700022,
        "two resources: 70011 or 700022: {body}"
    );
    assert_token_error(status, &body, 400, "invalid_scope", Some(code));
}

#[tokio::test]
async fn missing_credentials_is_invalid_client_7000218() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("scope", GRAPH_SCOPE),
            ],
        )
        .await;
    assert_token_error(status, &body, 401, "invalid_client", Some(7000218));
}

#[tokio::test]
async fn missing_parameter_is_invalid_request_900144() {
    let emu = Emu::start().await;
    emu.default_app().await;
    // No scope.
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
            ],
        )
        .await;
    assert_token_error(status, &body, 400, "invalid_request", Some(900144));
    // No grant_type.
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[("client_id", CLIENT), ("client_secret", SECRET), ("scope", GRAPH_SCOPE)],
        )
        .await;
    assert_token_error(status, &body, 400, "invalid_request", Some(900144));
}

#[tokio::test]
async fn unknown_grant_type_is_unsupported_grant_type() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "urn:example:not-a-grant"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("scope", GRAPH_SCOPE),
            ],
        )
        .await;
    assert_token_error(status, &body, 400, "unsupported_grant_type", None);
}

#[tokio::test]
async fn tenant_may_be_a_mailbox_domain() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ADDRESS).await;
    let (status, body) = secret_grant(&emu, "contoso.test", CLIENT, SECRET).await;
    let claims = assert_app_token(status, &body, CLIENT);
    assert_eq!(claims["tid"], TENANT, "the domain resolves to the tenant GUID");

    // A domain of another tenant: the app is not registered there.
    emu.mailbox(OTHER_TENANT, "info@fabrikam.test").await;
    let (status, body) = secret_grant(&emu, "fabrikam.test", CLIENT, SECRET).await;
    assert_token_error(status, &body, 400, "unauthorized_client", Some(700016));
}

#[tokio::test]
async fn temporarily_unavailable_fault_then_success() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, rule) = emu
        .post(
            "/_emulator/faults",
            json!({
                "path_prefix": format!("/{TENANT}/oauth2"),
                "oauth_error": "temporarily_unavailable",
                "status": 503,
                "times": 1,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "fault rule: {rule}");
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(body["access_token"].is_null(), "{body}");
    let (status, body) = secret_grant(&emu, TENANT, CLIENT, SECRET).await;
    assert_app_token(status, &body, CLIENT);
}
