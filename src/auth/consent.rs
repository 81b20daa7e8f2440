//! The consent flow inboxd hosts: authorization code with PKCE (S256), a single-use state
//! bound to one mailbox that expires, redemption, and a check that the consenting user can
//! open the mailbox before its token is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use url::Url;

use super::delegated::{DELEGATED_SCOPES, DelegatedTokens};
use super::endpoint::{Granted, TokenError};
use super::seal::Sealer;
use crate::domain::MailboxAddress;
use crate::store::{ConsentState, Store, StoreError};

/// How long a consent link stays valid.
const STATE_LIFETIME: time::Duration = time::Duration::minutes(30);

/// Why a consent could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The state is unknown, already used, or expired.
    #[error("this consent link is unknown, was already used or has expired; ask for a new one")]
    BadState,
    /// Entra redirected with an error (the user declined, an admin blocked it).
    #[error("the sign-in service refused: {0}")]
    Refused(String),
    /// The code could not be redeemed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The grant came without a refresh token (offline_access missing).
    #[error("the grant has no refresh token; offline_access was not granted")]
    NoRefreshToken,
    /// The consenting user cannot open this mailbox.
    #[error("the user who consented cannot open {0}; sign in as that mailbox's user or one with access to it")]
    WrongUser(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn random(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh authorization URL for `mailbox`; the state and PKCE verifier are stored.
pub async fn start(
    store: &dyn Store,
    sealer: &Sealer,
    tokens: &DelegatedTokens,
    mailbox: &MailboxAddress,
    redirect_uri: &str,
) -> Result<Url, StoreError> {
    let state = random(32);
    let verifier = random(48);
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    store
        .save_consent_state(&ConsentState {
            state: state.clone(),
            mailbox: mailbox.clone(),
            sealed_verifier: sealer.seal(&state, &verifier),
            expires_at: OffsetDateTime::now_utc() + STATE_LIFETIME,
        })
        .await?;
    let mut url = tokens.endpoint().authorize_url();
    url.query_pairs_mut()
        .append_pair("client_id", tokens.endpoint().client_id())
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_mode", "query")
        .append_pair("scope", DELEGATED_SCOPES)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("login_hint", mailbox.as_str());
    Ok(url)
}

/// The mailbox a callback's state belongs to, and the PKCE verifier (the state is used up).
pub async fn take_state(
    store: &dyn Store,
    sealer: &Sealer,
    state: &str,
) -> Result<(MailboxAddress, String), ConsentError> {
    let pending = store.take_consent_state(state).await?.ok_or(ConsentError::BadState)?;
    if pending.expires_at < OffsetDateTime::now_utc() {
        return Err(ConsentError::BadState);
    }
    let verifier = sealer
        .open(state, &pending.sealed_verifier)
        .ok_or(ConsentError::BadState)?;
    Ok((pending.mailbox, verifier.expose_secret().to_string()))
}

/// Redeems the code.
pub async fn redeem(
    tokens: &DelegatedTokens,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Result<Granted, ConsentError> {
    let grant = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", redirect_uri.to_string()),
        ("code_verifier", verifier.to_string()),
        ("scope", DELEGATED_SCOPES.to_string()),
    ];
    let granted = tokens.endpoint().request(grant, true).await?;
    if granted.refresh_token.is_none() {
        return Err(ConsentError::NoRefreshToken);
    }
    Ok(granted)
}
