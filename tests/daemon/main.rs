//! Tests of the daemon against the emulator, over real HTTP, with real SQLite files.

#[cfg(feature = "bench")]
mod bench_smoke;
mod brokers;
mod cli;
mod crash;
mod delegated;
mod documented;
mod guarantees;
mod hostile;
mod image;
mod lock;
mod monitoring;
mod outbound;
mod pipeline;
mod reload;
mod resilience;
mod rotation;
mod secrets;
mod support;
mod tokens;
