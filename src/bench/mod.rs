//! `inboxd bench <scenario>`: the performance benchmarks. The emulator and the daemon run as
//! separate processes of this binary, so the daemon's CPU and memory are measured alone;
//! one JSON report goes to stdout (and to `--out`).

mod children;
pub mod compare;
mod events;
mod measure;
mod outbound;
mod reference;
mod replicas;
mod report;
mod run;
mod scenario;
mod sinks;

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use report::{budget, num, ratio};
use run::DaemonRun;
use scenario::{Kind, Plan};

/// Scenario names `bench` takes.
pub const SCENARIOS: &str = "backlog, idle, steady, reference, notify, all, outbound, replicas (needs PostgreSQL), sinks (needs NATS and RabbitMQ), or compare OLD.json NEW.json";

/// Runs `scenario` (or `all` of them) at full size or, with `smoke`, tiny; prints the report
/// and fails when the report is incomplete.
pub async fn run(
    scenario: &str,
    smoke: bool,
    mailboxes: Option<usize>,
    out: Option<&Path>,
    reports: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    if scenario == "compare" {
        let [old, new] = reports else {
            bail!("compare takes two report files: inboxd bench compare OLD.json NEW.json");
        };
        return compare::run(old, new);
    }
    if !reports.is_empty() {
        bail!("only compare takes report files");
    }
    let exe = std::env::current_exe().context("locating the inboxd binary")?;
    let kinds = match scenario {
        // The reference right after the backlog it is compared with: figures on this kind of
        // machine drift by a fifth within minutes.
        "all" => vec![Kind::Backlog, Kind::Reference, Kind::Idle, Kind::Steady],
        "sinks" | "outbound" | "replicas" => Vec::new(),
        name => vec![Kind::parse(name).with_context(|| format!("unknown scenario '{name}' (use {SCENARIOS})"))?],
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = measure::machine();
    // These two build their own reports, `problems` included.
    if matches!(scenario, "sinks" | "outbound" | "replicas") {
        eprintln!(
            "inboxd bench: running {scenario}{}",
            if smoke { " (smoke)" } else { "" }
        );
        let mut report = match scenario {
            "sinks" => sinks::run(&exe, smoke).await?,
            "replicas" => replicas::run(&exe, smoke).await?,
            _ => outbound::run(&exe, smoke).await?,
        };
        report.insert("machine".into(), machine);
        report.insert("command".into(), json!(command));
        let text = serde_json::to_string_pretty(&report)?;
        println!("{text}");
        if let Some(path) = out {
            std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))?;
        }
        let problems = report["problems"].as_array().cloned().unwrap_or_default();
        if !problems.is_empty() {
            bail!("incomplete report: {problems:?}");
        }
        return Ok(());
    }
    let mut reports = Vec::new();
    let mut backlog: Option<DaemonRun> = None;
    for kind in kinds {
        eprintln!(
            "inboxd bench: running {}{}",
            kind.name(),
            if smoke { " (smoke)" } else { "" }
        );
        let mut report = match kind {
            Kind::Reference => {
                let daemon = match backlog.take() {
                    Some(b) => b,
                    None => run::daemon_run(&exe, &Plan::sized(Kind::Backlog, smoke, mailboxes)).await?,
                };
                compare(&exe, daemon, &Plan::sized(Kind::Reference, smoke, mailboxes)).await?
            }
            _ => {
                let r = run::daemon_run(&exe, &Plan::sized(kind, smoke, mailboxes)).await?;
                let report = r.report.clone();
                if kind == Kind::Backlog {
                    backlog = Some(r);
                }
                report
            }
        };
        report.insert("machine".into(), machine.clone());
        report.insert("command".into(), json!(command));
        let problems = report::problems(&report);
        report.insert("problems".into(), json!(problems));
        reports.push(Value::Object(report));
    }
    let problems: Vec<String> = reports
        .iter()
        .flat_map(|r| r["problems"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let output = if reports.len() == 1 {
        reports.remove(0)
    } else {
        json!({"scenario": "all", "smoke": smoke, "machine": machine, "command": command, "reports": reports})
    };
    let text = serde_json::to_string_pretty(&output)?;
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    if !problems.is_empty() {
        bail!("incomplete report: {}", problems.join("; "));
    }
    Ok(())
}

/// The `reference` report: the daemon's backlog figures, the reference client's, the ratio.
async fn compare(exe: &Path, daemon: DaemonRun, plan: &Plan) -> anyhow::Result<Map<String, Value>> {
    let reference = reference::run(exe, plan, daemon.delta_query.as_deref(), &daemon.page_sizes).await?;
    let mut r = daemon.report;
    let ref_rate = if reference.duration_s > 0.0 {
        reference.messages as f64 / reference.duration_s
    } else {
        0.0
    };
    let share = ratio(daemon.messages_per_s, ref_rate);
    r.insert("scenario".into(), json!("reference"));
    r.insert("reference_messages".into(), json!(reference.messages));
    r.insert("reference_duration_s".into(), num(reference.duration_s));
    r.insert("reference_messages_per_s".into(), num(ref_rate));
    r.insert("reference_bytes_written".into(), json!(reference.bytes));
    r.insert("reference_graph_api_requests".into(), json!(reference.counts.graph));
    r.insert("reference_http_round_trips".into(), json!(reference.counts.round_trips));
    r.insert("reference_token_requests".into(), json!(reference.counts.tokens));
    r.insert("reference_emulator_cpus".into(), json!(reference.emulator_cpus));
    if let Some(cpu) = reference.cpu_seconds {
        r.insert("reference_cpu_seconds".into(), num(cpu));
        let per_1000 = (reference.messages > 0).then(|| cpu * 1000.0 / reference.messages as f64);
        r.insert(
            "reference_cpu_seconds_per_1000_messages".into(),
            per_1000.map_or(Value::Null, num),
        );
    }
    r.insert("daemon_to_reference_throughput".into(), share.clone());
    let mut budgets = r.get("budget").and_then(Value::as_object).cloned().unwrap_or_default();
    budgets.insert(
        "daemon_to_reference_throughput".into(),
        budget(">= 0.9", &share, share.as_f64().map(|x| x >= 0.9)),
    );
    r.insert("budget".into(), Value::Object(budgets));
    if reference.messages as usize != plan.messages {
        bail!(
            "the reference client saw {} messages, {} were seeded",
            reference.messages,
            plan.messages
        );
    }
    Ok(r)
}
