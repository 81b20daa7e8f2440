//! The consent flow inboxd hosts: authorization code with PKCE (S256), a state that is sealed
//! (so starting a flow writes nothing), bound to one mailbox and to the browser that started
//! it, that expires and works once, redemption, and a check that the consenting user can open
//! the mailbox before its token is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use url::Url;

use super::delegated::{DELEGATED_SCOPES, DelegatedTokens};
use super::endpoint::{Granted, TokenError};
use super::seal::Sealer;
use crate::domain::MailboxAddress;
use crate::store::{Store, StoreError};

/// How long a consent link stays valid.
const STATE_LIFETIME: time::Duration = time::Duration::minutes(30);

/// Why a consent could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The state is unknown, already used, or expired.
    #[error("this consent link is unknown, was already used or has expired; ask for a new one")]
    BadState,
    /// The flow was started in another browser.
    #[error("this consent was started in another browser; open the consent link again in this one")]
    OtherBrowser,
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

/// Associated data of sealed states: a sealed refresh token never opens as a state.
const STATE_CONTEXT: &str = "inboxd consent state v1";

/// SHA-256 of a browser cookie, hex (the state carries this, never the cookie).
pub fn cookie_digest(cookie: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cookie.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a state carries, sealed: it is the whole pending flow, so starting one writes nothing.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed {
    /// Mailbox.
    m: String,
    /// PKCE verifier.
    v: String,
    /// Expiry, Unix seconds.
    e: i64,
    /// Digest of the browser cookie set when the flow started (browser flows only).
    b: Option<String>,
    /// False for a flow started for a mailbox that cannot consent (it looks the same outside).
    ok: bool,
}

/// A started flow: where to send the browser, and the cookie that binds the flow to it.
pub struct Started {
    /// The authorization URL.
    pub url: Url,
    /// Set as a cookie in the browser that started the flow (browser flows only).
    pub cookie: Option<String>,
}

/// A fresh authorization URL for `mailbox` whose state is sealed, not stored. A browser flow
/// gets a cookie too, and only that browser can complete it. `consentable` false makes a flow
/// that looks the same but can never complete (for mailboxes that cannot consent).
pub fn start(
    sealer: &Sealer,
    tokens: &DelegatedTokens,
    mailbox: &str,
    redirect_uri: &str,
    browser: bool,
    consentable: bool,
) -> Started {
    let verifier = random(48);
    let cookie = browser.then(|| random(32));
    let sealed = Sealed {
        m: mailbox.to_string(),
        v: verifier.clone(),
        e: (OffsetDateTime::now_utc() + STATE_LIFETIME).unix_timestamp(),
        b: cookie.as_deref().map(cookie_digest),
        ok: consentable,
    };
    let plain = serde_json::to_string(&sealed).expect("a state serializes");
    let state = URL_SAFE_NO_PAD.encode(sealer.seal(STATE_CONTEXT, &plain));
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
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
        .append_pair("login_hint", mailbox);
    Started { url, cookie }
}

/// A state opened: its mailbox, verifier and expiry.
pub struct Pending {
    /// The mailbox it is for.
    pub mailbox: MailboxAddress,
    /// PKCE verifier.
    pub verifier: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Digest of the browser cookie it is bound to, if any.
    browser: Option<String>,
}

/// Opens a state at `now`: it must be ours, for a mailbox that can consent, and not expired
/// (`None` otherwise: the caller answers [`ConsentError::BadState`]).
pub fn open_state(sealer: &Sealer, state: &str, now: OffsetDateTime) -> Option<Pending> {
    let sealed = URL_SAFE_NO_PAD.decode(state).ok()?;
    let plain = sealer.open(STATE_CONTEXT, &sealed)?;
    let s: Sealed = serde_json::from_str(plain.expose_secret()).ok()?;
    let expires_at = OffsetDateTime::from_unix_timestamp(s.e).ok()?;
    if !s.ok || expires_at < now {
        return None;
    }
    Some(Pending {
        mailbox: MailboxAddress::parse(&s.m).ok()?,
        verifier: s.v,
        expires_at,
        browser: s.b,
    })
}

impl Pending {
    /// True when the flow may complete in a browser presenting `cookie`: a browser flow
    /// only in the browser that started it.
    pub fn same_browser(&self, cookie: Option<&str>) -> bool {
        match (&self.browser, cookie) {
            (None, _) => true,
            (Some(want), Some(got)) => {
                aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), cookie_digest(got).as_bytes())
                    .is_ok()
            }
            (Some(_), None) => false,
        }
    }

    /// Uses the state up: the first caller gets true, every later one false.
    pub async fn claim(&self, store: &dyn Store, state: &str) -> Result<bool, StoreError> {
        let key = cookie_digest(state);
        store.claim_consent_state(&key, &self.mailbox, self.expires_at).await
    }
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

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn sealed(sealer: &Sealer, mailbox: &str, expires: OffsetDateTime, browser: Option<&str>, ok: bool) -> String {
        let s = Sealed {
            m: mailbox.into(),
            v: "verifier".into(),
            e: expires.unix_timestamp(),
            b: browser.map(cookie_digest),
            ok,
        };
        URL_SAFE_NO_PAD.encode(sealer.seal(STATE_CONTEXT, &serde_json::to_string(&s).unwrap()))
    }

    #[test]
    fn a_state_opens_until_it_expires_with_its_key_only() {
        let sealer = Sealer::new(&SecretString::from("k1"));
        let now = OffsetDateTime::now_utc();
        let state = sealed(&sealer, "a@b.test", now + time::Duration::minutes(30), None, true);
        let open = open_state(&sealer, &state, now).unwrap();
        assert_eq!(open.mailbox.as_str(), "a@b.test");
        assert_eq!(open.verifier, "verifier");
        assert!(
            open_state(&sealer, &state, now + time::Duration::minutes(31)).is_none(),
            "expired"
        );
        assert!(
            open_state(&Sealer::new(&SecretString::from("k2")), &state, now).is_none(),
            "other key"
        );
        assert!(open_state(&sealer, "never-issued", now).is_none());
        let decoy = sealed(&sealer, "x@b.test", now + time::Duration::minutes(30), None, false);
        assert!(open_state(&sealer, &decoy, now).is_none(), "a decoy never completes");
        // A sealed refresh token is not a state.
        let token = URL_SAFE_NO_PAD.encode(sealer.seal("a@b.test", "{}"));
        assert!(open_state(&sealer, &token, now).is_none());
    }

    #[test]
    fn a_browser_flow_completes_only_with_its_cookie() {
        let sealer = Sealer::new(&SecretString::from("k1"));
        let now = OffsetDateTime::now_utc();
        let state = sealed(
            &sealer,
            "a@b.test",
            now + time::Duration::minutes(30),
            Some("cookie-1"),
            true,
        );
        let open = open_state(&sealer, &state, now).unwrap();
        assert!(open.same_browser(Some("cookie-1")));
        assert!(!open.same_browser(Some("cookie-2")));
        assert!(!open.same_browser(None));
    }
}
