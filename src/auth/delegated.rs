//! Delegated ("on behalf of a user") tokens: a refresh token per mailbox, sealed in the
//! store. Every refresh returns a new refresh token, and it is stored durably before the
//! access token is used (the peers that skipped this broke every 90 days).

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::classify::Verdict;
use super::endpoint::{AccessToken, TokenEndpoint, TokenError};
use super::seal::Sealer;
use super::token_cache::TokenCache;
use crate::domain::MailboxAddress;
use crate::store::{DelegatedToken, Store, StoreError};

/// Scopes a delegated mailbox asks for.
pub const DELEGATED_SCOPES: &str =
    "offline_access https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send";

/// The delegated tokens of one mailbox.
pub struct DelegatedTokens {
    mailbox: MailboxAddress,
    endpoint: Arc<TokenEndpoint>,
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    cache: TokenCache,
}

impl DelegatedTokens {
    /// Tokens of `mailbox`, refreshed through its app's endpoint.
    pub fn new(
        mailbox: MailboxAddress,
        endpoint: Arc<TokenEndpoint>,
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
    ) -> Self {
        DelegatedTokens {
            mailbox,
            endpoint,
            store,
            sealer,
            cache: TokenCache::default(),
        }
    }

    /// The app's endpoint (the consent flow redeems codes through it).
    pub fn endpoint(&self) -> &Arc<TokenEndpoint> {
        &self.endpoint
    }

    fn error(&self, verdict: Verdict, reason: String) -> TokenError {
        TokenError {
            app: self.endpoint.app().0.clone(),
            verdict,
            aadsts: None,
            error: None,
            trace_id: None,
            correlation_id: None,
            reason,
        }
    }

    /// A token valid now.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        self.cache.get(self.mailbox.as_str(), || self.refresh()).await
    }

    async fn refresh(&self) -> Result<AccessToken, TokenError> {
        let stored = self
            .store
            .delegated_token(&self.mailbox)
            .await
            .map_err(|e| self.error(Verdict::Transient, format!("store: {e}")))?
            .ok_or_else(|| {
                self.error(
                    Verdict::NeedsReconsent,
                    "no consent has been given for this mailbox yet".into(),
                )
            })?;
        let refresh = self
            .sealer
            .open(self.mailbox.as_str(), &stored.sealed_token)
            .ok_or_else(|| {
                self.error(
                    Verdict::NeedsReconsent,
                    "the stored refresh token cannot be opened with store.encryption_key (was the key changed?)".into(),
                )
            })?;
        let grant = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh.expose_secret().to_string()),
            ("scope", DELEGATED_SCOPES.to_string()),
        ];
        let granted = self.endpoint.request(grant, true).await?;
        let rotated = granted.refresh_token.unwrap_or(refresh);
        // Durably store the rotated token before the access token is used.
        self.seal_and_store(&rotated, granted.scope.as_deref().unwrap_or(&stored.scopes), true)
            .await
            .map_err(|e| {
                self.error(
                    Verdict::Transient,
                    format!("could not store the rotated refresh token: {e}"),
                )
            })?;
        Ok(granted.access)
    }

    /// Seals and stores a newly granted refresh token (after consent or import).
    pub async fn save(&self, refresh: &SecretString, scopes: &str) -> Result<(), StoreError> {
        self.seal_and_store(refresh, scopes, false).await
    }

    /// Seals and stores a refresh token; a rotation is a write only the mailbox's owner may do.
    async fn seal_and_store(&self, refresh: &SecretString, scopes: &str, rotation: bool) -> Result<(), StoreError> {
        let token = DelegatedToken {
            mailbox: self.mailbox.clone(),
            sealed_token: self.sealer.seal(self.mailbox.as_str(), refresh.expose_secret()),
            scopes: scopes.to_string(),
            last_used_at: OffsetDateTime::now_utc(),
        };
        if rotation {
            self.store.save_delegated_token(&token).await
        } else {
            self.store.save_granted_token(&token).await
        }
    }

    /// A new grant was stored: forget the cached token and any failure pacing.
    pub async fn reset(&self) {
        self.cache.reset().await;
    }

    /// Graph refused this token.
    pub fn invalidate(&self, stale: &Arc<AccessToken>) {
        self.cache.invalidate(stale);
    }
}

/// Re-seals with the current key every stored refresh token of `mailboxes` that only a previous
/// `store.encryption_key` opens; returns how many. Run at start, so a key rotation completes
/// without waiting for each token's next refresh.
pub async fn reseal(store: &dyn Store, sealer: &Sealer, mailboxes: &[MailboxAddress]) -> Result<usize, StoreError> {
    let mut resealed = 0;
    for mailbox in mailboxes {
        let Some(stored) = store.delegated_token(mailbox).await? else {
            continue;
        };
        if let Some((refresh, true)) = sealer.open_aged(mailbox.as_str(), &stored.sealed_token) {
            store
                .save_delegated_token(&DelegatedToken {
                    sealed_token: sealer.seal(mailbox.as_str(), refresh.expose_secret()),
                    ..stored
                })
                .await?;
            resealed += 1;
        }
    }
    Ok(resealed)
}
