//! Per mailbox: each watched folder can be read (the folder and one delta page) and the
//! mailbox can be written (a draft created and deleted again), with each kind of refusal
//! told apart and its fix.

use std::sync::Arc;

use super::fixes;
use super::report::Check;
use crate::auth::AccessToken;
use crate::config::MailboxConfig;
use crate::graph::{CallError, Graph, GraphError, GraphErrorKind, MailboxGate, MailboxGraph};

/// A token to call Graph with, and what fixes a missing permission for it.
pub struct Bearer {
    /// The access token.
    pub access: Arc<AccessToken>,
    /// The app's client id (Exchange's commands name the app by it).
    pub client_id: String,
    /// A delegated token (a user's), not the app's own.
    pub delegated: bool,
    /// What grants the missing permission: the admin-consent URL, or the mailbox's consent link.
    pub consent: String,
}

/// Runs the Graph checks of mailboxes.
pub struct Probe {
    /// The Graph client (no retries are used: a doctor reports what it sees).
    pub graph: Arc<Graph>,
    /// Skip the write check.
    pub read_only: bool,
}

/// Subject of the draft the write check creates (and deletes at once).
const DRAFT_SUBJECT: &str = "inboxd doctor write check (safe to delete)";

/// Items asked for in the delta page of the read check: one shows that delta answers.
const DELTA_PAGE_SIZE: u32 = 1;

impl Probe {
    /// Checks one mailbox with `bearer`.
    pub async fn check(&self, mailbox: &MailboxConfig, bearer: &Bearer) -> Vec<Check> {
        let address = mailbox.address.as_str();
        let gate = MailboxGate::new(address, 1);
        let graph = MailboxGraph::with_token(&self.graph, &gate, &bearer.access, address);
        let mut checks = Vec::new();
        for folder in &mailbox.folders {
            let read = async {
                graph.folder(folder).await?;
                graph.first_delta_page_ids(folder, DELTA_PAGE_SIZE).await
            };
            match read.await {
                Ok(_) => {}
                Err(CallError::Graph(e)) => {
                    checks.push(failure(address, "read", Some(folder), bearer, &e));
                    return checks;
                }
                Err(e) => {
                    // Not Graph's shape (or, for a fixed token, nothing else can fail here).
                    checks.push(
                        Check::fail("mailbox", address, "read", format!("folder '{folder}': {e}"))
                            .fix("check microsoft.graph_url: it must be Microsoft Graph (or the emulator)"),
                    );
                    return checks;
                }
            }
        }
        checks.push(Check::ok(
            "mailbox",
            address,
            "read",
            format!("folder(s) {} and one delta page answered", mailbox.folders.join(", ")),
        ));
        if self.read_only {
            checks.push(Check::skip("mailbox", address, "write", "--read-only".into()));
            return checks;
        }
        checks.push(match write(&graph).await {
            Ok(()) => Check::ok(
                "mailbox",
                address,
                "write",
                "a draft was created and deleted again".into(),
            ),
            Err(CallError::Graph(e)) => failure(address, "write", None, bearer, &e),
            Err(e) => Check::fail("mailbox", address, "write", e.to_string())
                .fix("check microsoft.graph_url: it must be Microsoft Graph (or the emulator)"),
        });
        checks
    }
}

/// Creates a draft and deletes it for good.
async fn write(graph: &MailboxGraph<'_>) -> Result<(), CallError> {
    let id = graph
        .create_plain_draft(
            DRAFT_SUBJECT,
            "Created by inboxd doctor to check write access; it deletes it at once.",
        )
        .await?;
    graph.permanent_delete(&id).await
}

/// A Graph refusal, told apart: not found, access policy, missing permission, throttled, …
fn failure(address: &str, check: &'static str, folder: Option<&str>, bearer: &Bearer, e: &GraphError) -> Check {
    let said = format!(
        "{} {}: {}",
        e.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()),
        e.code.as_deref().unwrap_or("-"),
        e.message
    );
    let request = e
        .request_id
        .as_deref()
        .map(|r| format!(", request-id {r}"))
        .unwrap_or_default();
    let (what, fix) = match e.kind {
        GraphErrorKind::MailboxNotFound => (
            "the mailbox does not exist or is not enabled for Graph".to_string(),
            "check the address; the mailbox must exist in Exchange Online with a licence (not on-premises, not soft-deleted); a new mailbox can take a while to appear".to_string(),
        ),
        GraphErrorKind::AccessDenied if policy_denial(&e.message) => (
            "access denied by an application access policy or an RBAC for Applications scope".to_string(),
            fixes::access_policy_commands(&bearer.client_id, address),
        ),
        GraphErrorKind::AccessDenied if bearer.delegated => (
            "the consented user cannot open this mailbox, or the grant lacks Mail.ReadWrite".to_string(),
            format!("the mailbox's user (or one with full access to it) consents again: {}", bearer.consent),
        ),
        GraphErrorKind::AccessDenied => (
            "the app lacks the permission (Mail.ReadWrite; Mail.Read is not enough to write)".to_string(),
            format!(
                "add the Microsoft Graph application permissions Mail.ReadWrite and Mail.Send, then grant admin consent: {}",
                bearer.consent
            ),
        ),
        GraphErrorKind::Throttled => (
            format!(
                "throttled by Graph{}",
                e.retry_after
                    .map(|d| format!(" (Retry-After {:.1} s)", d.as_secs_f64()))
                    .unwrap_or_default()
            ),
            "wait and run doctor again; if it persists, other applications use up this mailbox's budget (10,000 requests per 10 minutes per app and mailbox)".to_string(),
        ),
        GraphErrorKind::Unauthorized => (
            "Graph refused the token".to_string(),
            "check tenant_id: the mailbox must belong to the app's tenant".to_string(),
        ),
        GraphErrorKind::ItemNotFound if folder.is_some() => (
            format!("folder '{}' does not exist", folder.unwrap_or_default()),
            "check the mailbox's folders (a well-known name such as inbox, or a folder id)".to_string(),
        ),
        GraphErrorKind::Server | GraphErrorKind::Transport | GraphErrorKind::Malformed => (
            "Graph failed or could not be reached".to_string(),
            "check microsoft.graph_url and this host's network, then run doctor again".to_string(),
        ),
        _ => (
            "Graph refused the request".to_string(),
            "see Graph's message; this is unexpected for a plain mailbox".to_string(),
        ),
    };
    let place = folder.map(|f| format!("folder '{f}': ")).unwrap_or_default();
    Check::fail("mailbox", address, check, format!("{place}{what} ({said}{request})"))
        .fix(fix)
        .graph_code(e.code.clone())
}

/// Exchange's wording when an application access policy or an RBAC scope leaves the mailbox out.
fn policy_denial(message: &str) -> bool {
    message.contains("Access to OData is disabled") || message.contains("[RAOP]")
}
