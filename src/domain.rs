//! Types that carry meaning across the daemon: mailbox addresses, app names, Graph ids.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A mailbox's primary SMTP address, lower-cased. Shared, not copied: the configuration, the
/// mailbox's task, the status board, the metrics and the supervisor all hold it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailboxAddress(std::sync::Arc<str>);

impl MailboxAddress {
    /// Parses `local@domain`; refuses anything else.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && domain.contains('.')
                    && !domain.contains('@')
                    && !s.contains(char::is_whitespace) =>
            {
                Ok(MailboxAddress(s.to_ascii_lowercase().into()))
            }
            _ => Err(format!("'{s}' is not an email address")),
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MailboxAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        MailboxAddress::parse(&s)
    }
}

impl From<MailboxAddress> for String {
    fn from(a: MailboxAddress) -> String {
        a.0.to_string()
    }
}

impl fmt::Display for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configured name of an app registration (`[[apps]] name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AppName(pub String);

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest wait inboxd takes from a value on the wire (`Retry-After`, `expires_in`): a
/// longer one is capped here, so a hostile or broken answer cannot park a task for ever.
pub const MAX_WIRE_WAIT: Duration = Duration::from_secs(3600);

/// Seconds read from the wire as a duration: `None` for NaN, infinity or a negative value,
/// capped at `max`. The one place untrusted numbers become durations (`from_secs_f64` panics
/// on NaN and overflow).
pub fn bounded_secs(secs: f64, max: Duration) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}

/// An immutable Graph message id (`Prefer: IdType="ImmutableId"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GraphId(pub String);

impl fmt::Display for GraphId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mailbox's state, as `/v1/mailboxes` and `inboxd_mailboxes{state}` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxState {
    /// Configured, not polled yet.
    Starting,
    /// Polling normally.
    Active,
    /// Transient trouble: throttled, Graph or the token endpoint failing.
    Backoff,
    /// The delegated token is dead; a human must consent again.
    NeedsReconsent,
    /// The app's secret or certificate is invalid or expired.
    CredentialInvalid,
    /// The app may not open this mailbox (access policy, RBAC for Applications).
    AccessDenied,
    /// No such mailbox, or not enabled for REST.
    NotFound,
    /// Disabled by config.
    Disabled,
}

impl MailboxState {
    /// Every state, for metrics that report zeros too.
    pub const ALL: [MailboxState; 8] = [
        MailboxState::Starting,
        MailboxState::Active,
        MailboxState::Backoff,
        MailboxState::NeedsReconsent,
        MailboxState::CredentialInvalid,
        MailboxState::AccessDenied,
        MailboxState::NotFound,
        MailboxState::Disabled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Starting => "starting",
            MailboxState::Active => "active",
            MailboxState::Backoff => "backoff",
            MailboxState::NeedsReconsent => "needs_reconsent",
            MailboxState::CredentialInvalid => "credential_invalid",
            MailboxState::AccessDenied => "access_denied",
            MailboxState::NotFound => "not_found",
            MailboxState::Disabled => "disabled",
        }
    }

    /// A flag: the mailbox is skipped until a human or a config change fixes the cause
    /// (replies for it wait; `backoff` is not a flag).
    pub fn is_flagged(self) -> bool {
        matches!(
            self,
            MailboxState::NeedsReconsent
                | MailboxState::CredentialInvalid
                | MailboxState::AccessDenied
                | MailboxState::NotFound
                | MailboxState::Disabled
        )
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<MailboxState> {
        MailboxState::ALL.into_iter().find(|m| m.as_str() == s)
    }
}
