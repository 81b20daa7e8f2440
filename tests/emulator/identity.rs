//! Identity platform v2.0 (issue 2, section 1): the token endpoint and its error bodies,
//! certificate assertions, refresh and authorization-code grants, consent, discovery and
//! the emulator clock. Every test drives its own emulator over real HTTP.

use std::collections::HashSet;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair, RsaPublicKeyComponents, RsaSignatureEncoding};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT, status_json};

/// A second app in TENANT.
const CLIENT2: &str = "9f3c2d1e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
/// An app that authenticates with a certificate.
const CERT_CLIENT: &str = "2c8e4a16-7b3d-4f5e-9a0c-1d2e3f4a5b6c";
/// A tenant the emulator does not know (unless a test creates it).
const OTHER_TENANT: &str = "0b9d6c4e-2f1a-4e3d-8c5b-7a6f5e4d3c2b";
/// The mailbox of the delegated flows; its domain names TENANT.
const ADDRESS: &str = "support@contoso.test";
/// A second mailbox of TENANT.
const ADDRESS2: &str = "sales@contoso.test";
/// The redirect URI of the authorization-code app.
const REDIRECT: &str = "http://localhost:8400/callback";
/// The delegated scopes granted to refresh tokens minted through the control API.
const DELEGATED: &str = "offline_access Mail.ReadWrite Mail.Send";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64url(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("{text:?} is not base64url: {e}"))
}

/// A decoded compact JWS.
struct Jwt {
    header: Value,
    payload: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn parse_jwt(token: &str) -> Jwt {
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

/// POSTs a form to the token endpoint of `tenant`.
async fn token_request(emu: &Emu, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
    let resp = emu
        .http
        .post(emu.at(&format!("/{tenant}/oauth2/v2.0/token")))
        .form(form)
        .send()
        .await
        .unwrap();
    let headers = resp.headers().clone();
    let (status, body) = status_json(resp).await;
    (status, headers, body)
}

/// client_credentials with the secret in the form.
async fn secret_grant(emu: &Emu, tenant: &str, client: &str, secret: &str) -> (StatusCode, Value) {
    let (status, _, body) = token_request(
        emu,
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
async fn assertion_grant(emu: &Emu, client: &str, assertion: &str) -> (StatusCode, Value) {
    let (status, _, body) = token_request(
        emu,
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
async fn refresh_grant(emu: &Emu, client: &str, refresh_token: &str, scope: Option<&str>) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client),
        ("client_secret", SECRET),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let (status, _, body) = token_request(emu, TENANT, &form).await;
    (status, body)
}

/// Mints a delegated refresh token through the control API.
async fn mint_refresh_token(emu: &Emu, client: &str, address: &str) -> String {
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
async fn register_app(emu: &Emu, client: &str) {
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
async fn delegated_setup(emu: &Emu) {
    register_app(emu, CLIENT).await;
    emu.mailbox(TENANT, ADDRESS).await;
}

async fn post_ok(emu: &Emu, path: &str, body: Value) -> Value {
    let (status, answer) = emu.post(path, body).await;
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

async fn advance_clock(emu: &Emu, secs: u64) {
    let answer = post_ok(emu, "/_emulator/clock", json!({"advance_secs": secs})).await;
    assert!(answer["now"].is_string(), "clock answer: {answer}");
}

fn assert_aad_timestamp(text: &str) {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    assert_eq!(text.len(), 20, "timestamp {text:?} is YYYY-MM-DD hh:mm:ssZ");
    time::PrimitiveDateTime::parse(text, &format)
        .unwrap_or_else(|e| panic!("timestamp {text:?} is not YYYY-MM-DD hh:mm:ssZ: {e}"));
}

/// Checks the documented token-endpoint error body (Entra's error reference). With `code` None any
/// AADSTS code is accepted (the first of `error_codes` is checked against the text).
fn assert_token_error(status: StatusCode, body: &Value, want_status: u16, want_error: &str, code: Option<u64>) {
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
fn assert_app_token(status: StatusCode, body: &Value, client: &str) -> Value {
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
fn scope_has(scopes: &str, name: &str) -> bool {
    scopes.split_whitespace().any(|s| {
        s.eq_ignore_ascii_case(name)
            || s.to_ascii_lowercase()
                .ends_with(&format!("/{}", name.to_ascii_lowercase()))
    })
}

/// The delegated user of an access token is `address`.
fn assert_user(claims: &Value, address: &str) {
    let names = ["upn", "preferred_username", "unique_name", "email"];
    assert!(
        names
            .iter()
            .any(|n| claims[*n].as_str().is_some_and(|v| v.eq_ignore_ascii_case(address))),
        "token names the user {address}: {claims}"
    );
}

/// Checks a delegated success body and returns the access token's payload.
fn assert_delegated_token(status: StatusCode, body: &Value, address: &str) -> Value {
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

struct TestCert {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn new_cert() -> TestCert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["app".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    TestCert { key, cert }
}

#[derive(Clone, Copy)]
enum Alg {
    /// Current doc: PS256 with `x5t#S256`.
    Ps256,
    /// Older doc: RS256 with `x5t` (SHA-1).
    Rs256,
}

/// Builds a client assertion for `cert`'s thumbprint, signed with `signer`.
fn assertion(signer: &rcgen::KeyPair, cert: &rcgen::Certificate, alg: Alg, claims: &Value) -> String {
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
fn own_audience(emu: &Emu) -> String {
    format!("{}/{TENANT}/oauth2/v2.0/token", emu.url)
}

fn assertion_claims(aud: &str, iss: &str, sub: &str, nbf: i64, exp: i64) -> Value {
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

fn good_claims(aud: &str) -> Value {
    let now = now_unix();
    assertion_claims(aud, CERT_CLIENT, CERT_CLIENT, now - 5, now + 600)
}

/// Registers CERT_CLIENT with a fresh certificate; returns it.
async fn cert_app(emu: &Emu) -> TestCert {
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
fn assert_assertion_refused(status: StatusCode, body: &Value) {
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED,
        "refused: {status} {body}"
    );
    assert_eq!(body["error"], "invalid_client", "{body}");
    let desc = body["error_description"].as_str().unwrap_or_default();
    assert!(desc.starts_with("AADSTS"), "error_description: {body}");
    assert!(body["access_token"].is_null(), "{body}");
}

fn pkce_pair() -> (String, String) {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = b64url(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// GETs a path and returns the status and the parsed `Location` header.
async fn get_redirect(emu: &Emu, url: url::Url) -> (StatusCode, Option<url::Url>) {
    let resp = emu.http.get(url).send().await.unwrap();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| url::Url::parse(v.to_str().expect("ASCII Location")).expect("absolute Location"));
    (resp.status(), location)
}

fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Runs `/authorize` for ADDRESS; returns the redirect.
async fn authorize(emu: &Emu, challenge: &str, method: &str) -> url::Url {
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
async fn auth_code(emu: &Emu) -> (String, String) {
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

async fn redeem_code(emu: &Emu, code: &str, redirect_uri: &str, verifier: &str) -> (StatusCode, Value) {
    let (status, _, body) = token_request(
        emu,
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

// ---------------------------------------------------------------------------------------
// client_credentials with a secret
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Discovery and JWKS
// ---------------------------------------------------------------------------------------

/// Fetches the JWKS through the discovery document.
async fn jwks(emu: &Emu) -> Vec<Value> {
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
fn verifies(token: &str, keys: &[Value]) -> bool {
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

// ---------------------------------------------------------------------------------------
// Certificate assertions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_assertion_ps256_with_x5t_s256() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&own_audience(&emu)));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}

#[tokio::test]
async fn certificate_assertion_rs256_with_x5t_sha1() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let jwt = assertion(&cert.key, &cert.cert, Alg::Rs256, &good_claims(&own_audience(&emu)));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}

#[tokio::test]
async fn certificate_assertion_public_audience_accepted() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let aud = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    for alg in [Alg::Ps256, Alg::Rs256] {
        let jwt = assertion(&cert.key, &cert.cert, alg, &good_claims(&aud));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_app_token(status, &body, CERT_CLIENT);
    }
}

#[tokio::test]
async fn certificate_assertion_wrong_key_is_700027() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let other = new_cert();
    for alg in [Alg::Ps256, Alg::Rs256] {
        // The header names the registered certificate, but another key signed it.
        let jwt = assertion(&other.key, &cert.cert, alg, &good_claims(&own_audience(&emu)));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_token_error(status, &body, 401, "invalid_client", Some(700027));
    }
}

#[tokio::test]
async fn certificate_assertion_wrong_audience_refused() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    for aud in [
        format!("https://example.invalid/{TENANT}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{OTHER_TENANT}/oauth2/v2.0/token"),
    ] {
        let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&aud));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_assertion_refused(status, &body);
    }
}

#[tokio::test]
async fn certificate_assertion_issuer_and_subject_must_be_client() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let now = now_unix();
    let aud = own_audience(&emu);
    for (iss, sub) in [(CLIENT2, CERT_CLIENT), (CERT_CLIENT, CLIENT2), (CLIENT2, CLIENT2)] {
        let jwt = assertion(
            &cert.key,
            &cert.cert,
            Alg::Ps256,
            &assertion_claims(&aud, iss, sub, now - 5, now + 600),
        );
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_assertion_refused(status, &body);
    }
}

#[tokio::test]
async fn certificate_assertion_expired_or_not_yet_valid_refused() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let now = now_unix();
    let aud = own_audience(&emu);
    // Expired ten minutes ago.
    let jwt = assertion(
        &cert.key,
        &cert.cert,
        Alg::Ps256,
        &assertion_claims(&aud, CERT_CLIENT, CERT_CLIENT, now - 1200, now - 600),
    );
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_assertion_refused(status, &body);
    // Not valid before an hour from now.
    let jwt = assertion(
        &cert.key,
        &cert.cert,
        Alg::Ps256,
        &assertion_claims(&aud, CERT_CLIENT, CERT_CLIENT, now + 3600, now + 4200),
    );
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_assertion_refused(status, &body);
    // A good one still works, so the refusals were about time.
    let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&aud));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}

// ---------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------

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
        let (status, _, body) = token_request(
            &emu,
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
    let (status, _, body) = token_request(
        &emu,
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
    let (status, _, body) = token_request(
        &emu,
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
    let (status, _, body) = token_request(
        &emu,
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
    let (status, _, body) = token_request(
        &emu,
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
    let (status, _, body) = token_request(
        &emu,
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

// ---------------------------------------------------------------------------------------
// Tenant by domain
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// refresh_token grant
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// temporarily_unavailable
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// authorization_code + PKCE
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Admin consent
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_consent_v2_and_v1_redirect() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let v2 = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/v2.0/adminconsent")),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
            ("redirect_uri", REDIRECT),
            ("state", "s-42"),
        ],
    )
    .unwrap();
    let v1 = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/adminconsent")),
        &[("client_id", CLIENT), ("redirect_uri", REDIRECT), ("state", "s-42")],
    )
    .unwrap();
    for url in [v2, v1] {
        let (status, location) = get_redirect(&emu, url.clone()).await;
        assert!(status.is_redirection(), "{status} {url}");
        let location = location.expect("Location");
        assert!(
            location.as_str().starts_with(REDIRECT),
            "redirects to redirect_uri: {location}"
        );
        assert_eq!(
            query_param(&location, "admin_consent").as_deref(),
            Some("True"),
            "{location}"
        );
        assert_eq!(query_param(&location, "tenant").as_deref(), Some(TENANT), "{location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("s-42"), "{location}");
    }
}

// ---------------------------------------------------------------------------------------
// The emulator clock
// ---------------------------------------------------------------------------------------

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

#[tokio::test]
async fn authorize_and_admin_consent_answer_302() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (_, challenge) = pkce_pair();
    let authorize = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/oauth2/v2.0/authorize")),
        &[
            ("client_id", CLIENT),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "offline_access Mail.ReadWrite"),
            ("state", "xyz"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("login_hint", ADDRESS),
        ],
    )
    .unwrap();
    let consent = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/v2.0/adminconsent")),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
        ],
    )
    .unwrap();
    for url in [authorize, consent] {
        let (status, location) = get_redirect(&emu, url.clone()).await;
        assert_eq!(
            status,
            StatusCode::FOUND,
            "the identity platform answers 302 Found: {url}"
        );
        assert!(location.is_some(), "Location: {url}");
    }
}
