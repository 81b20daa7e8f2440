//! Tests of the daemon against the emulator, over real HTTP, with real SQLite files.

mod crash;
mod support;
mod cli;
mod pipeline;
mod resilience;
mod tokens;
