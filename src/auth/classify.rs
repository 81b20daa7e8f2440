//! One table: what a token-endpoint error means for a mailbox, so a dead grant flags it and a hiccup never does.
//! Driven by the `error`, `suberror` and AADSTS code, never by counting failures.

use crate::domain::MailboxState;

/// What to do about a token error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Back off and retry; never a flag.
    Transient,
    /// The app's credential is invalid or expired: every mailbox of the app.
    CredentialInvalid,
    /// The delegated grant is dead: a human must consent again.
    NeedsReconsent,
}

impl Verdict {
    /// The mailbox state this verdict puts a mailbox in.
    pub fn state(self) -> MailboxState {
        match self {
            Verdict::Transient => MailboxState::Backoff,
            Verdict::CredentialInvalid => MailboxState::CredentialInvalid,
            Verdict::NeedsReconsent => MailboxState::NeedsReconsent,
        }
    }
}

/// AADSTS codes that mean "the user must sign in or consent again".
const RECONSENT: &[u32] = &[
    50173, 70008, 700082, 700084, 70043, 50089, 50132, 50133, 50055, 50057, 50053, // grant dead
    50076, 50079, 50074, 50072, 53000, 53001, 53003, 530035, // MFA / Conditional Access
    65001, 65004, 90094, 90095, 650056, 650057, // consent
];
/// AADSTS codes that mean "an operator must fix the app's credential or registration".
const CREDENTIAL: &[u32] = &[
    7000215, 7000222, 7000218, 700027, 700024, 700023, 700021, 50012, 700016, 700011, 7000112, 70001, 500011, 90002,
];
/// AADSTS codes that are transient whatever `error` says.
const TRANSIENT: &[u32] = &[50196, 90055, 50033, 90006, 90024, 90033, 90090];

/// Classifies a token-endpoint error. `status` is the HTTP status (None: no answer at all).
pub fn classify_token_error(status: Option<u16>, error: Option<&str>, aadsts: Option<u32>, delegated: bool) -> Verdict {
    let Some(status) = status else {
        return Verdict::Transient;
    };
    if status == 429 || status >= 500 || error == Some("temporarily_unavailable") {
        return Verdict::Transient;
    }
    if let Some(code) = aadsts {
        if TRANSIENT.contains(&code) {
            return Verdict::Transient;
        }
        if CREDENTIAL.contains(&code) {
            return Verdict::CredentialInvalid;
        }
        if RECONSENT.contains(&code) {
            // Conditional Access on an app-only token is the app's problem, not a user's.
            return if delegated {
                Verdict::NeedsReconsent
            } else {
                Verdict::CredentialInvalid
            };
        }
    }
    match error {
        Some(
            "invalid_client" | "unauthorized_client" | "invalid_scope" | "unsupported_grant_type" | "invalid_resource",
        ) => Verdict::CredentialInvalid,
        Some("invalid_grant" | "interaction_required" | "consent_required") if delegated => Verdict::NeedsReconsent,
        Some("invalid_grant" | "interaction_required" | "consent_required") => Verdict::CredentialInvalid,
        // An unknown 4xx without a known code: retry rather than flag (a flag needs evidence).
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_never_flag() {
        for (status, error, code) in [
            (None, None, None),
            (Some(503), None, None),
            (Some(500), Some("invalid_grant"), Some(50173)),
            (Some(429), None, None),
            (Some(400), Some("temporarily_unavailable"), None),
            (Some(400), Some("invalid_grant"), Some(50196)),
            (Some(429), Some("temporarily_unavailable"), Some(90055)),
        ] {
            for delegated in [false, true] {
                assert_eq!(
                    classify_token_error(status, error, code, delegated),
                    Verdict::Transient,
                    "{status:?} {error:?} {code:?}"
                );
            }
        }
    }

    #[test]
    fn credential_codes_flag_the_app() {
        for code in [7000215, 7000222, 7000218, 700027, 700016] {
            assert_eq!(
                classify_token_error(Some(401), Some("invalid_client"), Some(code), false),
                Verdict::CredentialInvalid
            );
            assert_eq!(
                classify_token_error(Some(401), Some("invalid_client"), Some(code), true),
                Verdict::CredentialInvalid
            );
        }
    }

    #[test]
    fn dead_grants_need_reconsent() {
        for code in [
            50173, 70008, 700082, 50132, 50133, 50055, 50057, 50053, 65001, 65004, 50076, 50079, 53003,
        ] {
            assert_eq!(
                classify_token_error(Some(400), Some("invalid_grant"), Some(code), true),
                Verdict::NeedsReconsent,
                "{code}"
            );
        }
    }
}
