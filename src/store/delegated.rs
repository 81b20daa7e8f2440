//! Delegated mailboxes' sealed refresh tokens and the consent flows that grant them.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

/// A delegated mailbox's refresh token, sealed with the store key.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegatedToken {
    /// The mailbox.
    pub mailbox: MailboxAddress,
    /// Nonce + AES-256-GCM ciphertext of the refresh token.
    pub sealed_token: Vec<u8>,
    /// Scopes granted, space-separated.
    pub scopes: String,
    /// Last successful refresh (Entra expires tokens unused for 90 days).
    pub last_used_at: OffsetDateTime,
}

/// A consent flow in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentState {
    /// The `state` parameter (random, single use).
    pub state: String,
    /// The mailbox it is for.
    pub mailbox: MailboxAddress,
    /// Sealed PKCE verifier.
    pub sealed_verifier: Vec<u8>,
    /// After this the state is refused.
    pub expires_at: OffsetDateTime,
}

/// Refresh tokens of delegated mailboxes and consent states.
#[async_trait]
pub trait DelegatedStore: Send + Sync {
    /// Stores (replaces) a mailbox's sealed refresh token, atomically: a rotation, which only
    /// the mailbox's owner may write.
    async fn save_delegated_token(&self, token: &DelegatedToken) -> Result<(), StoreError>;
    /// Stores a newly granted refresh token (consent, import), which any replica may write,
    /// and wakes the mailbox's owner.
    async fn save_granted_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        self.save_delegated_token(token).await
    }
    /// The sealed refresh token of a mailbox.
    async fn delegated_token(&self, mailbox: &MailboxAddress) -> Result<Option<DelegatedToken>, StoreError>;
    /// Stores a pending consent flow.
    async fn save_consent_state(&self, state: &ConsentState) -> Result<(), StoreError>;
    /// Takes (deletes and returns) a pending consent flow: a state works once.
    async fn take_consent_state(&self, state: &str) -> Result<Option<ConsentState>, StoreError>;
    /// Records that the consent state `state` (expiring at `expires_at`) was used; false when it
    /// already was (a state works once).
    async fn claim_consent_state(
        &self,
        state: &str,
        mailbox: &MailboxAddress,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
}
