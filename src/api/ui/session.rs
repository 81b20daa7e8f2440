//! Signed-in browsers: a random session id in an HttpOnly, SameSite=Strict cookie scoped to
//! `/ui`, mapped server-side to what the token it signed in with may do. The token itself is
//! kept only as a SHA-256 digest, so a session ends as soon as its token leaves the config.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;

use crate::api::Permission;
use crate::config::ApiTokens;

/// The cookie's name.
pub const COOKIE: &str = "inboxd_ui";
/// A session lasts this long from sign-in, however active (the page refreshes itself).
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; signing in past it ends the one closest to its end.
const MAX_SESSIONS: usize = 1024;

/// 32 random bytes, URL-safe base64: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One signed-in browser.
struct Session {
    /// SHA-256 of the API token it signed in with (checked against the config on every use).
    token_digest: Vec<u8>,
    /// The token every form of this session must carry.
    csrf: String,
    /// Signed out after this.
    expires_at: Instant,
}

/// A live session as a request sees it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Its id (the cookie value).
    pub id: String,
    /// What its token may do now.
    pub permission: Permission,
    /// The CSRF token of its forms.
    pub csrf: String,
}

/// Every session, in memory: a restart signs everyone out.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for a token already checked; returns its id and CSRF token.
    pub fn open(&self, token: &[u8]) -> (String, String) {
        let now = Instant::now();
        let id = random_token();
        let csrf = random_token();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                token_digest: digest(&SHA256, token).as_ref().to_vec(),
                csrf: csrf.clone(),
                expires_at: now + LIFETIME,
            },
        );
        (id, csrf)
    }

    /// The live session of cookie value `id`, with what its token may do under `tokens` (the
    /// configuration in force); `None` when unknown, expired or its token was removed.
    pub fn find(&self, id: &str, tokens: &ApiTokens) -> Option<Signed> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let session = map.get(id)?;
        let permission = (session.expires_at > Instant::now())
            .then(|| current_permission(&session.token_digest, tokens))
            .flatten();
        let Some(permission) = permission else {
            map.remove(id);
            return None;
        };
        Some(Signed {
            id: id.to_string(),
            permission,
            csrf: session.csrf.clone(),
        })
    }

    /// Signs a session out.
    pub fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// What the token with this digest may do now (a token moved to the read-only list loses its
/// buttons at the next page load).
fn current_permission(token_digest: &[u8], tokens: &ApiTokens) -> Option<Permission> {
    let same = |list: &[secrecy::SecretString]| {
        list.iter().fold(false, |found, t| {
            let d = digest(&SHA256, t.expose_secret().as_bytes());
            found | aws_lc_rs::constant_time::verify_slices_are_equal(d.as_ref(), token_digest).is_ok()
        })
    };
    let (act, read) = (same(&tokens.act), same(&tokens.read_only));
    if act {
        Some(Permission::Act)
    } else if read {
        Some(Permission::Read)
    } else {
        None
    }
}

/// The `Set-Cookie` value of a new session (`Secure` when browsers reach inboxd over HTTPS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn tokens(act: &[&str], read: &[&str]) -> ApiTokens {
        ApiTokens {
            act: act.iter().map(|t| SecretString::from(t.to_string())).collect(),
            read_only: read.iter().map(|t| SecretString::from(t.to_string())).collect(),
        }
    }

    #[test]
    fn a_session_follows_its_token_through_config_changes() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open(b"tok-a");
        let found = sessions.find(&id, &tokens(&["tok-a"], &[])).expect("live session");
        assert_eq!((found.permission, found.csrf), (Permission::Act, csrf));
        assert_eq!(
            sessions.find(&id, &tokens(&[], &["tok-a"])).map(|s| s.permission),
            Some(Permission::Read),
            "a token moved to the read-only list reads only"
        );
        assert!(sessions.find(&id, &tokens(&["tok-b"], &[])).is_none(), "removed token");
        assert!(
            sessions.find(&id, &tokens(&["tok-a"], &[])).is_none(),
            "a session ended by a removed token does not come back"
        );
        assert!(sessions.find("guessed", &tokens(&["tok-a"], &[])).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_ui() {
        let c = set_cookie("abc", false);
        for part in ["inboxd_ui=abc", "Path=/ui", "HttpOnly", "SameSite=Strict"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert_eq!(cookie_value("a=1; inboxd_ui=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_value("inboxd_ui_other=1"), None);
    }
}
