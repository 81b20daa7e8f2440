//! The real binary under `kill -9` and SIGTERM: nothing lost, duplicates only with the same
//! `dedup_key`, and a graceful shutdown that leaves nothing to deliver twice.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use inboxd::event::MessageEvent;
use serde_json::json;

use crate::support::{Binary, Env, count_lines, read_events, torn_lines};

/// How many times the daemon is killed (a kill may overshoot the end of the ingest).
const KILLS: usize = 8;
/// Kills that must land while messages were still undelivered, or the test proved nothing.
const KILLS_DURING_INGEST: usize = 5;
/// Messages delivered to the emulator before each restart (they arrive through delta links):
/// enough that every restart has an ingest of its own for the kill to interrupt. With 3, a fast
/// daemon delivered them before any kill could land, and the test proved too little.
const EXTRA_PER_RESTART: usize = 64;
/// Added by the emulator to every Graph answer during the kill test.
const LATENCY_MS: u64 = 150;
/// Bound on any wait for the daemon to make progress.
const PROGRESS_LIMIT: Duration = Duration::from_secs(30);
/// How long the readiness test holds the daemon's first delta request (inside the grace).
const HOLD: Duration = Duration::from_secs(8);
/// `server.shutdown_grace` of `Env::config`, plus a margin for process exit.
const GRACE_AND_MARGIN: Duration = Duration::from_secs(10 + 5);

/// When a run is killed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Once the event file holds this many lines.
    Lines(usize),
    /// This long after the daemon printed `listening on`.
    After(Duration),
}

/// The seed for this run: `INBOXD_CRASH_SEED` to replay one, else random (printed).
fn seed() -> u64 {
    let seed = std::env::var("INBOXD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (replay with INBOXD_CRASH_SEED={seed})");
    seed
}

/// Graph id → mailbox of every message in the inboxes of `mailboxes`, from the emulator.
async fn seeded(env: &Env, mailboxes: &[String]) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for m in mailboxes {
        for id in env.inbox_ids(m).await {
            ids.insert(id, m.clone());
        }
    }
    ids
}

/// Distinct graph ids in the event file.
fn delivered_ids(path: &Path) -> HashSet<String> {
    read_events(path).into_iter().map(|e| e.graph_id).collect()
}

/// Waits (bounded) until every id of `expected` is in the event file; panics with the log if not.
async fn wait_all_delivered(env: &Env, daemon: &mut Binary, expected: &HashMap<String, String>) {
    let deadline = Instant::now() + PROGRESS_LIMIT;
    loop {
        let got = delivered_ids(&env.events_path());
        let missing = expected.keys().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            return;
        }
        if let Some(status) = daemon.wait_exit(Duration::ZERO).await {
            panic!("inboxd exited on its own ({status}); stderr:\n{}", daemon.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages still undelivered after {PROGRESS_LIMIT:?}; stderr:\n{}",
            expected.len(),
            tail(&daemon.stderr(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then asserts exit status 0 within the grace period plus a margin.
async fn stop_gracefully(daemon: &mut Binary) -> Duration {
    let asked = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(GRACE_AND_MARGIN).await;
    let took = asked.elapsed();
    match status {
        Some(s) if s.success() => took,
        Some(s) => panic!(
            "inboxd exited with {s} after SIGTERM; stderr:\n{}",
            tail(&daemon.stderr(), 40)
        ),
        None => panic!(
            "inboxd still running {GRACE_AND_MARGIN:?} after SIGTERM; stderr:\n{}",
            tail(&daemon.stderr(), 40)
        ),
    }
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every problem with the delivered events: unknown messages, a graph id seen under two
/// dedup keys (or the reverse), messages never delivered. Empty when the guarantee holds.
fn violations(events: &[MessageEvent], expected: &HashMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut key_of: HashMap<&str, &str> = HashMap::new();
    let mut id_of: HashMap<&str, &str> = HashMap::new();
    for e in events {
        match expected.get(&e.graph_id) {
            None => problems.push(format!(
                "event for a message that was not seeded: {} in {}",
                e.graph_id, e.mailbox
            )),
            Some(m) if *m != e.mailbox => {
                problems.push(format!("{} delivered as from {}, it is in {m}", e.graph_id, e.mailbox))
            }
            Some(_) => {}
        }
        let first_key = *key_of.entry(&e.graph_id).or_insert(&e.dedup_key);
        if first_key != e.dedup_key {
            problems.push(format!(
                "{} redelivered with dedup_key {}, first with {first_key}",
                e.graph_id, e.dedup_key
            ));
        }
        let first_id = *id_of.entry(&e.dedup_key).or_insert(&e.graph_id);
        if first_id != e.graph_id {
            problems.push(format!(
                "dedup_key {} used for {first_id} and {}",
                e.dedup_key, e.graph_id
            ));
        }
    }
    let mut missing: Vec<&String> = expected.keys().filter(|id| !key_of.contains_key(id.as_str())).collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} messages never delivered, e.g. {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    problems
}

/// Graph ids delivered more than once, with their counts.
fn duplicates(events: &[MessageEvent]) -> Vec<(String, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in events {
        *counts.entry(&e.graph_id).or_default() += 1;
    }
    let mut dups: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    dups.sort();
    dups
}

/// The largest delta page the daemon asked Graph for (`Prefer: odata.maxpagesize=N` on its
/// delta requests, from the emulator's request log): the most a round has in flight at once.
/// Page sizes vary (each mailbox sizes its pages from what its mail weighs), never above 100.
async fn asked_page_size(env: &Env) -> usize {
    let log = env.requests().await;
    let sizes: HashSet<usize> = log
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/delta")))
        .filter_map(|e| {
            let prefer = e["headers"]["prefer"].as_str()?;
            let at = prefer.find("odata.maxpagesize=")? + "odata.maxpagesize=".len();
            let digits: String = prefer[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    assert!(
        sizes.iter().all(|&n| (1..=100).contains(&n)),
        "page sizes out of range: {sizes:?}"
    );
    // A log read before the daemon's first delta request of the run says nothing: Graph's most.
    sizes.into_iter().max().unwrap_or(100)
}

/// What `run` re-delivered: per mailbox, messages already in the file before it (`before`) that
/// it wrote again (`written`). Returns the problems: a mailbox with more than one page (`page`)
/// re-delivered, or re-delivered messages that were not among that mailbox's last `page`
/// events before the run (only the page in flight at the kill may come again), or a message
/// written twice within the run.
fn redelivery_problems(before: &[MessageEvent], written: &[MessageEvent], page: usize, run: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut per_mailbox: HashMap<&str, Vec<&MessageEvent>> = HashMap::new();
    for e in before {
        per_mailbox.entry(e.mailbox.as_str()).or_default().push(e);
    }
    let mut again: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut in_run = HashSet::new();
    let known: HashSet<&str> = before.iter().map(|e| e.graph_id.as_str()).collect();
    for e in written {
        if !in_run.insert(e.graph_id.as_str()) {
            problems.push(format!("run {run} wrote {} twice", e.graph_id));
        }
        if known.contains(e.graph_id.as_str()) {
            again.entry(e.mailbox.as_str()).or_default().push(&e.graph_id);
        }
    }
    for (mailbox, ids) in again {
        let history = &per_mailbox[mailbox];
        let last_page: HashSet<&str> = history[history.len().saturating_sub(page)..]
            .iter()
            .map(|e| e.graph_id.as_str())
            .collect();
        if ids.len() > page {
            problems.push(format!(
                "run {run} re-delivered {} messages of {mailbox}, more than the {page} of one page in flight",
                ids.len()
            ));
        }
        let older: Vec<&&str> = ids.iter().filter(|id| !last_page.contains(**id)).collect();
        if !older.is_empty() {
            problems.push(format!(
                "run {run} re-delivered {} messages of {mailbox} acknowledged before its last page, e.g. {:?}",
                older.len(),
                &older[..older.len().min(3)]
            ));
        }
    }
    problems
}

/// Panics when the run that turned `before` into `after` re-delivered more than the page in flight
/// per mailbox (the file only grows: `after` starts with `before`).
async fn assert_redelivery_bounded(before: &[MessageEvent], after: &[MessageEvent], env: &Env, run: usize) {
    let prefix: Vec<&str> = after.iter().take(before.len()).map(|e| e.event_id.as_str()).collect();
    let earlier: Vec<&str> = before.iter().map(|e| e.event_id.as_str()).collect();
    assert!(prefix == earlier, "run {run} changed events written before it");
    let page = asked_page_size(env).await;
    let problems = redelivery_problems(before, &after[before.len()..], page, run);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_nothing() {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed());
    let env = Env::new().await;
    let mailboxes = env.load("crash", 8, 250).await;
    let mut expected = seeded(&env, &mailboxes).await;
    assert_eq!(expected.len(), 2_000, "the load generator seeded 8 × 250 messages");
    let config = env.write_config(&env.config(&mailboxes, "200ms"));
    let path = env.events_path();
    // Graph-like latency: a mailbox's 3 delta pages take ≥ 450 ms, and a killed round starts over
    // from its last delta link, so kills within 400 ms of start land mid-ingest (without it the
    // whole ingest takes about 300 ms).
    env.control("/_emulator/settings", json!({"latency_ms": LATENCY_MS}))
        .await;

    let mut during_ingest = 0;
    let mut previous_duplicates = 0;
    for run in 0..KILLS {
        if run > 0 {
            for i in 0..EXTRA_PER_RESTART {
                let mailbox = &mailboxes[rng.usize(..mailboxes.len())];
                let answer = env
                    .deliver(mailbox, &format!("Arrived before restart {run} ({i})"))
                    .await;
                expected.insert(answer["immutable_id"].as_str().unwrap().to_string(), mailbox.clone());
            }
        }
        let events_before = read_events(&path);
        let lines_before = count_lines(&path);
        let undelivered = expected.len() - delivered_ids(&path).len().min(expected.len());
        // Every kill lands before half of what is left is delivered, however fast this machine is:
        // a time-based kill is also cut short by that line count (no timing luck).
        let cap = lines_before + (undelivered / 2).max(1);
        let moment = if rng.bool() {
            Moment::Lines(lines_before + rng.usize(1..=(undelivered / 2).max(1)))
        } else {
            Moment::After(Duration::from_millis(rng.u64(20..400)))
        };
        let mut daemon = env.spawn_binary(&config, run).await;
        let up = Instant::now();
        loop {
            let reached = match moment {
                Moment::Lines(n) => count_lines(&path) >= n,
                Moment::After(d) => up.elapsed() >= d || count_lines(&path) >= cap,
            };
            if reached || up.elapsed() > PROGRESS_LIMIT {
                break;
            }
            if let Some(status) = daemon.wait_exit(Duration::ZERO).await {
                panic!(
                    "inboxd exited on its own ({status}) in run {run}; stderr:\n{}",
                    daemon.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        daemon.kill_9();
        let alive = up.elapsed();

        // A kill may tear the line being written, and only that one: every earlier torn line
        // must have been cut when the sink reopened the file.
        let (torn, total_lines) = torn_lines(&path);
        assert!(
            torn.len() <= 1 && torn.iter().all(|(n, _)| *n == total_lines),
            "after kill {run}: {} unparseable lines of {total_lines} (only the last may be torn): {torn:?}",
            torn.len()
        );
        let events = read_events(&path);
        assert_redelivery_bounded(&events_before, &events, &env, run).await;
        let distinct: HashSet<&str> = events.iter().map(|e| e.graph_id.as_str()).collect();
        let dups = events.len() - distinct.len();
        if distinct.len() < expected.len() {
            during_ingest += 1;
        }
        println!(
            "run {run}: killed at {moment:?} after {alive:?}; {} events ({} distinct of {}), {} torn line(s); \
             duplicates written by this run: {}",
            events.len(),
            distinct.len(),
            expected.len(),
            torn.len(),
            dups - previous_duplicates
        );
        previous_duplicates = dups;
    }

    let events_before = read_events(&path);
    let mut daemon = env.spawn_binary(&config, KILLS).await;
    wait_all_delivered(&env, &mut daemon, &expected).await;
    stop_gracefully(&mut daemon).await;

    let events = read_events(&path);
    assert_redelivery_bounded(&events_before, &events, &env, KILLS).await;
    let (torn, total_lines) = torn_lines(&path);
    let dups = duplicates(&events);
    let duplicate_events: usize = dups.iter().map(|(_, n)| n - 1).sum();
    println!(
        "final: {} events for {} messages; {duplicate_events} duplicate events over {} messages \
         ({} written by the final run); {KILLS} kills, {during_ingest} during the ingest; {:?} in all",
        events.len(),
        expected.len(),
        dups.len(),
        duplicate_events - previous_duplicates,
        started.elapsed()
    );
    assert!(
        torn.is_empty(),
        "the final file has unparseable lines (of {total_lines}): {torn:?}"
    );
    let problems = violations(&events, &expected);
    assert!(
        problems.is_empty(),
        "{} problem(s), the first 20:\n{}\nlast run's stderr:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n"),
        tail(&daemon.stderr(), 40)
    );
    assert!(
        during_ingest >= KILLS_DURING_INGEST,
        "only {during_ingest} of {KILLS} kills landed while mail was undelivered: the crash points were not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_restart_redelivers_nothing() {
    let env = Env::new().await;
    let mailboxes = env.load("drain", 4, 250).await;
    let expected = seeded(&env, &mailboxes).await;
    assert_eq!(expected.len(), 1_000);
    let toml = env.config(&mailboxes, "200ms");
    assert!(
        toml.contains("shutdown_grace = \"10s\""),
        "GRACE_AND_MARGIN assumes a 10 s grace"
    );
    let config = env.write_config(&toml);
    let path = env.events_path();
    // Each Graph answer takes a while, so the SIGTERM surely lands between the first and last page.
    env.control("/_emulator/settings", json!({"latency_ms": 150})).await;

    let mut daemon = env.spawn_binary(&config, 0).await;
    let deadline = Instant::now() + PROGRESS_LIMIT;
    while count_lines(&path) == 0 {
        assert!(
            Instant::now() < deadline,
            "no event within {PROGRESS_LIMIT:?}; stderr:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = stop_gracefully(&mut daemon).await;
    let before: Vec<MessageEvent> = read_events(&path);
    let (torn, _) = torn_lines(&path);
    println!(
        "SIGTERM: exit 0 after {took:?} with {} of {} events delivered",
        before.len(),
        expected.len()
    );
    assert!(torn.is_empty(), "a graceful stop left unparseable lines: {torn:?}");
    assert!(
        !before.is_empty() && before.len() < expected.len(),
        "the SIGTERM should land during the ingest, but {} of {} events were delivered",
        before.len(),
        expected.len()
    );
    let shutdown_log = daemon.stderr();

    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let mut daemon = env.spawn_binary(&config, 1).await;
    wait_all_delivered(&env, &mut daemon, &expected).await;
    stop_gracefully(&mut daemon).await;

    let events = read_events(&path);
    let problems = violations(&events, &expected);
    assert!(
        problems.is_empty(),
        "{} problem(s), the first 20:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    let before_ids: HashSet<&str> = before.iter().map(|e| e.graph_id.as_str()).collect();
    let dups = duplicates(&events);
    let again: Vec<&(String, usize)> = dups.iter().filter(|(id, _)| before_ids.contains(id.as_str())).collect();
    assert!(
        dups.is_empty(),
        "{} messages delivered more than once ({} of them were delivered before the SIGTERM), e.g. {:?}\n\
         stderr of the stopped run:\n{}\nstderr of the restart:\n{}",
        dups.len(),
        again.len(),
        &dups[..dups.len().min(5)],
        tail(&shutdown_log, 20),
        tail(&daemon.stderr(), 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_and_finishes_the_page_in_flight() {
    let env = Env::new().await;
    let mailboxes = env.load("ready", 1, 5).await;
    let expected = seeded(&env, &mailboxes).await;
    // The daemon's first delta request is held: the drain has something to wait for.
    env.control(
        "/_emulator/faults",
        json!({"path_prefix": "/v1.0/users/", "method": "GET", "delay_ms": HOLD.as_millis() as u64, "times": 1}),
    )
    .await;
    let config = env.write_config(&env.config(&mailboxes, "200ms"));
    let mut daemon = env.spawn_binary(&config, 0).await;

    let deadline = Instant::now() + PROGRESS_LIMIT;
    loop {
        let ready = matches!(daemon.get("/readyz").await, Ok((200, _)));
        let held = env.control_get("/_emulator/faults").await["faults"]
            .as_array()
            .is_some_and(Vec::is_empty);
        if ready && held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready with the delta request in flight; stderr:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        count_lines(&env.events_path()) == 0,
        "nothing can be delivered before the held page"
    );

    let asked = Instant::now();
    daemon.sigterm();
    // Until the signal is handled /readyz may still say 200; the held request keeps the drain
    // going until its hold ends, so the first other answer comes while the mailbox is draining
    // (this loop is bounded well inside the hold).
    let deadline = Instant::now() + HOLD - Duration::from_secs(1);
    let answer = loop {
        let answer = daemon.get("/readyz").await;
        if !matches!(answer, Ok((200, _))) || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let answered_after = asked.elapsed();
    let status = daemon.wait_exit(GRACE_AND_MARGIN).await;
    let exited_after = asked.elapsed();
    let log = daemon.stderr();
    println!("/readyz after SIGTERM: {answer:?} after {answered_after:?}; exit {status:?} after {exited_after:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} within {GRACE_AND_MARGIN:?} of SIGTERM, expected 0; stderr:\n{log}"
    );
    let events = read_events(&env.events_path());
    let problems = violations(&events, &expected);
    assert!(
        problems.is_empty() && events.len() == expected.len(),
        "the page in flight at SIGTERM must be delivered before exit: {} events; {}\nstderr:\n{log}",
        events.len(),
        problems.join("\n"),
    );
    assert!(
        exited_after > answered_after,
        "the drain must outlast the readiness check"
    );
    match &answer {
        Ok((503, body)) => assert!(body.contains("not_ready"), "503 body: {body}"),
        other => panic!(
            "/readyz {answered_after:?} after SIGTERM, while the mailbox was still draining (exit came \
             {exited_after:?} after SIGTERM): {other:?}, expected 503 not_ready; stderr:\n{log}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_round_redelivers_at_most_the_page_in_flight() {
    let env = Env::new().await;
    // One mailbox, ten pages in one round: a kill after three pages lands mid-round, long before
    // the round's checkpoint; only what is acknowledged page by page keeps the restart from
    // starting the round's deliveries over.
    let mailboxes = env.load("midround", 1, 1_000).await;
    let expected = seeded(&env, &mailboxes).await;
    assert_eq!(expected.len(), 1_000);
    env.control("/_emulator/settings", json!({"latency_ms": 100})).await;
    let config = env.write_config(&env.config(&mailboxes, "200ms"));
    let path = env.events_path();

    let mut daemon = env.spawn_binary(&config, 0).await;
    let page = {
        let deadline = Instant::now() + PROGRESS_LIMIT;
        loop {
            let delta = env
                .requests()
                .await
                .iter()
                .any(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/delta")));
            if delta {
                break asked_page_size(&env).await;
            }
            assert!(
                Instant::now() < deadline,
                "no delta request; stderr:\n{}",
                daemon.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(
        page < 350,
        "pages of {page} make a round too short to kill in the middle"
    );
    let kill_at = 3 * page + page / 2;
    let deadline = Instant::now() + PROGRESS_LIMIT;
    while read_events(&path).len() < kill_at {
        assert!(
            Instant::now() < deadline,
            "{} of {kill_at} events within {PROGRESS_LIMIT:?}; stderr:\n{}",
            read_events(&path).len(),
            tail(&daemon.stderr(), 40)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.kill_9();
    let before = read_events(&path);
    assert!(
        before.len() < expected.len() - page,
        "the kill landed after {} of {} events, not mid-round: the test proved nothing",
        before.len(),
        expected.len()
    );

    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let mut daemon = env.spawn_binary(&config, 1).await;
    wait_all_delivered(&env, &mut daemon, &expected).await;
    stop_gracefully(&mut daemon).await;
    let after = read_events(&path);
    let problems = violations(&after, &expected);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let redelivered = after.len() - expected.len();
    println!(
        "killed after {} events (pages of {page}); the restart re-delivered {redelivered}",
        before.len()
    );
    assert_redelivery_bounded(&before, &after, &env, 1).await;
}
