//! One mailbox's handle on Graph: the shared client, the mailbox's governor and its
//! credentials, with one method per operation inboxd uses. Every Graph path is built here
//! and in this folder's operation files; callers get `serde` structs that name the fields
//! they read, never a `serde_json::Value` to look fields up in.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Call, CallError, Graph, MailboxGate, segment};
use crate::auth::{AccessToken, TokenSource};

/// What a handle authenticates with.
#[derive(Clone)]
enum Credentials<'a> {
    /// The mailbox's token source: refreshed on a 401, transient failures retried.
    Source(TokenSource),
    /// One token checked before anything is stored (consent, doctor): one exchange, no retry.
    Fixed(&'a AccessToken),
}

/// Graph as one mailbox sees it.
#[derive(Clone)]
pub struct MailboxGraph<'a> {
    graph: &'a Graph,
    gate: &'a MailboxGate,
    credentials: Credentials<'a>,
    /// `users/{address}`, percent-encoded: the root of every path of this mailbox.
    user: String,
}

/// Why an answer could not be used: Graph said yes, but not in the shape inboxd reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Graph's answer to {operation} is not what was expected: {detail}")]
pub struct ShapeError {
    /// The operation (`delta`, `folder`, …).
    pub operation: &'static str,
    /// What was wrong, naming the field (`missing field `id``).
    pub detail: String,
}

impl<'a> MailboxGraph<'a> {
    /// A handle that uses the mailbox's token source.
    pub fn new(graph: &'a Graph, gate: &'a MailboxGate, tokens: TokenSource, address: &str) -> MailboxGraph<'a> {
        MailboxGraph {
            graph,
            gate,
            credentials: Credentials::Source(tokens),
            user: format!("users/{}", segment(address)),
        }
    }

    /// A handle that sends one given token, once per call, with no retry.
    pub fn with_token(
        graph: &'a Graph,
        gate: &'a MailboxGate,
        token: &'a AccessToken,
        address: &str,
    ) -> MailboxGraph<'a> {
        MailboxGraph {
            graph,
            gate,
            credentials: Credentials::Fixed(token),
            user: format!("users/{}", segment(address)),
        }
    }

    /// A path under the mailbox: `users/{address}/{rest}`.
    pub(super) fn path(&self, rest: &str) -> String {
        format!("{}/{rest}", self.user)
    }

    /// Runs a call and returns the answer as it came.
    pub(super) async fn raw(&self, call: &Call) -> Result<Value, CallError> {
        self.typed(call).await
    }

    /// Runs a call and reads its answer as `T` (unknown fields ignored; a missing required
    /// field is a [`ShapeError`] that names it).
    pub(super) async fn typed<T: super::Answer>(&self, call: &Call) -> Result<T, CallError> {
        match &self.credentials {
            Credentials::Source(tokens) => self.graph.call(self.gate, tokens, call).await,
            Credentials::Fixed(token) => self.graph.probe(self.gate, token, call).await,
        }
    }

    /// A mail folder, by id or well-known name (`inbox`, `sentitems`).
    pub async fn folder(&self, folder: &str) -> Result<Folder, CallError> {
        let call = Call::get(
            "folder",
            self.path(&format!("mailFolders/{}?$select=id,displayName", segment(folder))),
        );
        self.typed(&call).await
    }
}

/// Reads one part of an answer, held as its JSON text, as `T` (leniently, see
/// [`super::from_text`]).
pub(super) fn shaped_text<T: DeserializeOwned>(operation: &'static str, text: &str) -> Result<T, ShapeError> {
    super::from_text(text).map_err(|e| ShapeError {
        operation,
        detail: e.to_string(),
    })
}

/// Reads an answer already parsed as a `Value` as `T` (tests build their answers with `json!`).
#[cfg(test)]
pub(super) fn shaped<T: DeserializeOwned>(operation: &'static str, value: Value) -> Result<T, ShapeError> {
    T::deserialize(value).map_err(|e| ShapeError {
        operation,
        detail: e.to_string(),
    })
}

/// A mail folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Folder {
    /// Graph's id of the folder.
    pub id: String,
    /// Its name as the user sees it.
    #[serde(default)]
    pub display_name: Option<String>,
}
