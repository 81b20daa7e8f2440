//! Command line: parse arguments and hand over to the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit code for a configuration that cannot be used (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit code when another instance holds the store's lock (sysexits EX_TEMPFAIL: it works
/// once the other one stops).
const EXIT_LOCKED: u8 = 75;

/// inboxd: Office 365 / Exchange Online mailboxes to contact-center routing.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon.
    Run {
        /// Configuration file (TOML); every key can be overridden by INBOXD__SECTION__KEY.
        #[arg(long, env = "INBOXD_CONFIG")]
        config: PathBuf,
    },
    /// Validates a configuration file and prints every problem with its key path; no network.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, env = "INBOXD_CONFIG")]
        config: PathBuf,
    },
    /// Checks a configuration against Microsoft (or the emulator) and the sink: one line per check, with the fix.
    Doctor {
        /// Configuration file (TOML).
        #[arg(long, env = "INBOXD_CONFIG")]
        config: PathBuf,
        /// Only read: no draft is created and deleted to check write access.
        #[arg(long)]
        read_only: bool,
        /// Also deliver one test event (schema inboxd.doctor_test.v1) to the sink.
        #[arg(long)]
        send_test_event: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Client(inboxd::client::Command),
    /// Runs the emulator and the daemon together on sample mailboxes and prints what happened.
    Demo {
        /// How long to run at most (e.g. "30s").
        #[arg(long = "for", default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Where the demo's store and event file go.
        #[arg(long, default_value = "./data/demo")]
        data: PathBuf,
    },
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
    /// Runs a benchmark scenario (backlog, idle, steady, reference, notify, all, outbound, replicas or sinks) and prints a JSON report.
    #[cfg(feature = "bench")]
    Bench {
        /// backlog, idle, steady, reference, notify, outbound, replicas or all (all leaves notify, outbound, replicas and sinks out); replicas runs three replicas on PostgreSQL; sinks runs the backlog into the file, NATS and RabbitMQ sinks; compare OLD.json NEW.json prints the ratios of two reports.
        scenario: String,
        /// A tiny version that finishes in seconds (CI); checks the report, not the timings.
        #[arg(long)]
        smoke: bool,
        /// backlog and reference: spread the 20,000 messages over this many mailboxes (a
        /// multiple of 4) instead of 100; idle: poll this many instead of 10,000.
        #[arg(long)]
        mailboxes: Option<usize>,
        /// Also write the report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With `compare`: the old and the new report.
        reports: Vec<PathBuf>,
    },
    /// Exits 0 when the daemon's /livez answers (for the container's HEALTHCHECK).
    Healthcheck {
        /// Base URL of the daemon.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match inboxd::config::load_file(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} apps, {} mailboxes)",
                    config.display(),
                    c.apps.len(),
                    c.mailboxes.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} problem(s):\n{errors}", config.display(), errors.iter().count());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Doctor {
            config,
            read_only,
            send_test_event,
            json,
        } => {
            let options = inboxd::doctor::Options {
                config,
                read_only,
                send_test_event,
            };
            let report = inboxd::doctor::run(&options).await;
            if json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.config_invalid {
                ExitCode::from(EXIT_CONFIG)
            } else if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Client(command) => inboxd::client::run(command).await,
        Command::Run { config } => {
            // Handlers first: a SIGTERM during start-up must still mean a clean stop.
            let stop = inboxd::shutdown_signal();
            let loaded = match inboxd::config::load_file(&config) {
                Ok(c) => {
                    inboxd::telemetry::init_with(&c.server.log_level);
                    c
                }
                Err(errors) => {
                    inboxd::telemetry::init();
                    for e in errors.iter() {
                        tracing::error!(key = %e.path, problem = %e.message, "Invalid configuration.");
                    }
                    eprintln!("{}: {} problem(s):\n{errors}", config.display(), errors.iter().count());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let app = match inboxd::daemon::Daemon::build(loaded)
                .await
                .map(|a| a.reload_from(config.clone()))
            {
                Ok(app) => app,
                Err(e) => {
                    if let Some(inboxd::store::StoreError::Locked(path)) = e.downcast_ref() {
                        tracing::error!(
                            lock_file = %path.display(),
                            error = format!("{e:#}"),
                            "Another inboxd process uses this store; exiting. Stop it, or point store.url elsewhere."
                        );
                        return ExitCode::from(EXIT_LOCKED);
                    }
                    tracing::error!(error = format!("{e:#}"), "Start-up failed.");
                    return ExitCode::FAILURE;
                }
            };
            println!("listening on http://{}", app.local_addr());
            match app.run_until(stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Daemon failed.");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { duration, data } => match inboxd::demo::run(duration, &data).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("inboxd demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Emulate {
            listen,
            scenario,
            tls,
            tls_cert_out,
        } => {
            inboxd::telemetry::init();
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
        #[cfg(feature = "bench")]
        Command::Bench {
            scenario,
            smoke,
            mailboxes,
            out,
            reports,
        } => match inboxd::bench::run(&scenario, smoke, mailboxes, out.as_deref(), &reports).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("inboxd bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Healthcheck { url } => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build();
            let ok = match client {
                Ok(c) => c
                    .get(format!("{}/livez", url.trim_end_matches('/')))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            };
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
