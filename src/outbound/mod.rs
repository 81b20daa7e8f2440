//! Replies, forwards and new mail, exactly once in effect: stored before the API answers,
//! sent through a marked Graph draft, and looked up by that mark before any retry.

mod confirm;
mod machine;
pub mod request;
mod sender;
mod steps;

pub use request::{ApiRequest, Invalid, Kind, OutboundRequest};
pub use sender::{MARKER_PROPERTY, Outbox};
