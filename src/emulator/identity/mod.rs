//! Microsoft identity platform v2.0 endpoints: token, authorize, admin consent, discovery.

mod authorize;
mod errors;
mod token;

use axum::Router;
use axum::routing::{get, post};

pub(crate) use errors::{aadsts_error, oauth_error_response};
pub(crate) use token::normalize_scopes;

use super::Shared;

/// Routes under `/{tenant}/…`.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize::authorize))
        .route("/{tenant}/v2.0/adminconsent", get(authorize::admin_consent))
        .route("/{tenant}/adminconsent", get(authorize::admin_consent))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(authorize::openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(authorize::jwks))
}
