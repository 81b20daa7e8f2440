//! Access tokens: client credentials (secret or certificate) per app registration, kept
//! fresh in a shared, lock-free cache with single-flight refresh; AADSTS classification.

mod assertion;
mod classify;
mod token_cache;

pub use classify::{Verdict, classify_token_error};
pub use token_cache::{AccessToken, AppTokens, TokenError, describe};
