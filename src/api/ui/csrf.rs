//! Cross-site request forgery: every form carries its session's random token in a hidden
//! field, and every `POST` is refused unless the field matches (compared in constant time).
//! The SameSite=Strict cookie already keeps other sites' forms out; this holds even where a
//! browser or a proxy does not honour it.

use axum::http::StatusCode;

use super::session::Signed;

/// The form field that carries the token.
pub const FIELD: &str = "csrf";

/// The hidden input every form of `session` includes.
pub fn hidden_input(session: &Signed) -> String {
    // The token is URL-safe base64: nothing in it needs escaping.
    format!(r#"<input type="hidden" name="{FIELD}" value="{}">"#, session.csrf)
}

/// Whether a form's token is the session's.
pub fn valid(session: &Signed, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| {
        aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), session.csrf.as_bytes()).is_ok()
    })
}

/// The status of a refused form.
pub const REFUSED: StatusCode = StatusCode::FORBIDDEN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Permission;

    #[test]
    fn only_the_sessions_own_token_passes() {
        let session = Signed {
            id: "id".into(),
            permission: Permission::Act,
            csrf: "token-of-this-session".into(),
        };
        assert!(valid(&session, Some("token-of-this-session")));
        assert!(!valid(&session, Some("token-of-this-sessio")));
        assert!(!valid(&session, Some("")));
        assert!(!valid(&session, None));
        assert!(hidden_input(&session).contains(r#"value="token-of-this-session""#));
    }
}
