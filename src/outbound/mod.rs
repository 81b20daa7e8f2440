//! Replies, forwards and new mail, exactly once in effect: stored before the API answers,
//! sent through a marked Graph draft, and looked up by that mark before any retry.

mod confirm;
mod machine;
pub mod request;
mod sender;
mod steps;

pub use request::{ApiRequest, Invalid, Kind, OutboundRequest};
pub use sender::Outbox;

/// The extended property that marks inboxd's drafts with the outbound id.
pub use crate::graph::MARKER_PROPERTY;
