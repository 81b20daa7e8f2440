//! `inboxd bench replicas`: three replicas on one PostgreSQL database (created for the run,
//! dropped after it) against the emulator, in three parts:
//! - the backlog delivered by the three, next to one single-node SQLite daemon in the same run:
//!   throughput, CPU, messages per CPU second of each and their ratio; nothing lost;
//! - idle mailboxes spread over the three: memory, CPU and mailboxes owned per replica, and
//!   the database's transactions per mailbox and poll interval;
//! - one replica killed with SIGKILL: time until the last of its mailboxes is polled again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::children::{Daemon, DaemonSpec, Emulator, WorkDir};
use super::events::{EventWatch, Seen, unix_now};
use super::measure::{RssSampler, clock_ticks, cpu_seconds, status_bytes};
use super::report::{self, budget, num, ratio};
use super::run::{self, metric};
use super::scenario::{Kind, Plan};

/// The PostgreSQL server (no database: one is created per run), trust auth.
const SERVER_ENV: &str = "INBOXD_BENCH_POSTGRES";
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// Replicas of the cluster under test.
const REPLICAS: usize = 3;
/// The team's target: three replicas deliver at least this share of one daemon's messages per
/// CPU second.
const TARGET_PER_CPU_RATIO: f64 = 0.8;
/// How often completion conditions are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Load generator domain of the idle mailboxes.
const DOMAIN: &str = "load.example.com";
/// `cluster.lease_ttl` of the backlog part: the default (its heartbeat is the default third).
const BACKLOG_TTL_SECS: u64 = 15;
const MIB: f64 = 1024.0 * 1024.0;

/// How big each part is.
struct Sizes {
    /// The backlog (full size: the `backlog` scenario's 20,000 messages).
    backlog: Plan,
    /// Idle mailboxes spread over the replicas.
    idle_mailboxes: usize,
    /// Their `poll_interval`.
    poll_secs: u64,
    /// `cluster.lease_ttl`.
    ttl_secs: u64,
    /// `cluster.heartbeat_interval`.
    heartbeat_secs: u64,
    /// The idle measuring window.
    window_secs: u64,
    /// Bound on settling (every idle mailbox owned and polled) and on the takeover.
    settle_secs: f64,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        let mut backlog = Plan::new(Kind::Backlog, smoke);
        if smoke {
            // 30 mailboxes with 10 small messages each: a few seconds in a debug build.
            backlog.seed = vec![json!({
                "mailboxes": 30, "messages_per_mailbox": 10, "body_bytes": 2_000,
                "attachment_share": 0.2, "attachment_bytes": 10_000,
                "address_prefix": "backlog-", "domain": DOMAIN,
            })];
            backlog.mailboxes = (0..30).map(|i| format!("backlog-{i}@{DOMAIN}")).collect();
            backlog.messages = 300;
            Sizes {
                backlog,
                idle_mailboxes: 30,
                poll_secs: 1,
                ttl_secs: 3,
                heartbeat_secs: 1,
                window_secs: 3,
                settle_secs: 60.0,
            }
        } else {
            // A poll interval of 20 s keeps 10,000 mailboxes at 500 delta calls a second, which
            // the emulator and three replicas sustain on a small machine; the window covers
            // three intervals.
            Sizes {
                backlog,
                idle_mailboxes: 10_000,
                poll_secs: 20,
                ttl_secs: 10,
                heartbeat_secs: 3,
                window_secs: 60,
                settle_secs: 600.0,
            }
        }
    }
}

/// A database of its own on the PostgreSQL server, dropped when the run ends.
struct Database {
    server: String,
    name: String,
}

impl Database {
    /// The server's maintenance database, where `CREATE DATABASE` runs and stats are read.
    async fn admin(server: &str) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&format!("{server}/postgres"))
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {server} (set {SERVER_ENV} to another server; trust auth expected)"
                )
            })
    }

    async fn create() -> anyhow::Result<Database> {
        let server = std::env::var(SERVER_ENV).unwrap_or_else(|_| DEFAULT_SERVER.into());
        let server = server.trim_end_matches('/').to_string();
        let name = format!("inboxd_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = Database::admin(&server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .context("creating the bench database")?;
        Ok(Database { server, name })
    }

    /// The replicas' store URL.
    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Transactions committed and rolled back in this database so far (every statement
    /// outside an explicit transaction is one; an explicit transaction is one).
    async fn transactions(&self) -> anyhow::Result<i64> {
        let mut admin = Database::admin(&self.server).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut admin)
                .await?;
        Ok(n)
    }

    /// Open connections to this database.
    async fn connections(&self) -> anyhow::Result<i64> {
        let mut admin = Database::admin(&self.server).await?;
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut admin)
                .await?,
        )
    }

    /// A connection to this database.
    async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url()).await?)
    }

    /// Mailboxes per lease owner.
    async fn owners(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT owner, count(*) FROM mailbox_leases WHERE owner IS NOT NULL GROUP BY owner")
                .fetch_all(&mut self.connect().await?)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The mailboxes `owner` holds the lease of.
    async fn owned_by(&self, owner: &str) -> anyhow::Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT mailbox FROM mailbox_leases WHERE owner = $1")
            .bind(owner)
            .fetch_all(&mut self.connect().await?)
            .await?;
        Ok(rows.into_iter().map(|m| m.to_ascii_lowercase()).collect())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs outside any async context the runtime would let block: a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = Database::admin(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// How the replicas are configured.
struct ClusterSpec<'a> {
    db_url: String,
    mailboxes: &'a [String],
    poll_secs: u64,
    ttl_secs: u64,
    heartbeat_secs: u64,
    start_at: &'a str,
}

/// Starts the replicas at once, each in a directory of its own (`r0`, `r1`, …), as `r{i}`.
async fn start_replicas(exe: &Path, dir: &Path, emulator: &str, spec: &ClusterSpec<'_>) -> anyhow::Result<Vec<Daemon>> {
    let mut launches = Vec::new();
    for i in 0..REPLICAS {
        let sub = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&sub)?;
        let toml = Daemon::config(
            &sub,
            emulator,
            &DaemonSpec {
                mailboxes: spec.mailboxes,
                poll_secs: spec.poll_secs,
                start_at: spec.start_at,
                safety_poll_secs: None,
                sink: None,
            },
        );
        let sqlite = format!("url = \"sqlite://{}\"", sub.join("inboxd.db").display());
        if !toml.contains(&sqlite) {
            bail!("the generated config has no SQLite store line to replace");
        }
        let toml = toml.replacen(&sqlite, &format!("url = \"{}\"", spec.db_url), 1).replacen(
            "[microsoft]",
            &format!(
                "[cluster]\nreplica_id = \"r{i}\"\nlease_ttl = \"{}s\"\nheartbeat_interval = \"{}s\"\n\n[microsoft]",
                spec.ttl_secs, spec.heartbeat_secs
            ),
            1,
        );
        launches.push(async move { Daemon::launch(exe, &sub, "daemon", &toml, &[("RUST_LOG", "warn")]).await });
    }
    futures_util::future::join_all(launches).await.into_iter().collect()
}

/// Checks every 200 ms until `done` holds or `deadline` (Unix seconds) passes.
async fn wait_for<F: std::future::Future<Output = bool>>(deadline: f64, mut done: impl FnMut() -> F) -> bool {
    loop {
        if done().await {
            return true;
        }
        if unix_now() >= deadline {
            return false;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// CPU seconds of each process, `NaN` where unreadable.
fn cpus(pids: &[u32], ticks: f64) -> Vec<f64> {
    pids.iter()
        .map(|p| cpu_seconds(*p, ticks).unwrap_or(f64::NAN))
        .collect()
}

/// What the files of several processes hold together.
struct Joined {
    /// Messages delivered at least once (by `internet_message_id`).
    messages: usize,
    /// Event lines beyond the first of each message.
    duplicates: usize,
    /// Messages delivered under more than one `dedup_key`.
    split_keys: usize,
    /// When the last first delivery was seen.
    last_seen: Option<f64>,
}

/// Joins what each watch saw: `(seen, duplicates within the file)` per process.
fn join(files: &[(Vec<Seen>, usize)]) -> Joined {
    let mut keys: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut first: HashMap<&str, f64> = HashMap::new();
    let mut lines = 0;
    for (seen, duplicates) in files {
        lines += seen.len() + duplicates;
        for s in seen {
            keys.entry(&s.internet_message_id).or_default().insert(&s.dedup_key);
            let at = first.entry(&s.internet_message_id).or_insert(s.seen_at);
            *at = at.min(s.seen_at);
        }
    }
    Joined {
        messages: keys.len(),
        duplicates: lines - keys.len(),
        split_keys: keys.values().filter(|k| k.len() > 1).count(),
        last_seen: first.values().copied().reduce(f64::max),
    }
}

/// The backlog through three replicas: the part of the report it fills.
async fn backlog(exe: &Path, plan: &Plan) -> anyhow::Result<Map<String, Value>> {
    let db = Database::create().await?;
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "emulator").await?;
    for spec in &plan.seed {
        emulator.load(spec).await?;
    }
    let ticks = clock_ticks();
    let started = unix_now();
    let daemons = start_replicas(
        exe,
        &dir.path,
        &emulator.url,
        &ClusterSpec {
            db_url: db.url(),
            mailboxes: &plan.mailboxes,
            // The backlog scenario's own poll interval; the lease times are the defaults.
            poll_secs: plan.poll_secs,
            ttl_secs: BACKLOG_TTL_SECS,
            heartbeat_secs: BACKLOG_TTL_SECS / 3,
            start_at: "all",
        },
    )
    .await?;
    let pids: Vec<u32> = daemons.iter().map(|d| d.process.pid()).collect();
    let samplers: Vec<RssSampler> = pids.iter().map(|p| RssSampler::start(*p)).collect();
    let watches: Vec<EventWatch> = daemons.iter().map(|d| EventWatch::start(d.events.clone())).collect();
    let deadline = started + plan.deadline_secs;
    let complete = wait_for(deadline, || {
        // Each file counts its own distinct events; only when they add up is the join worth it.
        let enough = watches.iter().map(EventWatch::unique).sum::<usize>() >= plan.messages;
        let joined = enough
            && watches
                .iter()
                .flat_map(EventWatch::message_ids)
                .collect::<HashSet<_>>()
                .len()
                >= plan.messages;
        async move { joined }
    })
    .await;
    let cpu = cpus(&pids, ticks);
    let peaks: Vec<f64> = samplers.iter().map(|s| s.peak_bytes() as f64 / MIB).collect();
    let owners = db.owners().await.unwrap_or_default();
    drop(samplers);
    drop(daemons);
    let files: Vec<(Vec<Seen>, usize)> = watches
        .into_iter()
        .map(|w| {
            let (seen, duplicates, _) = w.finish();
            (seen, duplicates)
        })
        .collect();
    let joined = join(&files);
    let counts = report::count_requests(&emulator.requests(0).await?);
    drop(emulator);
    let busy = joined.last_seen.unwrap_or(started) - started;
    let cpu_total: f64 = cpu.iter().sum();
    let mut r = Map::new();
    r.insert("complete".into(), json!(complete));
    r.insert("mailboxes".into(), json!(plan.mailboxes.len()));
    r.insert("messages_seeded".into(), json!(plan.messages));
    r.insert("messages_delivered".into(), json!(joined.messages));
    r.insert(
        "messages_lost".into(),
        json!(plan.messages.saturating_sub(joined.messages)),
    );
    r.insert("duplicate_events".into(), json!(joined.duplicates));
    r.insert("messages_with_more_than_one_dedup_key".into(), json!(joined.split_keys));
    r.insert(
        "events_per_replica".into(),
        json!(files.iter().map(|(s, d)| s.len() + d).collect::<Vec<_>>()),
    );
    r.insert("duration_s".into(), num(busy));
    r.insert("messages_per_s".into(), ratio(joined.messages as f64, busy));
    r.insert(
        "cpu_seconds_per_replica".into(),
        json!(cpu.iter().map(|c| num(*c)).collect::<Vec<_>>()),
    );
    r.insert("cpu_seconds".into(), num(cpu_total));
    r.insert(
        "messages_per_cpu_second".into(),
        ratio(joined.messages as f64, cpu_total),
    );
    r.insert(
        "peak_rss_mb_per_replica".into(),
        json!(peaks.iter().map(|m| num(*m)).collect::<Vec<_>>()),
    );
    r.insert("mailboxes_owned_at_end".into(), json!(owners));
    r.insert("graph_api_requests".into(), json!(counts.graph));
    r.insert("token_requests".into(), json!(counts.tokens));
    r.insert("lease_ttl_s".into(), json!(BACKLOG_TTL_SECS));
    Ok(r)
}

/// Reads the emulator's request log from where it left off.
struct LogTail {
    since: u64,
}

impl LogTail {
    /// Delta requests since the last call: `(arrival, mailbox)`.
    async fn deltas(&mut self, emulator: &Emulator) -> anyhow::Result<Vec<(f64, String)>> {
        let entries = emulator.requests(self.since).await?;
        let mut out = Vec::new();
        for e in &entries {
            if let Some(seq) = e["seq"].as_u64() {
                self.since = self.since.max(seq);
            }
            let delta = e["path"].as_str().is_some_and(|p| p.ends_with("/messages/delta"));
            if let (true, Some(m), Some(at)) = (delta, e["mailbox"].as_str(), e["time"].as_str().and_then(report::unix))
            {
                out.push((at, m.to_ascii_lowercase()));
            }
        }
        Ok(out)
    }
}

/// Idle mailboxes over three replicas, then one replica killed: the parts of the report they fill.
async fn idle_and_kill(exe: &Path, sizes: &Sizes) -> anyhow::Result<(Map<String, Value>, Map<String, Value>)> {
    let db = Database::create().await?;
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "emulator").await?;
    let n = sizes.idle_mailboxes;
    emulator
        .load(&json!({
            "mailboxes": n, "messages_per_mailbox": 0, "body_bytes": 0, "attachment_share": 0.0,
            "address_prefix": "idle-", "domain": DOMAIN,
        }))
        .await?;
    let mailboxes: Vec<String> = (0..n).map(|i| format!("idle-{i}@{DOMAIN}")).collect();
    let ticks = clock_ticks();
    let started = unix_now();
    let mut daemons = start_replicas(
        exe,
        &dir.path,
        &emulator.url,
        &ClusterSpec {
            db_url: db.url(),
            mailboxes: &mailboxes,
            poll_secs: sizes.poll_secs,
            ttl_secs: sizes.ttl_secs,
            heartbeat_secs: sizes.heartbeat_secs,
            start_at: "now",
        },
    )
    .await?;
    let pids: Vec<u32> = daemons.iter().map(|d| d.process.pid()).collect();
    let samplers: Vec<RssSampler> = pids.iter().map(|p| RssSampler::start(*p)).collect();
    // Settled: every lease held, and every mailbox past its first round on its owner.
    let settled = wait_for(started + sizes.settle_secs, || async {
        let owned: i64 = db.owners().await.map(|o| o.values().sum()).unwrap_or(0);
        let mut active = 0.0;
        for d in &daemons {
            if let Ok(text) = d.metrics().await {
                active += metric(&text, "inboxd_mailboxes{state=\"active\"}").unwrap_or(0.0);
            }
        }
        owned as usize >= n && active as usize >= n
    })
    .await;
    let settled_after = unix_now() - started;
    let mut tail = LogTail { since: 0 };
    tail.deltas(&emulator).await?;
    let (cpu0, tx0, t0) = (cpus(&pids, ticks), db.transactions().await?, unix_now());
    tokio::time::sleep(Duration::from_secs(sizes.window_secs)).await;
    let (cpu1, tx1, t1) = (cpus(&pids, ticks), db.transactions().await?, unix_now());
    let window = t1 - t0;
    let polls_in_window = tail
        .deltas(&emulator)
        .await?
        .iter()
        .filter(|(at, _)| *at >= t0 && *at <= t1)
        .count();
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| status_bytes(*p, "VmRSS").map_or(f64::NAN, |b| b as f64 / MIB))
        .collect();
    let peaks: Vec<f64> = samplers.iter().map(|s| s.peak_bytes() as f64 / MIB).collect();
    let owners = db.owners().await?;
    let connections = db.connections().await.unwrap_or(-1);
    let mailbox_intervals = n as f64 * window / sizes.poll_secs as f64;
    let transactions = tx1 - tx0;
    let mut idle = Map::new();
    idle.insert("complete".into(), json!(settled));
    idle.insert("mailboxes".into(), json!(n));
    idle.insert("poll_interval_s".into(), json!(sizes.poll_secs));
    idle.insert("lease_ttl_s".into(), json!(sizes.ttl_secs));
    idle.insert("heartbeat_interval_s".into(), json!(sizes.heartbeat_secs));
    idle.insert("settled_after_s".into(), num(settled_after));
    idle.insert("window_s".into(), num(window));
    idle.insert(
        "mailboxes_owned_per_replica".into(),
        json!(
            (0..REPLICAS)
                .map(|i| owners.get(&format!("r{i}")).copied().unwrap_or(0))
                .collect::<Vec<_>>()
        ),
    );
    idle.insert(
        "rss_mb_per_replica".into(),
        json!(rss.iter().map(|m| num(*m)).collect::<Vec<_>>()),
    );
    idle.insert(
        "peak_rss_mb_per_replica".into(),
        json!(peaks.iter().map(|m| num(*m)).collect::<Vec<_>>()),
    );
    idle.insert(
        "cpu_percent_of_one_core_per_replica".into(),
        json!(
            cpu0.iter()
                .zip(&cpu1)
                .map(|(a, b)| ratio((b - a) * 100.0, window))
                .collect::<Vec<_>>()
        ),
    );
    idle.insert(
        "cpu_seconds_to_settle_per_replica".into(),
        json!(cpu0.iter().map(|c| num(*c)).collect::<Vec<_>>()),
    );
    idle.insert("postgres_connections".into(), json!(connections));
    idle.insert("postgres_transactions_in_window".into(), json!(transactions));
    idle.insert(
        "postgres_transactions_per_mailbox_per_poll_interval".into(),
        ratio(transactions as f64, mailbox_intervals),
    );
    idle.insert(
        "postgres_transactions_source".into(),
        json!(
            "pg_stat_database xact_commit + xact_rollback of the bench's own database over the window \
             (each statement outside an explicit transaction counts once, an explicit transaction once; \
             pg_stat_statements is not loaded on the server this was written for)"
        ),
    );
    idle.insert(
        "graph_delta_requests_per_mailbox_per_poll_interval".into(),
        ratio(polls_in_window as f64, mailbox_intervals),
    );

    // SIGKILL the first replica (dropping its guard kills it) and watch its mailboxes come back.
    let victims = db.owned_by("r0").await?;
    tail.deltas(&emulator).await?;
    let victim = daemons.remove(0);
    drop(victim);
    let killed_at = unix_now();
    let mut resumed: HashMap<String, f64> = HashMap::new();
    let bound = (sizes.ttl_secs + sizes.poll_secs) as f64;
    let until = killed_at + bound + sizes.settle_secs.min(120.0);
    let all_back = loop {
        for (at, m) in tail.deltas(&emulator).await? {
            if at > killed_at && victims.contains(&m) {
                resumed.entry(m).or_insert(at);
            }
        }
        if resumed.len() >= victims.len() || unix_now() >= until {
            break resumed.len() >= victims.len();
        }
        tokio::time::sleep(CHECK_EVERY).await;
    };
    let owners_after = db.owners().await.unwrap_or_default();
    drop(samplers);
    drop(daemons);
    let mut times: Vec<f64> = resumed.values().map(|at| at - killed_at).collect();
    times.sort_by(f64::total_cmp);
    let mut kill = Map::new();
    kill.insert("complete".into(), json!(all_back && !victims.is_empty()));
    kill.insert("mailboxes_of_killed_replica".into(), json!(victims.len()));
    kill.insert("mailboxes_polled_again".into(), json!(resumed.len()));
    kill.insert(
        "last_polled_again_after_s".into(),
        times.last().copied().map_or(Value::Null, num),
    );
    kill.insert(
        "median_polled_again_after_s".into(),
        report::quantile(&times, 0.5).map_or(Value::Null, num),
    );
    kill.insert("lease_ttl_plus_poll_interval_s".into(), json!(bound));
    kill.insert(
        "source".into(),
        json!(
            "the emulator's request log: first delta request of each of the killed replica's mailboxes after the kill"
        ),
    );
    kill.insert("mailboxes_owned_after".into(), json!(owners_after));
    drop(emulator);
    Ok((idle, kill))
}

/// Runs the three parts and builds the report, `problems` included.
pub async fn run(exe: &Path, smoke: bool) -> anyhow::Result<Map<String, Value>> {
    let sizes = Sizes::new(smoke);
    eprintln!("inboxd bench replicas: backlog on one SQLite daemon");
    let single = run::daemon_run(exe, &sizes.backlog).await?.report;
    eprintln!("inboxd bench replicas: backlog on {REPLICAS} replicas");
    let cluster = backlog(exe, &sizes.backlog).await?;
    eprintln!(
        "inboxd bench replicas: {} idle mailboxes on {REPLICAS} replicas, then SIGKILL of one",
        sizes.idle_mailboxes
    );
    let (idle, kill) = idle_and_kill(exe, &sizes).await?;

    let per_cpu = |r: &Map<String, Value>, delivered: &str, cpu: &str| match (
        r.get(delivered).and_then(Value::as_f64),
        r.get(cpu).and_then(Value::as_f64),
    ) {
        (Some(d), Some(c)) => ratio(d, c),
        _ => Value::Null,
    };
    let single_per_cpu = per_cpu(&single, "messages_delivered", "daemon_cpu_seconds");
    let cluster_per_cpu = per_cpu(&cluster, "messages_delivered", "cpu_seconds");
    let share = match (cluster_per_cpu.as_f64(), single_per_cpu.as_f64()) {
        (Some(c), Some(s)) => ratio(c, s),
        _ => Value::Null,
    };
    let mut single_summary = Map::new();
    for key in [
        "complete",
        "messages_delivered",
        "messages_lost",
        "duplicate_events",
        "duration_s",
        "messages_per_s",
        "daemon_cpu_seconds",
        "daemon_peak_rss_mb",
    ] {
        single_summary.insert(key.into(), single.get(key).cloned().unwrap_or(Value::Null));
    }
    single_summary.insert("messages_per_cpu_second".into(), single_per_cpu);

    let mut problems = Vec::new();
    for (part, r) in [
        ("backlog_single", &single_summary),
        ("backlog_replicas", &cluster),
        ("idle", &idle),
        ("kill", &kill),
    ] {
        if r.get("complete") != Some(&json!(true)) {
            problems.push(format!("{part}: did not complete in time"));
        }
    }
    if cluster["messages_lost"] != json!(0) {
        problems.push(format!("backlog_replicas: {} messages lost", cluster["messages_lost"]));
    }
    if cluster["messages_with_more_than_one_dedup_key"] != json!(0) {
        problems.push("backlog_replicas: a message delivered under different dedup keys".into());
    }
    if share.is_null() {
        problems.push("per-CPU throughput ratio is missing".into());
    }
    for key in ["postgres_transactions_per_mailbox_per_poll_interval"] {
        if idle.get(key).is_none_or(Value::is_null) {
            problems.push(format!("idle: '{key}' is missing"));
        }
    }

    let last = kill["last_polled_again_after_s"].clone();
    let bound = kill["lease_ttl_plus_poll_interval_s"].as_f64().unwrap_or(0.0);
    let mut budgets = Map::new();
    budgets.insert(
        "replicas_to_single_messages_per_cpu_second".into(),
        budget(
            &format!(">= {TARGET_PER_CPU_RATIO}"),
            &share,
            share.as_f64().map(|x| x >= TARGET_PER_CPU_RATIO),
        ),
    );
    // The lease must expire (TTL), a survivor notice it (next heartbeat) and start the mailbox.
    budgets.insert(
        "last_polled_again_after_s".into(),
        budget(
            &format!("<= {bound} (lease TTL + one poll interval)"),
            &last,
            last.as_f64().map(|x| x <= bound),
        ),
    );

    let mut r = Map::new();
    r.insert("scenario".into(), json!("replicas"));
    r.insert("smoke".into(), json!(smoke));
    r.insert("replicas".into(), json!(REPLICAS));
    r.insert("backlog_single".into(), Value::Object(single_summary));
    r.insert("backlog_replicas".into(), Value::Object(cluster));
    r.insert("replicas_to_single_messages_per_cpu_second".into(), share);
    r.insert(
        "cpu_source".into(),
        json!("user + system time of the inboxd processes from /proc (PostgreSQL's own CPU is not included)"),
    );
    r.insert("idle".into(), Value::Object(idle));
    r.insert("kill".into(), Value::Object(kill));
    r.insert("budget".into(), Value::Object(budgets));
    r.insert("problems".into(), json!(problems));
    Ok(r)
}
