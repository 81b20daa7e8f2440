//! inboxd: connects Office 365 / Exchange Online mailboxes to contact-center routing.
//!
//! The crate is a library driven by a thin `main.rs`, so tests run the real thing
//! in-process on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod domain;
pub mod emulator;
pub mod event;
pub mod graph;
pub mod http;
pub mod intake;
pub mod mailbox;
pub mod metrics;
pub mod outbound;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod task;
pub mod telemetry;

pub use shutdown::shutdown_signal;
