//! The terminal commands that talk to a running daemon over its `/v1` API: `status`,
//! `consent`, `quarantine` and `outbound`. The API token comes from `INBOXD_API_TOKEN` or a
//! file, never from an argument (arguments are visible to every user in `ps`).

mod api;
mod consent;
mod outbound;
mod quarantine;
mod status;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use api::{ApiClient, ClientError};

/// Where the daemon is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Base URL of the daemon's API.
    #[arg(long, env = "INBOXD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// File holding the API token (else INBOXD_API_TOKEN is used).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// The API-calling commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Shows every mailbox and its state (a table on a terminal, JSON otherwise).
    Status {
        /// The daemon.
        #[command(flatten)]
        target: Target,
        /// Print JSON even on a terminal.
        #[arg(long, conflicts_with = "table")]
        json: bool,
        /// Print the table even when stdout is not a terminal (without colours).
        #[arg(long)]
        table: bool,
    },
    /// Prints a delegated mailbox's consent URL and waits until the mailbox is active.
    Consent {
        /// The mailbox address.
        mailbox: String,
        /// The daemon.
        #[command(flatten)]
        target: Target,
        /// Give up after this long (e.g. "15m").
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Lists quarantined messages or asks for one to be delivered again.
    Quarantine {
        /// What to do.
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Shows outbound requests (replies, forwards, new mail).
    Outbound {
        /// What to do.
        #[command(subcommand)]
        action: OutboundAction,
    },
}

/// `inboxd quarantine …`.
#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// Lists quarantined messages, newest first.
    List {
        /// The daemon.
        #[command(flatten)]
        target: Target,
        /// Only this mailbox's.
        #[arg(long)]
        mailbox: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Asks for one quarantined message to be delivered again.
    Replay {
        /// The quarantine entry's id (from `quarantine list`).
        id: String,
        /// The daemon.
        #[command(flatten)]
        target: Target,
    },
}

/// `inboxd outbound …`.
#[derive(Debug, Subcommand)]
pub enum OutboundAction {
    /// Shows one outbound request's status.
    Show {
        /// The id the API answered with.
        id: String,
        /// The daemon.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a command; errors are printed to stderr and become the exit code.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Status { target, json, table } => match ApiClient::from_target(&target) {
            Ok(c) => status::run(&c, json, table).await,
            Err(e) => Err(e),
        },
        Command::Consent {
            mailbox,
            target,
            timeout,
        } => match ApiClient::from_target(&target) {
            Ok(c) => consent::run(&c, &mailbox, timeout).await,
            Err(e) => Err(e),
        },
        Command::Quarantine {
            action: QuarantineAction::List { target, mailbox, json },
        } => match ApiClient::from_target(&target) {
            Ok(c) => quarantine::list(&c, mailbox.as_deref(), json).await,
            Err(e) => Err(e),
        },
        Command::Quarantine {
            action: QuarantineAction::Replay { id, target },
        } => match ApiClient::from_target(&target) {
            Ok(c) => quarantine::replay(&c, &id).await,
            Err(e) => Err(e),
        },
        Command::Outbound {
            action: OutboundAction::Show { id, target, json },
        } => match ApiClient::from_target(&target) {
            Ok(c) => outbound::show(&c, &id, json).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("inboxd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
