//! Completing a consent when the browser comes back to the redirect URI: the state is ours,
//! unexpired and used once, in the browser that started the flow; the code is redeemed; the
//! consenting user can open the mailbox; only then is the refresh token stored and the
//! mailbox resumed.

use super::consent::{self, ConsentError};
use super::delegated::{DELEGATED_SCOPES, DelegatedTokens};
use super::endpoint::AccessToken;
use super::seal::Sealer;
use crate::domain::MailboxAddress;
use crate::store::Store;

/// What the sign-in service sent back, and the consent cookie the browser presented.
#[derive(Debug, Clone, Copy)]
pub struct Callback<'a> {
    /// The sealed state.
    pub state: &'a str,
    /// The authorization code (absent when the sign-in service refused).
    pub code: Option<&'a str>,
    /// The sign-in service's `error`, when it refused.
    pub error: Option<&'a str>,
    /// Its `error_description`.
    pub error_description: Option<&'a str>,
    /// The browser's consent cookie, if it presented one.
    pub cookie: Option<&'a str>,
}

/// A mailbox a consent may complete for.
pub trait ConsentTarget {
    /// The mailbox's delegated tokens; `None` when it does not use delegated access.
    fn delegated(&self) -> Option<&DelegatedTokens>;
    /// True when `token` opens the mailbox (checked before anything is stored).
    fn opens_with(&self, token: &AccessToken) -> impl Future<Output = bool> + Send;
    /// The grant is stored: the mailbox resumes.
    fn resume(&self);
}

/// What completing a consent needs besides the callback.
#[derive(Clone, Copy)]
pub struct Completion<'a> {
    /// Opens the state.
    pub sealer: &'a Sealer,
    /// Where states are used up and refresh tokens stored.
    pub store: &'a dyn Store,
    /// The redirect URI the code was issued for.
    pub redirect_uri: &'a str,
}

impl Completion<'_> {
    /// Completes the consent of `callback`; `find` gives the configured mailbox the state
    /// names. Returns the mailbox whose grant was stored.
    pub async fn complete<T: ConsentTarget>(
        &self,
        callback: &Callback<'_>,
        find: impl FnOnce(&MailboxAddress) -> Option<T>,
    ) -> Result<MailboxAddress, ConsentError> {
        let pending = consent::open_state(self.sealer, callback.state, time::OffsetDateTime::now_utc())
            .ok_or(ConsentError::BadState)?;
        if let Some(err) = callback.error {
            let description = callback.error_description.unwrap_or("");
            return Err(ConsentError::Refused(format!("{err}: {description}")));
        }
        if !pending.same_browser(callback.cookie) {
            return Err(ConsentError::OtherBrowser);
        }
        let code = callback
            .code
            .ok_or_else(|| ConsentError::Refused("no code in the callback".into()))?;
        if !pending.claim(self.store, callback.state).await? {
            return Err(ConsentError::BadState);
        }
        let target = find(&pending.mailbox).ok_or(ConsentError::BadState)?;
        let tokens = target.delegated().ok_or(ConsentError::BadState)?;
        let granted = consent::redeem(tokens, code, &pending.verifier, self.redirect_uri).await?;
        if !target.opens_with(&granted.access).await {
            return Err(ConsentError::WrongUser(pending.mailbox.to_string()));
        }
        let refresh = granted.refresh_token.clone().ok_or(ConsentError::NoRefreshToken)?;
        tokens
            .save(&refresh, granted.scope.as_deref().unwrap_or(DELEGATED_SCOPES))
            .await?;
        tokens.reset().await;
        target.resume();
        Ok(pending.mailbox)
    }
}
