//! Tests of the daemon against the emulator, over real HTTP, with real SQLite files.

mod api_limits;
#[cfg(feature = "bench")]
mod bench_smoke;
mod brokers;
mod cli;
mod cli_client;
mod consent_safety;
mod crash;
mod delegated;
mod doctor;
mod documented;
mod guarantees;
mod hostile;
mod image;
mod lock;
mod memory;
mod monitoring;
mod notifications;
mod outbound;
mod outbound_confirm;
mod pipeline;
mod reload;
mod replicas;
mod replicas_failover;
mod replicas_fencing;
mod replicas_membership;
mod replicas_migration;
mod replicas_restart;
mod resilience;
mod rotation;
mod secrets;
mod support;
mod tokens;
