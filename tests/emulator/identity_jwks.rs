//! Discovery and JWKS: the published keys verify app and delegated tokens.

use serde_json::json;

use crate::support::identity::*;
use crate::support::{CLIENT, Emu};

#[tokio::test]
async fn jwks_verifies_app_and_delegated_tokens() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let keys = jwks(&emu).await;
    let app_token = emu.default_token().await;
    let header = parse_jwt(&app_token).header;
    assert_eq!(header["alg"], "RS256", "access tokens are RS256: {header}");
    assert!(verifies(&app_token, &keys), "JWKS verifies the app-only token");

    // A tampered payload no longer verifies (the check above is real).
    let parts: Vec<&str> = app_token.split('.').collect();
    let mut claims = parse_jwt(&app_token).payload;
    claims["roles"] = json!(["Mail.ReadWrite", "Mail.Send", "Directory.ReadWrite.All"]);
    let forged = format!("{}.{}.{}", parts[0], b64url(claims.to_string().as_bytes()), parts[2]);
    assert!(!verifies(&forged, &keys), "a forged token must not verify");

    let rt = mint_refresh_token(&emu, CLIENT, ADDRESS).await;
    let (status, body) = refresh_grant(&emu, CLIENT, &rt, None).await;
    assert_delegated_token(status, &body, ADDRESS);
    assert!(
        verifies(body["access_token"].as_str().unwrap(), &keys),
        "JWKS verifies the delegated token"
    );

    // JSON Web Keys carry n and e as base64url without padding.
    for key in keys.iter().filter(|k| k["kty"] == "RSA") {
        let n = key["n"].as_str().unwrap();
        assert!(!n.contains(['=', '+', '/']), "n is unpadded base64url: {key}");
    }
}
