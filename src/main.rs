//! Command line: parse arguments and hand over to the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// inboxd: Office 365 / Exchange Online mailboxes to contact-center routing.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the Microsoft identity + Graph mail emulator.
    Emulate {
        /// Address to listen on; port 0 picks a free port (printed on the first line).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// JSON scenario that seeds apps, mailboxes and messages at start.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Serve HTTPS with a fresh self-signed certificate.
        #[arg(long)]
        tls: bool,
        /// Where to write the self-signed certificate (PEM); implies --tls.
        #[arg(long)]
        tls_cert_out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    inboxd::telemetry::init();
    match cli.command {
        Command::Emulate {
            listen,
            scenario,
            tls,
            tls_cert_out,
        } => {
            let options = inboxd::emulator::EmulatorOptions {
                tls: tls || tls_cert_out.is_some(),
                scenario,
            };
            match inboxd::emulator::run_cli(listen, options, tls_cert_out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("inboxd emulate: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
