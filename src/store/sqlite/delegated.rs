//! Sealed refresh tokens of delegated mailboxes and pending consent states.

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use super::{SqliteStore, db_err, to_stored};
use time::OffsetDateTime;

use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{ConsentState, DelegatedStore, DelegatedToken, StoreError};

pub(super) async fn save_token(pool: &SqlitePool, t: &DelegatedToken) -> Result<(), StoreError> {
    const OP: &str = "save delegated token";
    let now = to_stored(OP, OffsetDateTime::now_utc())?;
    sqlx::query(
        "INSERT INTO delegated_tokens (mailbox, sealed_token, scopes, last_used_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (mailbox) DO UPDATE SET sealed_token = excluded.sealed_token, scopes = excluded.scopes,
             last_used_at = excluded.last_used_at, updated_at = excluded.updated_at",
    )
    .bind(t.mailbox.as_str())
    .bind(&t.sealed_token)
    .bind(&t.scopes)
    .bind(to_stored(OP, t.last_used_at)?)
    .bind(now)
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(())
}

pub(super) async fn token(pool: &SqlitePool, mailbox: &MailboxAddress) -> Result<Option<DelegatedToken>, StoreError> {
    const OP: &str = "read delegated token";
    let row: Option<rows::TokenRow> =
        sqlx::query_as("SELECT sealed_token, scopes, last_used_at FROM delegated_tokens WHERE mailbox = ?1")
            .bind(mailbox.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db_err(OP))?;
    row.map(|row| rows::delegated_token(OP, mailbox, row)).transpose()
}

pub(super) async fn save_state(pool: &SqlitePool, s: &ConsentState) -> Result<(), StoreError> {
    const OP: &str = "save consent state";
    sqlx::query("INSERT INTO consent_states (state, mailbox, sealed_verifier, expires_at) VALUES (?1, ?2, ?3, ?4)")
        .bind(&s.state)
        .bind(s.mailbox.as_str())
        .bind(&s.sealed_verifier)
        .bind(to_stored(OP, s.expires_at)?)
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    // Old, never-used states go with every new one.
    sqlx::query("DELETE FROM consent_states WHERE expires_at < ?1")
        .bind(to_stored(OP, OffsetDateTime::now_utc() - time::Duration::days(1))?)
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    Ok(())
}

pub(super) async fn take_state(pool: &SqlitePool, state: &str) -> Result<Option<ConsentState>, StoreError> {
    const OP: &str = "take consent state";
    let row: Option<rows::ConsentRow> =
        sqlx::query_as("DELETE FROM consent_states WHERE state = ?1 RETURNING mailbox, sealed_verifier, expires_at")
            .bind(state)
            .fetch_optional(pool)
            .await
            .map_err(db_err(OP))?;
    row.map(|row| rows::consent_state(OP, state, row)).transpose()
}

/// Records that a consent state was used; false when it already was. The row is kept until
/// the state would have expired anyway (then it could not be used again regardless).
pub(super) async fn claim_state(
    pool: &SqlitePool,
    state: &str,
    mailbox: &MailboxAddress,
    expires_at: OffsetDateTime,
) -> Result<bool, StoreError> {
    const OP: &str = "claim consent state";
    sqlx::query("DELETE FROM consent_states WHERE expires_at < ?1")
        .bind(to_stored(OP, OffsetDateTime::now_utc())?)
        .execute(pool)
        .await
        .map_err(db_err(OP))?;
    let done = sqlx::query(
        "INSERT INTO consent_states (state, mailbox, sealed_verifier, expires_at) VALUES (?1, ?2, x'', ?3)
         ON CONFLICT (state) DO NOTHING",
    )
    .bind(state)
    .bind(mailbox.as_str())
    .bind(to_stored(OP, expires_at)?)
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(done.rows_affected() == 1)
}

#[async_trait]
impl DelegatedStore for SqliteStore {
    async fn save_delegated_token(&self, token: &DelegatedToken) -> Result<(), StoreError> {
        save_token(&self.pool, token).await
    }

    async fn delegated_token(&self, mailbox: &MailboxAddress) -> Result<Option<DelegatedToken>, StoreError> {
        token(&self.pool, mailbox).await
    }

    async fn save_consent_state(&self, state: &ConsentState) -> Result<(), StoreError> {
        save_state(&self.pool, state).await
    }

    async fn take_consent_state(&self, state: &str) -> Result<Option<ConsentState>, StoreError> {
        take_state(&self.pool, state).await
    }

    async fn claim_consent_state(
        &self,
        state: &str,
        mailbox: &MailboxAddress,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        claim_state(&self.pool, state, mailbox, expires_at).await
    }
}
