//! `/authorize` (consents at once), admin consent, OpenID discovery and the JWKS.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::token::normalize_scopes;
use crate::emulator::Shared;
use crate::emulator::model::AuthCode;
use crate::emulator::settings::Consent;
use crate::emulator::util::{key, opaque};

/// A 302 Found, as the sign-in service answers (axum's `Redirect::to` is a 303).
fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_string())]).into_response()
}

/// A plain-text 400, as the sign-in page shows errors that cannot be redirected.
fn page_error(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the emulated user consents at once.
pub(crate) async fn authorize(
    State(emu): State<Shared>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = emu.clock.now();
    let mut world = emu.world();
    let Some(client_id) = q.get("client_id") else {
        return page_error("AADSTS900144: The request body must contain the following parameter: 'client_id'.".into());
    };
    let Some(app) = world.apps.get(&key(client_id)) else {
        return page_error(format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
        ));
    };
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return page_error(
            "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'.".into(),
        );
    };
    if !app.redirect_uris.is_empty() && !app.redirect_uris.contains(&redirect_uri) {
        return page_error(format!(
            "AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."
        ));
    }
    let app_tenant = app.tenant_id.clone();
    let state = q.get("state").cloned().unwrap_or_default();
    let fragment = q.get("response_mode").is_some_and(|m| m == "fragment");
    let redirect = |params: Vec<(&str, String)>| -> Response {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let sep = if fragment {
            '#'
        } else if redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        found(&format!("{redirect_uri}{sep}{query}"))
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return redirect(vec![
            ("error", "unsupported_response_type".into()),
            (
                "error_description",
                "AADSTS700054: response_type 'code' is required.".into(),
            ),
            ("state", state),
        ]);
    }
    let tenant_id = world.resolve_tenant(&tenant).unwrap_or(app_tenant);
    let user = q
        .get("login_hint")
        .map(|h| key(h))
        .filter(|h| world.mailboxes.get(h).is_some_and(|m| m.tenant_id == tenant_id));
    let Some(address) = user else {
        return redirect(vec![
            ("error", "login_required".into()),
            ("error_description", "AADSTS50058: A silent sign-in request was sent but no user is signed in. The emulator needs login_hint naming one of its mailboxes.".into()),
            ("state", state),
        ]);
    };
    if world.settings.consent == Consent::Deny {
        return redirect(vec![
            ("error", "access_denied".into()),
            (
                "error_description",
                "AADSTS65004: User declined to consent to access the app.".into(),
            ),
            ("state", state),
        ]);
    }
    let challenge = q.get("code_challenge").map(|c| {
        (
            c.clone(),
            q.get("code_challenge_method")
                .cloned()
                .unwrap_or_else(|| "plain".into()),
        )
    });
    let code = format!("0.A{}", opaque(64));
    world.codes.insert(
        code.clone(),
        AuthCode {
            tenant_id,
            client_id: key(client_id),
            redirect_uri: redirect_uri.clone(),
            scopes: normalize_scopes(q.get("scope").map(String::as_str).unwrap_or("")),
            challenge,
            address,
            issued_at: now,
            redeemed: false,
        },
    );
    drop(world);
    redirect(vec![("code", code), ("state", state), ("session_state", opaque(16))])
}

/// `GET /{tenant}/v2.0/adminconsent` and the v1 `/{tenant}/adminconsent`.
pub(crate) async fn admin_consent(
    State(emu): State<Shared>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let world = emu.world();
    let (Some(client_id), Some(redirect_uri)) = (q.get("client_id"), q.get("redirect_uri")) else {
        return page_error("AADSTS900144: client_id and redirect_uri are required.".into());
    };
    if !world.apps.contains_key(&key(client_id)) {
        return page_error(format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
        ));
    }
    let tenant_id = world.resolve_tenant(&tenant).unwrap_or(tenant);
    let mut params = vec![("admin_consent", "True".to_string()), ("tenant", tenant_id)];
    if world.settings.consent == Consent::Deny {
        params = vec![
            ("error", "access_denied".into()),
            (
                "error_description",
                "AADSTS65004: The admin canceled the request.".into(),
            ),
        ];
    } else if let Some(scope) = q.get("scope") {
        params.push(("scope", scope.clone()));
    }
    params.push(("state", q.get("state").cloned().unwrap_or_default()));
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    found(&format!("{redirect_uri}{sep}{query}"))
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(State(emu): State<Shared>, Path(tenant): Path<String>) -> Response {
    let tenant_id = emu.world().resolve_tenant(&tenant).unwrap_or_else(|| tenant.clone());
    let base = emu.base();
    Json(json!({
        "issuer": format!("{base}/{tenant_id}/v2.0"),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub(crate) async fn jwks(State(emu): State<Shared>, Path(tenant): Path<String>) -> Response {
    let tenant_id = emu.world().resolve_tenant(&tenant).unwrap_or(tenant);
    Json(emu.keys.jwks(&format!("{}/{tenant_id}/v2.0", emu.base()))).into_response()
}
