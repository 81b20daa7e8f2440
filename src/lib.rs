//! inboxd: connects Office 365 / Exchange Online mailboxes to contact-center routing.
//!
//! The crate is a library driven by a thin `main.rs`, so tests run the real thing
//! in-process on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod emulator;
pub mod telemetry;
