//! Access tokens: client credentials (secret or certificate) per app registration and
//! delegated refresh tokens per mailbox, each kept fresh in a lock-free, single-flight
//! cache; AADSTS classification; sealing of refresh tokens at rest.

mod app_tokens;
mod assertion;
pub mod callback;
mod classify;
pub mod consent;
mod delegated;
mod endpoint;
mod expiry;
mod inactivity;
pub mod seal;
mod token_cache;

use std::sync::Arc;

pub use app_tokens::AppTokens;
pub use classify::{Verdict, classify_token_error};
pub use delegated::{DELEGATED_SCOPES, DelegatedTokens, reseal};
pub use endpoint::{AccessToken, Granted, TokenEndpoint, TokenError, describe};
pub use expiry::watch_expiry;
pub use inactivity::watch_refresh_inactivity;

/// Where a mailbox's tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// The app's client-credentials token.
    App(Arc<AppTokens>),
    /// The mailbox's own delegated grant.
    Delegated(Arc<DelegatedTokens>),
}

impl TokenSource {
    /// A token valid now.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        match self {
            TokenSource::App(t) => t.token().await,
            TokenSource::Delegated(t) => t.token().await,
        }
    }

    /// Graph refused this token: the next `token()` asks for a new one.
    pub fn invalidate(&self, stale: &Arc<AccessToken>) {
        match self {
            TokenSource::App(t) => t.invalidate(stale),
            TokenSource::Delegated(t) => t.invalidate(stale),
        }
    }
}
