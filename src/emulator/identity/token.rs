//! `POST /{tenant}/oauth2/v2.0/token`: client credentials, refresh tokens, authorization codes.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::errors::{OAuthError, aadsts_error};
use crate::emulator::keys::Jwt;
use crate::emulator::log::Facts;
use crate::emulator::model::{RefreshGrant, World};
use crate::emulator::settings::Settings;
use crate::emulator::util::{b64url, guid, key, opaque};
use crate::emulator::{Emulator, Shared};

/// The resource every grant here is for.
pub(crate) const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// Graph's well-known application id.
pub(crate) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// Scopes that ask for tokens rather than API access.
const OIDC_SCOPES: &[&str] = &["offline_access", "openid", "profile", "email"];
/// Unused refresh tokens die after this long (Entra: 90 days of inactivity).
const REFRESH_INACTIVITY_SECS: i64 = 90 * 24 * 3600;
/// Authorization codes live about 10 minutes.
const CODE_LIFETIME_SECS: i64 = 600;

/// Token endpoint entry.
pub(crate) async fn token(
    State(emu): State<Shared>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let now = emu.clock.now();
    let client = client_id(&form, &headers);
    let mut resp = match grant(&emu, &tenant, &form, &headers, now) {
        Ok(body) => {
            let mut resp = Json(body).into_response();
            let h = resp.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(err) => err.into_response_at(now),
    };
    resp.extensions_mut().insert(Facts {
        app: client.map(|(id, _)| id),
        ..Facts::default()
    });
    resp
}

/// Client id and the Basic-auth secret, from the form or the `Authorization` header.
fn client_id(form: &HashMap<String, String>, headers: &HeaderMap) -> Option<(String, Option<String>)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)))
        });
    match (form.get("client_id"), basic) {
        (Some(id), basic) => Some((id.clone(), basic.and_then(|(_, s)| s))),
        (None, Some((id, secret))) => Some((id, secret)),
        (None, None) => None,
    }
}

/// Runs the grant; `Ok` is the success body.
fn grant(
    emu: &Emulator,
    tenant_segment: &str,
    form: &HashMap<String, String>,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Value, OAuthError> {
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| aadsts_error(900144, "grant_type"))?;
    let common = matches!(key(tenant_segment).as_str(), "common" | "organizations" | "consumers");
    if common && grant_type == "client_credentials" {
        return Err(aadsts_error(9001023, ""));
    }
    let (client_id, basic_secret) = client_id(form, headers).ok_or_else(|| aadsts_error(900144, "client_id"))?;
    let mut world = emu.world();
    let tenant_id = if common {
        world
            .apps
            .get(&key(&client_id))
            .map(|a| a.tenant_id.clone())
            .ok_or_else(|| aadsts_error(700016, &client_id))?
    } else {
        world
            .resolve_tenant(tenant_segment)
            .ok_or_else(|| aadsts_error(90002, tenant_segment))?
    };
    authenticate_client(
        emu,
        &world,
        &tenant_id,
        tenant_segment,
        &client_id,
        basic_secret,
        form,
        now,
    )?;
    match grant_type.as_str() {
        "client_credentials" => client_credentials(emu, &world, &tenant_id, &client_id, form, now),
        "refresh_token" => refresh(emu, &mut world, &tenant_id, &client_id, form, now),
        "authorization_code" => redeem_code(emu, &mut world, &tenant_id, &client_id, form, now),
        other => Err(aadsts_error(70003, other)),
    }
}

/// Checks the client's secret or certificate assertion.
#[allow(clippy::too_many_arguments)]
fn authenticate_client(
    emu: &Emulator,
    world: &World,
    tenant_id: &str,
    tenant_segment: &str,
    client_id: &str,
    basic_secret: Option<String>,
    form: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<(), OAuthError> {
    let app = world
        .apps
        .get(&key(client_id))
        .filter(|a| a.tenant_id == tenant_id)
        .ok_or_else(|| aadsts_error(700016, client_id))?;
    let secret = form.get("client_secret").cloned().or(basic_secret);
    if let Some(secret) = secret {
        return match app.secrets.iter().find(|s| s.value == secret) {
            Some(s) if s.expired => Err(aadsts_error(7000222, client_id)),
            Some(_) => Ok(()),
            None => Err(aadsts_error(7000215, client_id)),
        };
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(aadsts_error(900144, "client_assertion_type"));
        }
        let jwt = Jwt::parse(assertion).ok_or_else(|| aadsts_error(700027, "The assertion is not a JWT."))?;
        let cert = app
            .certificate
            .as_ref()
            .ok_or_else(|| aadsts_error(700027, "The key was not found."))?;
        cert.verify(&jwt).map_err(|reason| aadsts_error(700027, reason))?;
        let claims = &jwt.claims;
        let aud = claims["aud"].as_str().unwrap_or_default();
        let accepted = [
            format!("{}/{tenant_segment}/oauth2/v2.0/token", emu.base()),
            format!("{}/{tenant_id}/oauth2/v2.0/token", emu.base()),
            format!("https://login.microsoftonline.com/{tenant_segment}/oauth2/v2.0/token"),
            format!("https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"),
        ];
        if !accepted.iter().any(|a| a.eq_ignore_ascii_case(aud)) {
            return Err(aadsts_error(
                700023,
                &format!("Audience '{aud}' is not the token endpoint."),
            ));
        }
        for claim in ["iss", "sub"] {
            if !claims[claim]
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case(client_id))
            {
                return Err(aadsts_error(
                    700021,
                    &format!("The '{claim}' claim must be the client id."),
                ));
            }
        }
        let t = now.unix_timestamp();
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let nbf = claims["nbf"].as_i64().unwrap_or(0);
        // Entra allows a few minutes of clock skew.
        if exp + 300 < t || nbf - 300 > t {
            return Err(aadsts_error(700024, ""));
        }
        return Ok(());
    }
    Err(aadsts_error(7000218, ""))
}

/// App-only token for `{resource}/.default`.
fn client_credentials(
    emu: &Emulator,
    world: &World,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<Value, OAuthError> {
    let scope = form.get("scope").ok_or_else(|| aadsts_error(900144, "scope"))?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let valid = scopes.len() == 1
        && [
            format!("{GRAPH_RESOURCE}/.default"),
            format!("{GRAPH_RESOURCE}//.default"),
            format!("{GRAPH_APP_ID}/.default"),
        ]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scopes[0]));
    if !valid {
        return Err(aadsts_error(70011, scope));
    }
    let app = &world.apps[&key(client_id)];
    let lifetime = lifetime(&world.settings);
    let iat = now.unix_timestamp();
    let claims = json!({
        "aud": GRAPH_RESOURCE,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "iat": iat, "nbf": iat, "exp": iat + lifetime,
        "aio": opaque(24),
        "app_displayname": app.display_name,
        "appid": app.client_id,
        "appidacr": if form.contains_key("client_assertion") { "2" } else { "1" },
        "idp": format!("https://sts.windows.net/{tenant_id}/"),
        "idtyp": "app",
        "oid": app.object_id,
        "roles": app.roles,
        "sub": app.object_id,
        "tid": tenant_id,
        "uti": opaque(16),
        "ver": "1.0",
    });
    Ok(success(emu, &world.settings, &claims, lifetime, None))
}

/// Delegated: redeems a refresh token and rotates it.
fn refresh(
    emu: &Emulator,
    world: &mut World,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<Value, OAuthError> {
    let token = form
        .get("refresh_token")
        .ok_or_else(|| aadsts_error(900144, "refresh_token"))?;
    let grant = world
        .refresh_tokens
        .get(token)
        .cloned()
        .ok_or_else(|| aadsts_error(9002313, ""))?;
    if !grant.client_id.eq_ignore_ascii_case(client_id) || grant.tenant_id != tenant_id {
        return Err(aadsts_error(9002313, ""));
    }
    if let Some(code) = grant.failure {
        return Err(aadsts_error(code, &format!(" with ID '{client_id}'")));
    }
    if (now - grant.last_used).whole_seconds() > REFRESH_INACTIVITY_SECS {
        return Err(aadsts_error(700082, ""));
    }
    let requested = form.get("scope").map(|s| normalize_scopes(s)).unwrap_or_default();
    let is_api = |s: &&String| !OIDC_SCOPES.contains(&s.to_ascii_lowercase().as_str());
    if requested
        .iter()
        .filter(is_api)
        .any(|s| !grant.scopes.iter().any(|g| g.eq_ignore_ascii_case(s)))
    {
        return Err(aadsts_error(65001, &format!(" with ID '{client_id}'")));
    }
    if let Some(g) = world.refresh_tokens.get_mut(token) {
        g.last_used = now;
    }
    delegated_tokens(emu, world, grant, now)
}

/// Delegated: redeems an authorization code (PKCE checked).
fn redeem_code(
    emu: &Emulator,
    world: &mut World,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<Value, OAuthError> {
    let code = form.get("code").ok_or_else(|| aadsts_error(900144, "code"))?;
    let pending = world.codes.get_mut(code).ok_or_else(|| aadsts_error(9002313, ""))?;
    if !pending.client_id.eq_ignore_ascii_case(client_id) || pending.tenant_id != tenant_id {
        return Err(aadsts_error(9002313, ""));
    }
    if pending.redeemed {
        return Err(aadsts_error(54005, ""));
    }
    if (now - pending.issued_at).whole_seconds() > CODE_LIFETIME_SECS {
        return Err(aadsts_error(70008, ""));
    }
    let redirect = form.get("redirect_uri").map(String::as_str).unwrap_or_default();
    if redirect != pending.redirect_uri {
        return Err(aadsts_error(500112, redirect));
    }
    if let Some((challenge, method)) = &pending.challenge {
        let verifier = form
            .get("code_verifier")
            .ok_or_else(|| aadsts_error(900144, "code_verifier"))?;
        let computed = if method.eq_ignore_ascii_case("S256") {
            b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
        } else {
            verifier.clone()
        };
        if &computed != challenge {
            return Err(aadsts_error(501481, ""));
        }
    }
    pending.redeemed = true;
    let grant = RefreshGrant {
        tenant_id: pending.tenant_id.clone(),
        client_id: pending.client_id.clone(),
        address: pending.address.clone(),
        scopes: pending.scopes.clone(),
        failure: None,
        last_used: now,
    };
    delegated_tokens(emu, world, grant, now)
}

/// Access token + a new refresh token for a delegated grant.
fn delegated_tokens(
    emu: &Emulator,
    world: &mut World,
    grant: RefreshGrant,
    now: OffsetDateTime,
) -> Result<Value, OAuthError> {
    let mailbox = world
        .mailboxes
        .get(&grant.address)
        .ok_or_else(|| aadsts_error(50057, ""))?;
    let (user_id, address, name) = (
        mailbox.id.clone(),
        mailbox.address.clone(),
        mailbox.display_name.clone(),
    );
    let settings = world.settings.clone();
    let api_scopes: Vec<&str> = grant
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !OIDC_SCOPES.contains(&s.to_ascii_lowercase().as_str()))
        .collect();
    let lifetime = lifetime(&settings);
    let iat = now.unix_timestamp();
    let claims = json!({
        "aud": GRAPH_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", grant.tenant_id),
        "iat": iat, "nbf": iat, "exp": iat + lifetime,
        "app_displayname": world.apps.get(&key(&grant.client_id)).map(|a| a.display_name.clone()),
        "appid": grant.client_id,
        "azp": grant.client_id,
        "idtyp": "user",
        "name": name,
        "oid": user_id,
        "scp": api_scopes.join(" "),
        "sub": user_id,
        "tid": grant.tenant_id,
        "unique_name": address,
        "upn": address,
        "uti": opaque(16),
        "ver": "1.0",
    });
    let mut body = success(emu, &settings, &claims, lifetime, Some(api_scopes.join(" ")));
    if grant.scopes.iter().any(|s| s.eq_ignore_ascii_case("offline_access")) {
        let new_token = format!("1.A{}", opaque(96));
        world.refresh_tokens.insert(
            new_token.clone(),
            RefreshGrant {
                last_used: now,
                ..grant.clone()
            },
        );
        body["refresh_token"] = json!(new_token);
    }
    if grant.scopes.iter().any(|s| s.eq_ignore_ascii_case("openid")) {
        let id_claims = json!({
            "aud": grant.client_id,
            "iss": format!("{}/{}/v2.0", emu.base(), grant.tenant_id),
            "iat": iat, "nbf": iat, "exp": iat + 3600,
            "oid": user_id, "preferred_username": address, "name": name,
            "sub": guid(), "tid": grant.tenant_id, "ver": "2.0",
        });
        body["id_token"] = json!(emu.keys.sign(&id_claims));
    }
    Ok(body)
}

/// Scope list as plain names: `https://graph.microsoft.com/Mail.Read` → `Mail.Read`.
pub(crate) fn normalize_scopes(scope: &str) -> Vec<String> {
    scope
        .split_whitespace()
        .map(|s| {
            let lower = s.to_ascii_lowercase();
            let prefix = format!("{GRAPH_RESOURCE}/");
            if lower.starts_with(&prefix) {
                s[prefix.len()..].to_string()
            } else {
                s.to_string()
            }
        })
        .collect()
}

/// Seconds an access token lives: fixed by settings, or drawn from 60–90 minutes.
fn lifetime(settings: &Settings) -> i64 {
    match settings.token_lifetime_secs {
        Some(secs) => secs as i64,
        None => fastrand::i64(3600..=5400),
    }
}

/// The success body around a signed access token.
fn success(emu: &Emulator, settings: &Settings, claims: &Value, lifetime: i64, scope: Option<String>) -> Value {
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime + settings.ext_expires_extra_secs as i64,
        "access_token": emu.keys.sign(claims),
    });
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    if let Some(refresh_in) = settings.refresh_in_secs {
        body["refresh_in"] = json!(refresh_in);
    }
    body
}
