//! `inboxd bench all --smoke`, `sinks --smoke` and `outbound --smoke`: every scenario runs end
//! to end in seconds and its report is complete and sane (CI keeps the harness working; the
//! timings are not checked).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_inboxd");
/// Generous for a debug build on a busy CI machine; the smoke runs take well under a minute.
const LIMIT: Duration = Duration::from_secs(240);

/// Kills the bench (and with it its children's pipes) if the test fails early.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn number(report: &Value, key: &str) -> f64 {
    let v = &report[key];
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {}: {v}", report["scenario"]));
    assert!(x.is_finite(), "{key} is not finite");
    x
}

/// Runs `inboxd bench SCENARIO --smoke --out FILE` (bounded by [`LIMIT`]), asserts it exited 0
/// and returns the report it wrote.
fn smoke_report(scenario: &str) -> Value {
    smoke_report_in(Command::new(BIN), scenario)
}

/// [`smoke_report`] with `command` (the binary, or a wrapper of it) and its environment.
fn smoke_report_in(mut command: Command, scenario: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let log = std::fs::File::create(dir.path().join("bench.log")).unwrap();
    let mut bench = Kill(
        command
            .args(["bench", scenario, "--smoke", "--out"])
            .arg(&out)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = bench.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < LIMIT,
            "bench {scenario} --smoke still running after {LIMIT:?}"
        );
        #[allow(clippy::disallowed_methods, reason = "a synchronous test polling a child process")]
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(dir.path().join("bench.log")).unwrap();
    assert!(status.success(), "bench {scenario} --smoke failed: {stderr}");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

#[test]
fn the_emulator_can_be_kept_off_the_clients_cpu() {
    // The bench on CPU 0 (the daemon and the reference client with it), the emulator on CPU 1.
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0", BIN]).env("INBOXD_BENCH_EMULATOR_CPUS", "1");
    let r = smoke_report_in(pinned, "reference");
    assert_eq!(r["problems"], serde_json::json!([]));
    // As the kernel lists them for each process.
    assert_eq!(r["machine"]["bench_cpus"], "0");
    assert_eq!(r["daemon_cpus"], "0");
    assert_eq!(r["emulator_cpus"], "1");
    assert_eq!(r["reference_emulator_cpus"], "1");
    assert_eq!(number(&r, "messages_delivered"), number(&r, "messages_seeded"));
    assert_eq!(number(&r, "reference_messages"), number(&r, "messages_seeded"));
}

#[test]
fn every_scenario_reports_every_figure() {
    let all = smoke_report("all");
    let reports = all["reports"].as_array().unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, ["backlog", "reference", "idle", "steady"]);
    for r in reports {
        assert_eq!(r["problems"], serde_json::json!([]), "{}", r["scenario"]);
        assert!(number(r, "daemon_peak_rss_mb") > 1.0);
        assert!(number(r, "daemon_cpu_seconds") >= 0.0);
        assert!(number(r, "duration_s") > 0.0);
        assert!(number(r, "token_requests") >= 1.0);
        assert!(r["machine"]["nproc"].as_u64().unwrap() >= 1);
        assert!(r["command"].as_str().unwrap().contains("bench all --smoke"));
        if r["scenario"] == "idle" {
            assert_eq!(number(r, "messages_delivered"), 0.0);
            assert_eq!(number(r, "mailboxes_polled"), number(r, "mailboxes"));
            assert!(number(r, "graph_requests_per_mailbox_per_interval") > 0.5);
            assert!(number(r, "daemon_cpu_percent_of_one_core") >= 0.0);
            continue;
        }
        // Everything seeded arrives, and the per-message figures follow from real traffic.
        assert_eq!(number(r, "messages_delivered"), number(r, "messages_seeded"));
        assert_eq!(number(r, "messages_lost"), 0.0);
        assert!(number(r, "messages_per_s") > 0.0);
        assert!(number(r, "graph_api_requests_per_message") > 0.0);
        assert!(number(r, "http_round_trips_per_message") > 0.0);
        assert!(number(r, "http_round_trips_per_message") <= number(r, "graph_api_requests_per_message"));
        assert!(number(r, "delivery_lag_p99_s") >= number(r, "delivery_lag_p50_s"));
        assert!(number(r, "daemon_cpu_seconds_per_1000_messages") >= 0.0);
        assert!(r["budget"].as_object().is_some_and(|b| !b.is_empty()));
    }
    let reference = &reports[1];
    assert_eq!(
        number(reference, "reference_messages"),
        number(reference, "messages_seeded")
    );
    assert!(number(reference, "reference_messages_per_s") > 0.0);
    assert!(number(reference, "daemon_to_reference_throughput") > 0.0);
    assert!(number(reference, "reference_graph_api_requests") > 0.0);
}

#[test]
fn the_sinks_bench_delivers_the_backlog_into_each_broker() {
    let report = smoke_report("sinks");
    assert_eq!(report["problems"], serde_json::json!([]));
    for sink in ["file", "nats", "rabbitmq"] {
        let r = &report["sinks"][sink];
        assert_eq!(r["complete"], true, "{sink}: {r}");
        assert_eq!(number(r, "messages_delivered"), number(&report, "messages_seeded"));
        assert!(number(r, "messages_per_s") > 0.0);
    }
    for broker in ["nats", "rabbitmq"] {
        let held = number(&report["sinks"][broker], "broker_events_held");
        assert!(held >= number(&report, "messages_seeded"), "{broker} holds {held}");
    }
    assert!(number(&report, "nats_to_file_throughput") > 0.0);
}

#[test]
fn the_outbound_bench_sends_every_reply_once_and_prunes_the_payloads() {
    let r = smoke_report("outbound");
    assert_eq!(r["scenario"], "outbound");
    assert_eq!(r["problems"], serde_json::json!([]));
    assert_eq!(r["complete"], true);
    // 1 × 4 MB, then 3 × 1 MB: every reply sent, and found exactly once where it lands.
    let replies = number(&r, "replies");
    assert_eq!(replies, 4.0);
    for key in [
        "replies_sent",
        "replies_in_customer_inbox_once",
        "replies_in_sent_items_once",
        "outbound_sent_events",
        "create_reply_requests",
        "send_requests",
    ] {
        assert_eq!(number(&r, key), replies, "{key}");
    }
    assert_eq!(number(&r, "attachment_mb_total"), 7.0);
    assert_eq!(
        number(&r, "upload_sessions"),
        1.0,
        "the 4 MB file goes through an upload session"
    );
    assert_eq!(number(&r, "direct_attachment_requests"), 3.0);
    assert!(number(&r, "largest_request_body_mb") > 5.0);
    assert!(number(&r, "attachment_mb_per_s") > 0.0);
    assert!(number(&r, "daemon_peak_rss_mb") >= number(&r, "daemon_baseline_rss_mb"));
    assert!(number(&r, "daemon_cpu_seconds") >= 0.0);
    // The payloads were stored, then dropped by the prune after the restart.
    assert!(number(&r, "outbox_payload_mb_before_prune") > 9.0);
    assert_eq!(number(&r, "outbox_payload_mb_after_prune"), 0.0);
    assert!(number(&r, "store_mb_before_prune") > 0.0);
    assert!(number(&r, "store_free_pages_mb_after_prune") > number(&r, "store_free_pages_mb_before_prune"));
    assert!(r["budget"]["daemon_peak_rss_mb"]["target"].is_string());
    assert!(r["machine"]["cpu_model"].is_string());
    assert!(r["command"].as_str().unwrap().contains("bench outbound --smoke"));
}

#[test]
fn the_replicas_bench_loses_nothing_and_measures_the_takeover() {
    let r = smoke_report("replicas");
    assert_eq!(r["scenario"], "replicas");
    assert_eq!(r["problems"], serde_json::json!([]));
    let (single, cluster) = (&r["backlog_single"], &r["backlog_replicas"]);
    // 30 mailboxes × 10 messages, on one SQLite daemon and on three replicas: all of it, once
    // per dedup key.
    assert_eq!(number(single, "messages_delivered"), 300.0);
    assert_eq!(number(cluster, "messages_delivered"), 300.0);
    assert_eq!(number(cluster, "messages_lost"), 0.0);
    assert_eq!(number(cluster, "messages_with_more_than_one_dedup_key"), 0.0);
    assert!(number(cluster, "duplicate_events") >= 0.0);
    assert!(number(cluster, "messages_per_cpu_second") > 0.0);
    assert!(number(single, "messages_per_cpu_second") > 0.0);
    assert!(number(&r, "replicas_to_single_messages_per_cpu_second") > 0.0);
    // The idle mailboxes are all owned, by the three together.
    let idle = &r["idle"];
    let owned: Vec<f64> = idle["mailboxes_owned_per_replica"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_f64().unwrap())
        .collect();
    assert_eq!(owned.len(), 3);
    assert_eq!(owned.iter().sum::<f64>(), number(idle, "mailboxes"));
    assert!(number(idle, "postgres_transactions_per_mailbox_per_poll_interval") > 0.0);
    assert!(number(idle, "graph_delta_requests_per_mailbox_per_poll_interval") > 0.5);
    for rss in idle["rss_mb_per_replica"].as_array().unwrap() {
        assert!(rss.as_f64().unwrap() > 1.0);
    }
    // Every mailbox of the killed replica was polled again by the others.
    let kill = &r["kill"];
    assert!(number(kill, "mailboxes_of_killed_replica") > 0.0);
    assert_eq!(
        number(kill, "mailboxes_polled_again"),
        number(kill, "mailboxes_of_killed_replica")
    );
    assert!(number(kill, "last_polled_again_after_s") > 0.0);
    assert!(r["command"].as_str().unwrap().contains("bench replicas --smoke"));
}
