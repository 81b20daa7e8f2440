//! One daemon run of a scenario: a fresh emulator process, seeded; the daemon as another
//! process; the event file read; `/proc` read; the emulator's request log counted.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::children::{Daemon, DaemonSpec, Emulator, WorkDir};
use super::events::{self, EventWatch, unix_now};
use super::measure::{RssSampler, clock_ticks, cpu_seconds};
use super::report::{self, budget, num, ratio};
use super::scenario::{Kind, Plan};

/// How often completion conditions are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often a backlog's delivered counter is sampled: a message counts as delivered at the
/// first sample that saw it, so the sampling adds up to this much to the daemon's time.
const BACKLOG_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What a daemon run leaves behind besides its report.
pub struct DaemonRun {
    /// The report (without machine and command).
    pub report: Map<String, Value>,
    /// Messages per second, for the reference comparison.
    pub messages_per_s: f64,
    /// The query of the daemon's first delta request, replayed by the reference.
    pub delta_query: Option<String>,
    /// The page size each delta request of the daemon asked for, by mailbox, in order: the
    /// reference asks for the same pages.
    pub page_sizes: HashMap<String, Vec<u32>>,
}

/// The `odata.maxpagesize` of every delta request in `log`, by mailbox, in order.
fn delta_page_sizes(log: &[Value]) -> HashMap<String, Vec<u32>> {
    let mut sizes: HashMap<String, Vec<u32>> = HashMap::new();
    for e in log {
        if !e["path"].as_str().is_some_and(|p| p.ends_with("/messages/delta")) {
            continue;
        }
        let size = e["headers"]["prefer"]
            .as_str()
            .and_then(|p| p.split(',').find_map(|p| p.trim().strip_prefix("odata.maxpagesize=")))
            .and_then(|n| n.parse().ok());
        if let (Some(mailbox), Some(size)) = (e["mailbox"].as_str(), size) {
            sizes.entry(mailbox.to_string()).or_default().push(size);
        }
    }
    sizes
}

/// Polls `done` every 100 ms until it holds or `deadline` (Unix seconds) passes.
async fn wait_until(deadline: f64, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if unix_now() >= deadline {
            return false;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Samples the daemon's delivered counter every 20 ms until it reaches `messages` and the
/// event file holds that many distinct events (a duplicate is counted too, so the file is read
/// again each time the counter moves on), or `deadline` passes. Returns what the file held and
/// whether it was complete.
async fn wait_backlog(daemon: &Daemon, messages: usize, deadline: f64) -> (events::Events, bool) {
    let mut delivered = Vec::new();
    let mut read_at = None;
    loop {
        let count = match daemon.metrics().await {
            Ok(text) => metric(&text, "inboxd_messages_delivered_total"),
            Err(_) => None,
        };
        let now = unix_now();
        if let Some(n) = count {
            delivered.push((now, n));
        }
        let over = now >= deadline;
        let moved = count.is_some_and(|n| n >= messages as f64 && read_at.is_none_or(|at| n > at));
        if moved || over {
            read_at = count;
            // Over a gigabyte for a full backlog: read off the runtime's threads.
            let (path, samples) = (daemon.events.clone(), delivered.clone());
            let read = tokio::task::spawn_blocking(move || events::read_once(&path, &samples, unix_now()))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let complete = read.0.len() >= messages;
            if complete || over {
                return (read, complete);
            }
        }
        tokio::time::sleep(BACKLOG_SAMPLE_EVERY).await;
    }
}

/// A sample value of the daemon's `/metrics` text (first series whose name and labels start with `prefix`).
pub(super) fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until the daemon reports every mailbox `active` (each finished its first round).
pub(super) async fn wait_active(daemon: &Daemon, mailboxes: usize, deadline: f64) -> bool {
    loop {
        if let Ok(text) = daemon.metrics().await
            && metric(&text, "inboxd_mailboxes{state=\"active\"}").is_some_and(|n| n as usize >= mailboxes)
        {
            return true;
        }
        if unix_now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Emulated Graph latency from a new message to its change notification.
const NOTIFICATION_DELAY_MS: u64 = 1000;

/// Waits until every mailbox's subscription is active.
async fn wait_subscribed(daemon: &Daemon, mailboxes: usize, deadline: f64) -> bool {
    loop {
        if let Ok(text) = daemon.metrics().await
            && metric(&text, "inboxd_subscriptions{state=\"active\"}").is_some_and(|n| n as usize >= mailboxes)
        {
            return true;
        }
        if unix_now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Graph requests (`/v1.0/…`) naming one of `idle` between `from` and `to` (Unix seconds),
/// per mailbox and hour.
fn idle_calls_per_hour(log: &[Value], idle: &[String], from: f64, to: f64) -> f64 {
    let calls = log
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/v1.0/")))
        .filter(|e| e["mailbox"].as_str().is_some_and(|m| idle.iter().any(|i| i == m)))
        .filter(|e| {
            e["time"]
                .as_str()
                .and_then(report::unix)
                .is_some_and(|t| t >= from && t <= to)
        })
        .count();
    calls as f64 * 3600.0 / ((to - from).max(1.0) * idle.len().max(1) as f64)
}

/// The message number the load generator put in `<gen-{n}-{address}>`.
fn generated_number(internet_message_id: &str) -> Option<f64> {
    internet_message_id
        .strip_prefix("<gen-")?
        .split('-')
        .next()?
        .parse::<u32>()
        .ok()
        .map(f64::from)
}

/// Runs the daemon through `plan` and reports what it did.
pub async fn daemon_run(exe: &Path, plan: &Plan) -> anyhow::Result<DaemonRun> {
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "emulator").await?;
    for spec in &plan.seed {
        emulator.load(spec).await?;
    }
    let ticks = clock_ticks();
    let started = unix_now();
    let deadline = started + plan.deadline_secs;
    let start_at = if matches!(plan.kind, Kind::Steady | Kind::Notify) {
        "now"
    } else {
        "all"
    };
    if plan.safety_poll_secs.is_some() {
        // Graph delivers notifications in under a minute, usually seconds; a second here.
        emulator
            .post(
                "/_emulator/subscriptions/settings",
                &json!({"delivery_delay_ms": NOTIFICATION_DELAY_MS}),
            )
            .await?;
    }
    let daemon = Daemon::start(
        exe,
        &dir.path,
        &emulator.url,
        &DaemonSpec {
            mailboxes: &plan.mailboxes,
            poll_secs: plan.poll_secs,
            start_at,
            safety_poll_secs: plan.safety_poll_secs,
            sink: None,
        },
    )
    .await?;
    let pid = daemon.process.pid();
    let (daemon_cpus, emulator_cpus) = (super::measure::cpus_allowed(pid), emulator.cpus());
    let rss = RssSampler::start(pid);
    // A backlog's file is read once it is all delivered (see `events`); a live load's as it goes.
    let backlog = matches!(plan.kind, Kind::Backlog | Kind::Reference);
    let watch = (!backlog).then(|| EventWatch::start(daemon.events.clone()));
    let mut read_backlog = None;
    let mut live_start = None;
    let mut after_start = None;
    let mut idle_window_start = None;
    let complete = match plan.kind {
        Kind::Backlog | Kind::Reference => {
            let (read, complete) = wait_backlog(&daemon, plan.messages, deadline).await;
            read_backlog = Some(read);
            complete
        }
        Kind::Idle | Kind::Steady | Kind::Notify => {
            let mut active = wait_active(&daemon, plan.mailboxes.len(), deadline).await;
            if plan.safety_poll_secs.is_some() {
                active = active && wait_subscribed(&daemon, plan.mailboxes.len(), deadline).await;
                idle_window_start = Some(unix_now());
            }
            after_start = Some((unix_now(), cpu_seconds(pid, ticks).unwrap_or(f64::NAN)));
            if let Some(live) = &plan.live {
                live_start = Some(unix_now());
                emulator.load(live).await?;
            }
            let run = plan.run_secs.unwrap_or(0.0);
            let until = live_start.unwrap_or(started) + run;
            wait_until(until.min(deadline), || false).await;
            let unique = || watch.as_ref().map_or(0, EventWatch::unique);
            active && wait_until(deadline, || unique() >= plan.messages).await
        }
    };
    let ended = unix_now();
    let cpu = cpu_seconds(pid, ticks).unwrap_or(f64::NAN);
    let peak_mb = rss.peak_bytes() as f64 / (1024.0 * 1024.0);
    let metrics = daemon.metrics().await.unwrap_or_default();
    drop(rss);
    drop(daemon);
    let (seen, duplicates, malformed) = match (watch, read_backlog) {
        (Some(watch), _) => watch.finish(),
        (None, Some(read)) => read,
        (None, None) => Default::default(),
    };
    let log = emulator.requests(0).await?;
    drop(emulator);

    let counts = report::count_requests(&log);
    let delivered = seen.len();
    let mut lags: Vec<f64> = seen
        .iter()
        .map(|s| {
            // Graph's receivedDateTime has whole seconds; the steady load's schedule is finer.
            let scheduled = match (live_start, plan.rate_per_sec, generated_number(&s.internet_message_id)) {
                (Some(t0), Some(rate), Some(n)) => t0 + n / rate,
                _ => s.received_at,
            };
            s.seen_at - s.received_at.max(scheduled)
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let last_seen = seen.iter().map(|s| s.seen_at).fold(started, f64::max);
    let (duration, busy) = match plan.kind {
        Kind::Backlog | Kind::Reference => (last_seen - started, last_seen - started),
        _ => (ended - started, ended - live_start.unwrap_or(started)),
    };
    let messages_per_s = if delivered > 0 { delivered as f64 / busy } else { 0.0 };
    let d = delivered as f64;
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("scenario", json!(plan.kind.name()));
    put("smoke", json!(plan.smoke));
    put("complete", json!(complete));
    put("mailboxes", json!(plan.mailboxes.len()));
    put("poll_interval_s", json!(plan.poll_secs));
    put("messages_seeded", json!(plan.messages));
    put("messages_delivered", json!(delivered));
    put("messages_lost", json!(plan.messages.saturating_sub(delivered)));
    put("duplicate_events", json!(duplicates));
    put("malformed_lines", json!(malformed));
    put("duration_s", num(duration));
    put(
        "messages_per_s",
        if delivered > 0 {
            num(messages_per_s)
        } else {
            Value::Null
        },
    );
    put("graph_api_requests", json!(counts.graph));
    put("graph_api_requests_per_message", ratio(counts.graph as f64, d));
    put(
        "graph_api_requests_per_message_without_attachments",
        ratio((counts.graph - counts.attachments) as f64, d),
    );
    put("delta_requests", json!(counts.delta));
    put("http_round_trips", json!(counts.round_trips));
    put("http_round_trips_per_message", ratio(counts.round_trips as f64, d));
    put("token_requests", json!(counts.tokens));
    put("daemon_cpus", json!(daemon_cpus));
    put("emulator_cpus", json!(emulator_cpus));
    // What the daemon's start (process, store, sink, API) cost before its first request.
    if let Some(at) = counts.first_token_at {
        put("daemon_first_token_request_after_s", num(at - started));
    }
    put("throttled_responses", json!(counts.throttled));
    let p50 = report::quantile(&lags, 0.5).map_or(Value::Null, num);
    let p99 = report::quantile(&lags, 0.99).map_or(Value::Null, num);
    put("delivery_lag_p50_s", p50.clone());
    put("delivery_lag_p99_s", p99.clone());
    put("delivery_lag_max_s", lags.last().copied().map_or(Value::Null, num));
    put(
        "delivery_lag_source",
        json!(
            "time delivered minus arrival in the emulator (received_at, whole seconds; steady: the load \
             generator's schedule, finer). Delivered: a live load's event file is watched every 100 ms \
             (time a line is first seen); a backlog's is read once, at the end, and its k-th message \
             line counts from the first 20 ms sample of inboxd_messages_delivered_total that reached k"
        ),
    );
    put(
        "daemon_lag_histogram_mean_s",
        match (
            metric(&metrics, "inboxd_delivery_lag_seconds_sum"),
            metric(&metrics, "inboxd_delivery_lag_seconds_count"),
        ) {
            (Some(s), Some(c)) => ratio(s, c),
            _ => Value::Null,
        },
    );
    put(
        "daemon_reported_delivered",
        metric(&metrics, "inboxd_messages_delivered_total").map_or(Value::Null, num),
    );
    put("daemon_cpu_seconds", num(cpu));
    put("daemon_cpu_seconds_per_1000_messages", ratio(cpu * 1000.0, d));
    put("daemon_cpu_percent_of_one_core", ratio(cpu * 100.0, ended - started));
    if let Some((t, c)) = after_start {
        put(
            "daemon_cpu_percent_after_first_round",
            ratio((cpu - c) * 100.0, ended - t),
        );
        put("first_round_done_after_s", num(t - started));
    }
    put("daemon_peak_rss_mb", num(peak_mb));
    put("daemon_malloc_env", json!(super::children::malloc_env().1));
    let mut budgets = Map::new();
    match plan.kind {
        Kind::Backlog | Kind::Reference => {
            let without = r["graph_api_requests_per_message_without_attachments"].clone();
            let trips = r["http_round_trips_per_message"].clone();
            budgets.insert(
                "graph_api_requests_per_message_without_attachments".into(),
                budget("<= 1.1", &without, without.as_f64().map(|x| x <= 1.1)),
            );
            budgets.insert(
                "http_round_trips_per_message".into(),
                budget("<= 0.25", &trips, trips.as_f64().map(|x| x <= 0.25)),
            );
            budgets.insert(
                "token_requests".into(),
                budget("== 1", &json!(counts.tokens), Some(counts.tokens == 1)),
            );
            // Bounded by `microsoft.in_flight_bytes` (64 MiB), not by mailbox count or mail size.
            budgets.insert(
                "daemon_peak_rss_mb".into(),
                budget("<= 200", &num(peak_mb), Some(peak_mb <= 200.0)),
            );
        }
        Kind::Idle => {
            let per = report::requests_per_mailbox_interval(&counts, plan.poll_secs as f64).map_or(Value::Null, num);
            let polled = counts.per_mailbox.len();
            r.insert("graph_requests_per_mailbox_per_interval".into(), per.clone());
            r.insert("mailboxes_polled".into(), json!(polled));
            // What idle mailboxes cost once running; the first round is start-up.
            let cpu_pct = r["daemon_cpu_percent_after_first_round"].clone();
            budgets.insert(
                "daemon_peak_rss_mb".into(),
                budget("<= 60", &num(peak_mb), Some(peak_mb <= 60.0)),
            );
            budgets.insert(
                "daemon_cpu_percent_after_first_round".into(),
                budget("<= 3", &cpu_pct, cpu_pct.as_f64().map(|x| x <= 3.0)),
            );
            // One delta call per mailbox and interval; a round takes a little, so just under 1.
            budgets.insert(
                "graph_requests_per_mailbox_per_interval".into(),
                budget(
                    "== 1 delta call per mailbox per interval",
                    &per,
                    per.as_f64()
                        .map(|x| x <= 1.0 && x > 0.95 && polled == plan.mailboxes.len()),
                ),
            );
        }
        Kind::Notify => {
            let window = idle_window_start.map(|t| (t, ended));
            let idle_calls = window.map(|(from, to)| idle_calls_per_hour(&log, &plan.idle, from, to));
            let per_hour = idle_calls.map_or(Value::Null, num);
            r.insert(
                "safety_poll_interval_s".into(),
                json!(plan.safety_poll_secs.unwrap_or(0)),
            );
            r.insert(
                "subscriptions_active".into(),
                metric(&metrics, "inboxd_subscriptions{state=\"active\"}").map_or(Value::Null, num),
            );
            r.insert(
                "subscription_create_requests".into(),
                json!(
                    log.iter()
                        .filter(|e| e["method"] == "POST" && e["path"] == "/v1.0/subscriptions")
                        .count()
                ),
            );
            r.insert("notification_delay_emulated_ms".into(), json!(NOTIFICATION_DELAY_MS));
            r.insert("idle_mailboxes".into(), json!(plan.idle.len()));
            r.insert(
                "idle_window_s".into(),
                window.map_or(Value::Null, |(from, to)| num(to - from)),
            );
            r.insert("graph_calls_per_idle_mailbox_per_hour".into(), per_hour.clone());
            let polling = 3600.0 / plan.poll_secs as f64;
            r.insert("polling_graph_calls_per_idle_mailbox_per_hour".into(), num(polling));
            budgets.insert(
                "delivery_lag_p99_s".into(),
                budget(
                    "<= 5 (notification latency + one round)",
                    &p99,
                    p99.as_f64().map(|x| x <= 5.0),
                ),
            );
            // One safety poll per interval; the window may catch two, whatever their phase.
            let safety = 3600.0 / plan.safety_poll_secs.unwrap_or(1).max(1) as f64;
            budgets.insert(
                "graph_calls_per_idle_mailbox_per_hour".into(),
                budget(
                    &format!(
                        "<= {} (two safety polls per interval; polling every {} s makes {polling})",
                        2.0 * safety,
                        plan.poll_secs
                    ),
                    &per_hour,
                    per_hour.as_f64().map(|x| x <= 2.0 * safety),
                ),
            );
            budgets.insert(
                "messages_lost".into(),
                budget(
                    "== 0",
                    &json!(plan.messages.saturating_sub(delivered)),
                    Some(delivered >= plan.messages),
                ),
            );
        }
        Kind::Steady => {
            let limit = plan.poll_secs as f64 + 1.0;
            budgets.insert(
                "delivery_lag_p99_s".into(),
                budget(
                    &format!("<= {limit} (poll interval + 1 s)"),
                    &p99,
                    p99.as_f64().map(|x| x <= limit),
                ),
            );
            budgets.insert(
                "messages_lost".into(),
                budget(
                    "== 0",
                    &json!(plan.messages.saturating_sub(delivered)),
                    Some(delivered >= plan.messages),
                ),
            );
        }
    }
    r.insert("budget".into(), Value::Object(budgets));
    let delta_query = log
        .iter()
        .find(|e| {
            e.get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| p.ends_with("/messages/delta"))
        })
        .and_then(|e| e.get("query").and_then(Value::as_str))
        .map(str::to_string);
    Ok(DaemonRun {
        report: r,
        messages_per_s,
        delta_query,
        page_sizes: delta_page_sizes(&log),
    })
}
