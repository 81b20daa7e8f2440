//! App-only (client-credentials) tokens: one per app registration, shared by its mailboxes.

use std::sync::Arc;

use super::endpoint::{AccessToken, TokenEndpoint, TokenError};
use super::token_cache::TokenCache;
use crate::domain::AppName;

/// Client-credentials tokens of one app registration.
pub struct AppTokens {
    endpoint: Arc<TokenEndpoint>,
    cache: TokenCache,
}

impl AppTokens {
    /// Tokens for an app.
    pub fn new(endpoint: Arc<TokenEndpoint>) -> AppTokens {
        AppTokens {
            endpoint,
            cache: TokenCache::default(),
        }
    }

    /// The app's name.
    pub fn name(&self) -> &AppName {
        self.endpoint.app()
    }

    /// The app's endpoint (delegated mailboxes of the app use it too).
    pub fn endpoint(&self) -> &Arc<TokenEndpoint> {
        &self.endpoint
    }

    /// A token valid now.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        self.cache
            .get(&self.endpoint.app().0, || async {
                let grant = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("scope", "https://graph.microsoft.com/.default".to_string()),
                ];
                Ok(self.endpoint.request(grant, false).await?.access)
            })
            .await
    }

    /// Graph refused this token: the next `token()` asks for a new one.
    pub fn invalidate(&self, stale: &Arc<AccessToken>) {
        self.cache.invalidate(stale);
    }
}
