//! Helpers of the identity-platform tests: token requests by grant, JWTs, certificate
//! assertions, PKCE and the authorization code.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair, RsaPublicKeyComponents, RsaSignatureEncoding};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT};

/// A second app in TENANT.
pub const CLIENT2: &str = "9f3c2d1e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
/// An app that authenticates with a certificate.
pub const CERT_CLIENT: &str = "2c8e4a16-7b3d-4f5e-9a0c-1d2e3f4a5b6c";
/// A tenant the emulator does not know (unless a test creates it).
pub const OTHER_TENANT: &str = "0b9d6c4e-2f1a-4e3d-8c5b-7a6f5e4d3c2b";
/// The mailbox of the delegated flows; its domain names TENANT.
pub const ADDRESS: &str = "support@contoso.test";
/// A second mailbox of TENANT.
pub const ADDRESS2: &str = "sales@contoso.test";
/// The redirect URI of the authorization-code app.
pub const REDIRECT: &str = "http://localhost:8400/callback";
/// The delegated scopes granted to refresh tokens minted through the control API.
pub const DELEGATED: &str = "offline_access Mail.ReadWrite Mail.Send";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64url(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("{text:?} is not base64url: {e}"))
}

/// A decoded compact JWS.
pub struct Jwt {
    pub header: Value,
    pub payload: Value,
    pub signing_input: String,
    pub signature: Vec<u8>,
}

pub fn parse_jwt(token: &str) -> Jwt {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS has three parts: {token}");
    let header = serde_json::from_slice(&unb64url(parts[0])).expect("JWT header is JSON");
    let payload = serde_json::from_slice(&unb64url(parts[1])).expect("JWT payload is JSON");
    Jwt {
        header,
        payload,
        signing_input: format!("{}.{}", parts[0], parts[1]),
        signature: unb64url(parts[2]),
    }
}

/// client_credentials with the secret in the form.
pub async fn secret_grant(emu: &Emu, tenant: &str, client: &str, secret: &str) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .token_request(
            tenant,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret),
                ("scope", GRAPH_SCOPE),
            ],
        )
        .await;
    (status, body)
}

/// client_credentials with a client assertion.
pub async fn assertion_grant(emu: &Emu, client: &str, assertion: &str) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
                ("scope", GRAPH_SCOPE),
            ],
        )
        .await;
    (status, body)
}

/// refresh_token grant with the default app's secret; `scope` is optional.
pub async fn refresh_grant(emu: &Emu, client: &str, refresh_token: &str, scope: Option<&str>) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client),
        ("client_secret", SECRET),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let (status, _, body) = emu.token_request(TENANT, &form).await;
    (status, body)
}

/// Mints a delegated refresh token through the control API.
pub async fn mint_refresh_token(emu: &Emu, client: &str, address: &str) -> String {
    let (status, body) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({"tenant_id": TENANT, "client_id": client, "address": address, "scopes": DELEGATED}),
        )
        .await;
    assert!(status.is_success(), "mint refresh token: {status} {body}");
    body["refresh_token"]
        .as_str()
        .expect("refresh_token in answer")
        .to_string()
}

/// Registers an app with a secret and the test redirect URI.
pub async fn register_app(emu: &Emu, client: &str) {
    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({
                "tenant_id": TENANT,
                "client_id": client,
                "client_secret": SECRET,
                "roles": ["Mail.ReadWrite", "Mail.Send"],
                "redirect_uris": [REDIRECT],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "register app: {body}");
}

/// Default app (with redirect URI) and the delegated user's mailbox.
pub async fn delegated_setup(emu: &Emu) {
    register_app(emu, CLIENT).await;
    emu.mailbox(TENANT, ADDRESS).await;
}

pub async fn post_ok(emu: &Emu, path: &str, body: Value) -> Value {
    let (status, answer) = emu.post(path, body).await;
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

pub async fn advance_clock(emu: &Emu, secs: u64) {
    let answer = post_ok(emu, "/_emulator/clock", json!({"advance_secs": secs})).await;
    assert!(answer["now"].is_string(), "clock answer: {answer}");
}

pub fn assert_aad_timestamp(text: &str) {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    assert_eq!(text.len(), 20, "timestamp {text:?} is YYYY-MM-DD hh:mm:ssZ");
    time::PrimitiveDateTime::parse(text, &format)
        .unwrap_or_else(|e| panic!("timestamp {text:?} is not YYYY-MM-DD hh:mm:ssZ: {e}"));
}

/// Checks the documented token-endpoint error body (Entra's error reference). With `code` None any
/// AADSTS code is accepted (the first of `error_codes` is checked against the text).
pub fn assert_token_error(status: StatusCode, body: &Value, want_status: u16, want_error: &str, code: Option<u64>) {
    assert_eq!(status.as_u16(), want_status, "HTTP status; body: {body}");
    assert_eq!(body["error"], want_error, "error; body: {body}");
    let codes: Vec<u64> = body["error_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("error_codes is an array: {body}"))
        .iter()
        .map(|c| c.as_u64().expect("error_codes holds integers"))
        .collect();
    assert!(!codes.is_empty(), "error_codes is not empty: {body}");
    let code = code.unwrap_or(codes[0]);
    assert!(codes.contains(&code), "error_codes contains {code}: {body}");

    let desc = body["error_description"]
        .as_str()
        .expect("error_description is a string");
    assert!(
        desc.starts_with(&format!("AADSTS{code}:")),
        "error_description starts with AADSTS{code}: {desc:?}"
    );
    const TRACE: &str = "\r\nTrace ID: ";
    const CORRELATION: &str = "\r\nCorrelation ID: ";
    const STAMP: &str = "\r\nTimestamp: ";
    let trace_at = desc.find(TRACE).unwrap_or_else(|| panic!("Trace ID line in {desc:?}"));
    let corr_at = desc
        .find(CORRELATION)
        .unwrap_or_else(|| panic!("Correlation ID line in {desc:?}"));
    let stamp_at = desc.find(STAMP).unwrap_or_else(|| panic!("Timestamp line in {desc:?}"));
    assert!(trace_at < corr_at && corr_at < stamp_at, "line order in {desc:?}");
    let trace = &desc[trace_at + TRACE.len()..corr_at];
    let correlation = &desc[corr_at + CORRELATION.len()..stamp_at];
    let stamp = &desc[stamp_at + STAMP.len()..];
    assert_aad_timestamp(stamp);

    let timestamp = body["timestamp"].as_str().expect("timestamp is a string");
    assert_aad_timestamp(timestamp);
    assert_eq!(stamp, timestamp, "description and field carry the same timestamp");
    let trace_id = body["trace_id"].as_str().expect("trace_id is a string");
    let correlation_id = body["correlation_id"].as_str().expect("correlation_id is a string");
    uuid::Uuid::parse_str(trace_id).expect("trace_id is a GUID");
    uuid::Uuid::parse_str(correlation_id).expect("correlation_id is a GUID");
    assert_eq!(trace, trace_id, "Trace ID line matches trace_id");
    assert_eq!(
        correlation, correlation_id,
        "Correlation ID line matches correlation_id"
    );
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}"),
        "error_uri: {body}"
    );
}

/// Checks a client_credentials success body and returns the access token's payload.
pub fn assert_app_token(status: StatusCode, body: &Value, client: &str) -> Value {
    assert_eq!(status, StatusCode::OK, "token: {body}");
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let expires_in = body["expires_in"].as_i64().expect("expires_in is an integer");
    assert!(expires_in > 0, "{body}");
    assert!(
        body["ext_expires_in"].as_i64().is_some(),
        "ext_expires_in is an integer: {body}"
    );
    assert!(
        body.get("refresh_token").is_none(),
        "client_credentials never returns a refresh token: {body}"
    );
    let jwt = parse_jwt(body["access_token"].as_str().expect("access_token is a string"));
    let claims = jwt.payload;
    assert_eq!(claims["tid"], TENANT, "tid: {claims}");
    assert!(
        claims["appid"] == client || claims["azp"] == client,
        "appid or azp is the client: {claims}"
    );
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .expect("roles is an array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(roles.contains(&"Mail.ReadWrite"), "roles: {claims}");
    let exp = claims["exp"].as_i64().expect("exp is a number");
    assert!(
        (exp - (now_unix() + expires_in)).abs() <= 30,
        "exp matches expires_in: exp {exp}, expires_in {expires_in}"
    );
    claims
}

/// True when a space-separated scope list has `name` (short or resource-qualified).
pub fn scope_has(scopes: &str, name: &str) -> bool {
    scopes.split_whitespace().any(|s| {
        s.eq_ignore_ascii_case(name)
            || s.to_ascii_lowercase()
                .ends_with(&format!("/{}", name.to_ascii_lowercase()))
    })
}

/// The delegated user of an access token is `address`.
pub fn assert_user(claims: &Value, address: &str) {
    let names = ["upn", "preferred_username", "unique_name", "email"];
    assert!(
        names
            .iter()
            .any(|n| claims[*n].as_str().is_some_and(|v| v.eq_ignore_ascii_case(address))),
        "token names the user {address}: {claims}"
    );
}

/// Checks a delegated success body and returns the access token's payload.
pub fn assert_delegated_token(status: StatusCode, body: &Value, address: &str) -> Value {
    assert_eq!(status, StatusCode::OK, "token: {body}");
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert!(body["expires_in"].as_i64().is_some_and(|s| s > 0), "{body}");
    let scope = body["scope"].as_str().expect("delegated responses carry scope");
    assert!(scope_has(scope, "Mail.ReadWrite"), "scope: {scope}");
    assert!(
        body["refresh_token"].as_str().is_some_and(|t| !t.is_empty()),
        "refresh_token: {body}"
    );
    let claims = parse_jwt(body["access_token"].as_str().expect("access_token")).payload;
    assert_eq!(claims["tid"], TENANT, "tid: {claims}");
    let scp = claims["scp"].as_str().expect("delegated token has scp");
    assert!(scope_has(scp, "Mail.ReadWrite"), "scp: {claims}");
    assert_user(&claims, address);
    claims
}

pub struct TestCert {
    pub key: rcgen::KeyPair,
    pub cert: rcgen::Certificate,
}

pub fn new_cert() -> TestCert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["app".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    TestCert { key, cert }
}

#[derive(Clone, Copy)]
pub enum Alg {
    /// Current doc: PS256 with `x5t#S256`.
    Ps256,
    /// Older doc: RS256 with `x5t` (SHA-1).
    Rs256,
}

/// Builds a client assertion for `cert`'s thumbprint, signed with `signer`.
pub fn assertion(signer: &rcgen::KeyPair, cert: &rcgen::Certificate, alg: Alg, claims: &Value) -> String {
    let der: &[u8] = cert.der().as_ref();
    let header = match alg {
        Alg::Ps256 => {
            json!({"alg": "PS256", "typ": "JWT", "x5t#S256": b64url(digest::digest(&digest::SHA256, der).as_ref())})
        }
        Alg::Rs256 => json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": b64url(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
        }),
    };
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let pair = RsaKeyPair::from_pkcs8(&signer.serialize_der()).expect("PKCS#8 RSA key");
    let mut sig = vec![0; pair.public_modulus_len()];
    let padding: &'static RsaSignatureEncoding = match alg {
        Alg::Ps256 => &signature::RSA_PSS_SHA256,
        Alg::Rs256 => &signature::RSA_PKCS1_SHA256,
    };
    pair.sign(padding, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .expect("sign");
    format!("{input}.{}", b64url(&sig))
}

/// The emulator's own token URL (the authority host is the emulator).
pub fn own_audience(emu: &Emu) -> String {
    format!("{}/{TENANT}/oauth2/v2.0/token", emu.url)
}

pub fn assertion_claims(aud: &str, iss: &str, sub: &str, nbf: i64, exp: i64) -> Value {
    json!({
        "aud": aud,
        "iss": iss,
        "sub": sub,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": nbf,
        "iat": nbf,
        "exp": exp,
    })
}

pub fn good_claims(aud: &str) -> Value {
    let now = now_unix();
    assertion_claims(aud, CERT_CLIENT, CERT_CLIENT, now - 5, now + 600)
}

/// Registers CERT_CLIENT with a fresh certificate; returns it.
pub async fn cert_app(emu: &Emu) -> TestCert {
    let cert = new_cert();
    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({
                "tenant_id": TENANT,
                "client_id": CERT_CLIENT,
                "certificate_pem": cert.cert.pem(),
                "roles": ["Mail.ReadWrite", "Mail.Send"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "register certificate app: {body}");
    cert
}

/// A refused assertion: `invalid_client` with some AADSTS code (400 or 401).
pub fn assert_assertion_refused(status: StatusCode, body: &Value) {
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED,
        "refused: {status} {body}"
    );
    assert_eq!(body["error"], "invalid_client", "{body}");
    let desc = body["error_description"].as_str().unwrap_or_default();
    assert!(desc.starts_with("AADSTS"), "error_description: {body}");
    assert!(body["access_token"].is_null(), "{body}");
}

pub fn pkce_pair() -> (String, String) {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = b64url(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// GETs a path and returns the status and the parsed `Location` header.
pub async fn get_redirect(emu: &Emu, url: url::Url) -> (StatusCode, Option<url::Url>) {
    let resp = emu.http.get(url).send().await.unwrap();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| url::Url::parse(v.to_str().expect("ASCII Location")).expect("absolute Location"));
    (resp.status(), location)
}

pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Runs `/authorize` for ADDRESS; returns the redirect.
pub async fn authorize(emu: &Emu, challenge: &str, method: &str) -> url::Url {
    let url = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/oauth2/v2.0/authorize")),
        &[
            ("client_id", CLIENT),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("response_mode", "query"),
            ("scope", "offline_access Mail.ReadWrite"),
            ("state", "xyz"),
            ("code_challenge", challenge),
            ("code_challenge_method", method),
            ("login_hint", ADDRESS),
        ],
    )
    .unwrap();
    let (status, location) = get_redirect(emu, url).await;
    // The exact status (302) has its own test: `authorize_and_admin_consent_answer_302`.
    assert!(status.is_redirection(), "authorize redirects: {status}");
    let location = location.expect("Location header");
    assert!(
        location.as_str().starts_with(REDIRECT),
        "redirects to redirect_uri: {location}"
    );
    assert_eq!(location.path(), "/callback", "redirects to redirect_uri: {location}");
    location
}

/// Runs `/authorize` and returns the code (and the verifier that goes with it).
pub async fn auth_code(emu: &Emu) -> (String, String) {
    let (verifier, challenge) = pkce_pair();
    let location = authorize(emu, &challenge, "S256").await;
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("xyz"),
        "state: {location}"
    );
    let code = query_param(&location, "code").unwrap_or_else(|| panic!("code in {location}"));
    (code, verifier)
}

pub async fn redeem_code(emu: &Emu, code: &str, redirect_uri: &str, verifier: &str) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", CLIENT),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
                ("client_secret", SECRET),
            ],
        )
        .await;
    (status, body)
}

/// Fetches the JWKS through the discovery document.
pub async fn jwks(emu: &Emu) -> Vec<Value> {
    let (status, config) = emu
        .get(&format!("/{TENANT}/v2.0/.well-known/openid-configuration"))
        .await;
    assert_eq!(status, StatusCode::OK, "openid-configuration: {config}");
    let token_endpoint = config["token_endpoint"].as_str().expect("token_endpoint");
    assert!(
        token_endpoint.ends_with(&format!("/{TENANT}/oauth2/v2.0/token")),
        "token_endpoint: {token_endpoint}"
    );
    let jwks_uri = url::Url::parse(config["jwks_uri"].as_str().expect("jwks_uri")).expect("jwks_uri is a URL");
    assert!(
        jwks_uri.path().ends_with("/discovery/v2.0/keys"),
        "jwks_uri: {jwks_uri}"
    );
    let (status, set) = emu.get(jwks_uri.path()).await;
    assert_eq!(status, StatusCode::OK, "JWKS: {set}");
    let (status, direct) = emu.get(&format!("/{TENANT}/discovery/v2.0/keys")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "JWKS at /{{tenant}}/discovery/v2.0/keys: {direct}"
    );
    let keys = set["keys"].as_array().expect("keys array").clone();
    assert!(!keys.is_empty(), "JWKS has keys: {set}");
    keys
}

/// Verifies `token` against `keys`: true when a key (matching `kid` if the token has one) verifies it.
pub fn verifies(token: &str, keys: &[Value]) -> bool {
    let jwt = parse_jwt(token);
    keys.iter()
        .filter(|k| k["kty"] == "RSA")
        .filter(|k| jwt.header["kid"].is_null() || k["kid"] == jwt.header["kid"])
        .any(|k| {
            let n = unb64url(k["n"].as_str().expect("n"));
            let e = unb64url(k["e"].as_str().expect("e"));
            RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    jwt.signing_input.as_bytes(),
                    &jwt.signature,
                )
                .is_ok()
        })
}
