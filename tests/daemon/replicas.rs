//! Three real `inboxd run` processes sharing the local PostgreSQL (a schema of their own per
//! test) and one emulator: the mailboxes split evenly, a killed replica's mailboxes move to
//! the others within the lease TTL plus a poll interval with nothing lost, a paused replica
//! does not poll what it lost, and terminated connections heal by themselves. PostgreSQL must
//! answer on 127.0.0.1:5432 (`.ci/postgres` starts it); these tests fail when it does not.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use inboxd::event::MessageEvent;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;

use inboxd::store::Store;

use crate::support::{API_TOKEN, Binary, Env, SECRET, SECRET_ENV, TENANT, eventually, log_path, log_time, read_events};

/// Replicas per test.
pub(crate) const REPLICAS: usize = 3;
/// `cluster.lease_ttl` of these tests: short, so a takeover fits in a test.
pub(crate) const TTL: Duration = Duration::from_secs(3);
/// `cluster.heartbeat_interval`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// `poll_interval` of the mailboxes.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// Bound on waits for the cluster to settle or the mail to arrive.
pub(crate) const LIMIT: Duration = Duration::from_secs(40);

pub(crate) fn server() -> String {
    std::env::var("INBOXD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub(crate) async fn admin() -> PgConnection {
    admin_on(&server()).await
}

/// A connection to the database at `url`; fails the test with how to start PostgreSQL.
pub(crate) async fn admin_on(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required and did not answer at {url} ({e}); start it with .ci/postgres (127.0.0.1:5432, trust auth, database `test`)")
    })
}

/// A schema of its own on a server (its name, the server's URL), dropped at the end.
pub(crate) struct Schema(pub(crate) String, String);

impl Schema {
    async fn create() -> Schema {
        Schema::create_on(&server()).await
    }

    /// A schema of its own on the server at `url`.
    pub(crate) async fn create_on(url: &str) -> Schema {
        let name = format!("r_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin_on(url).await)
            .await
            .unwrap();
        Schema(name, url.to_string())
    }

    /// The store URL of the replicas: this schema, and its name on their connections.
    fn url(&self) -> String {
        format!(
            "{}?options=-c%20search_path%3D{}&application_name={}",
            self.1, self.0, self.0
        )
    }

    /// A connection that works in this schema.
    pub(crate) async fn connect(&self) -> PgConnection {
        let mut conn = admin_on(&self.1).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {}", self.0)))
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (name, server) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Each replica signs in as its own app registration, so the emulator's request log tells
/// the replicas apart.
fn client_id(replica: usize) -> String {
    format!("8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b{replica:02}")
}

pub(crate) fn replica_id(replica: usize) -> String {
    format!("r{replica}")
}

/// The emulator, the schema and the replicas' configs.
pub(crate) struct Setup {
    pub(crate) env: Env,
    pub(crate) schema: Schema,
    configs: Vec<PathBuf>,
}

impl Setup {
    async fn new(mailboxes: &[String]) -> Setup {
        Setup::on(mailboxes, Schema::create().await).await
    }

    /// The replicas' configs for `mailboxes`, storing in `schema`.
    pub(crate) async fn on(mailboxes: &[String], schema: Schema) -> Setup {
        let env = Env::new().await;
        let mut configs = Vec::new();
        for i in 0..REPLICAS {
            env.control(
                "/_emulator/apps",
                json!({"tenant_id": TENANT, "client_id": client_id(i), "client_secret": SECRET, "roles": ["Mail.ReadWrite", "Mail.Send"]}),
            )
            .await;
            let mut toml = format!(
                r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
api_tokens = ["dev:{API_TOKEN}"]

[store]
url = "{store}"

[cluster]
replica_id = "{replica}"
lease_ttl = "{ttl}s"
heartbeat_interval = "{heartbeat}s"

[microsoft]
authority_host = "{url}"
graph_url = "{url}"

[sink]
type = "file"
path = "{events}"

[defaults]
poll_interval = "{poll}s"
start_at = "all"

[[apps]]
name = "test"
tenant_id = "{TENANT}"
client_id = "{client}"
client_secret = "env:{SECRET_ENV}"
"#,
                store = schema.url(),
                replica = replica_id(i),
                ttl = TTL.as_secs(),
                heartbeat = HEARTBEAT.as_secs(),
                url = env.url,
                events = env.dir.path().join(format!("inbound-{i}.ndjson")).display(),
                poll = POLL.as_secs(),
                client = client_id(i),
            );
            for m in mailboxes {
                toml.push_str(&format!("\n[[mailboxes]]\naddress = \"{m}\"\napp = \"test\"\n"));
            }
            let path = env.dir.path().join(format!("inboxd-{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            configs.push(path);
        }
        Setup { env, schema, configs }
    }

    /// Starts every replica at once.
    pub(crate) async fn start_all(&self) -> Vec<Binary> {
        let (a, b, c) = tokio::join!(
            self.env.spawn_binary(&self.configs[0], 0),
            self.env.spawn_binary(&self.configs[1], 1),
            self.env.spawn_binary(&self.configs[2], 2),
        );
        vec![a, b, c]
    }

    /// Every replica's message events.
    fn events(&self) -> Vec<MessageEvent> {
        (0..REPLICAS)
            .flat_map(|i| read_events(&self.env.dir.path().join(format!("inbound-{i}.ndjson"))))
            .collect()
    }

    /// Distinct graph ids delivered so far.
    pub(crate) fn delivered(&self) -> HashSet<String> {
        self.events().into_iter().map(|e| e.graph_id).collect()
    }
}

/// `/v1/mailboxes` of one replica: address → owner (None: nobody right now).
pub(crate) async fn owners(binary: &Binary) -> Option<HashMap<String, Option<String>>> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/mailboxes", binary.addr()))
        .bearer_auth(API_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    Some(
        body["mailboxes"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["address"].as_str().unwrap_or_default().to_string(),
                    m["owner"].as_str().map(str::to_string),
                )
            })
            .collect(),
    )
}

/// Mailboxes per owner.
pub(crate) fn spread(owners: &HashMap<String, Option<String>>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for owner in owners.values().flatten() {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}

/// True when every mailbox has an owner among `replicas` and their counts are within one.
pub(crate) fn even(owners: &HashMap<String, Option<String>>, replicas: &[String], total: usize) -> bool {
    let counts = spread(owners);
    let per: Vec<usize> = replicas.iter().map(|r| counts.get(r).copied().unwrap_or(0)).collect();
    owners.len() == total
        && owners
            .values()
            .all(|o| o.as_ref().is_some_and(|o| replicas.contains(o)))
        && per.iter().max().unwrap_or(&0) - per.iter().min().unwrap_or(&0) <= 1
}

/// Waits (bounded) until `binary` shows every mailbox owned by one of `replicas`, spread
/// within one of even; returns whether it did and the last owners seen.
pub(crate) async fn settle(
    binary: &Binary,
    replicas: &[String],
    total: usize,
) -> (bool, HashMap<String, Option<String>>) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let seen = owners(binary).await.unwrap_or_default();
        if even(&seen, replicas, total) || tokio::time::Instant::now() > deadline {
            return (even(&seen, replicas, total), seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delta requests in the emulator's log: (time, mailbox address, client id).
pub(crate) async fn delta_polls(env: &Env) -> Vec<(OffsetDateTime, String, String)> {
    env.requests()
        .await
        .iter()
        .filter(|e| log_path(e).contains("/delta"))
        .filter_map(|e| {
            Some((
                log_time(e),
                e["mailbox"].as_str()?.to_lowercase(),
                e["app"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Fails unless every message was delivered, and each one always with the same dedup key.
pub(crate) fn check_nothing_lost(setup: &Setup, expected: &HashSet<String>) -> usize {
    let events = setup.events();
    let mut keys: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in &events {
        keys.entry(&e.graph_id).or_default().insert(&e.dedup_key);
    }
    let missing: Vec<_> = expected.iter().filter(|id| !keys.contains_key(id.as_str())).collect();
    assert!(missing.is_empty(), "{} messages never delivered", missing.len());
    let split: Vec<_> = keys.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(
        split.is_empty(),
        "messages delivered under different dedup keys: {split:?}"
    );
    events.len() - keys.len()
}

/// Graph ids of every message in the mailboxes.
pub(crate) async fn seeded(env: &Env, mailboxes: &[String]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for m in mailboxes {
        ids.extend(env.inbox_ids(m).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_mailboxes_and_take_over_a_killed_one() {
    let env_mailboxes = 9;
    let per_mailbox = 40;
    let addresses: Vec<String> = (0..env_mailboxes).map(|n| format!("k{n}@load.example.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.load("k", env_mailboxes, per_mailbox).await;
    setup
        .env
        .control("/_emulator/settings", json!({"latency_ms": 50}))
        .await;
    // Mail keeps arriving in every mailbox until after the takeover: the kill lands mid-ingest.
    let (stop_feeding, feeding) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(feed(setup.env.url.clone(), addresses.clone(), feeding));

    // Three replicas at once against an empty schema.
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, env_mailboxes).await;
    println!("spread at start: {:?}", spread(&last));
    assert!(settled, "mailboxes not spread within one of even: {last:?}");
    let migrations: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut setup.schema.connect().await)
        .await
        .unwrap();
    println!("migrations recorded once each: {migrations:?}");
    assert_eq!(migrations, vec![(1, true), (2, true)]);

    // Mid-ingest: the backlog delivered and new mail flowing.
    let backlog = env_mailboxes * per_mailbox;
    let started = eventually(LIMIT, || async { setup.delivered().len() >= backlog }).await;
    assert!(started, "the backlog was not delivered");
    let victims: Vec<String> = last
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("r0"))
        .map(|(m, _)| m.clone())
        .collect();
    replicas[0].kill_9();
    let killed_at = OffsetDateTime::now_utc();
    let at_kill = setup.delivered().len();
    println!(
        "SIGKILL r0 (owner of {} mailboxes) with {at_kill} messages delivered, mail still arriving",
        victims.len(),
    );

    // Each of its mailboxes is polled again by a survivor.
    let mut resumed: HashMap<String, OffsetDateTime> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while resumed.len() < victims.len() && tokio::time::Instant::now() < deadline {
        for (at, mailbox, app) in delta_polls(&setup.env).await {
            if at > killed_at && app != client_id(0) && victims.contains(&mailbox) {
                let first = resumed.entry(mailbox).or_insert(at);
                *first = (*first).min(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = resumed.len() == victims.len();
    assert!(
        moved,
        "not every mailbox of the killed replica was polled again: {resumed:?}"
    );
    let handover = resumed.values().map(|at| *at - killed_at).max().unwrap();
    println!(
        "last of r0's mailboxes polled again {:.2}s after SIGKILL (lease TTL {}s + poll interval {}s)",
        handover.as_seconds_f64(),
        TTL.as_secs(),
        POLL.as_secs()
    );
    assert!(
        handover <= time::Duration::try_from(TTL + POLL).unwrap(),
        "handover took {handover}"
    );

    let _ = stop_feeding.send(true);
    let fed = feeder.await.unwrap();
    let expected = seeded(&setup.env, &addresses).await;
    assert_eq!(expected.len(), backlog + fed);
    let all = eventually(LIMIT, || async { setup.delivered().len() == expected.len() }).await;
    assert!(all, "only {} of {} delivered", setup.delivered().len(), expected.len());
    let duplicates = check_nothing_lost(&setup, &expected);
    let survivors = owners(&replicas[1]).await.unwrap_or_default();
    println!(
        "delivered {} messages, {duplicates} duplicates (same dedup_key); spread after: {:?}",
        expected.len(),
        spread(&survivors)
    );
    assert!(even(&survivors, &ids[1..], env_mailboxes), "{survivors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_does_not_poll_the_mailboxes_it_lost() {
    let addresses: Vec<String> = (0..6).map(|n| format!("p{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    for m in &addresses {
        setup.env.deliver(m, "before the pause").await;
    }
    let replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "not spread: {last:?}");
    assert!(eventually(LIMIT, || async { setup.delivered().len() == addresses.len() }).await);
    let lost: Vec<String> = last
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("r0"))
        .map(|(m, _)| m.clone())
        .collect();

    signal("-STOP", &replicas[0]);
    let paused_at = OffsetDateTime::now_utc();
    let taken = eventually(LIMIT, || async {
        owners(&replicas[1])
            .await
            .is_some_and(|o| lost.iter().all(|m| matches!(o.get(m), Some(Some(r)) if r != "r0")))
    })
    .await;
    assert!(taken, "r0's mailboxes were not taken over while it was paused");
    println!(
        "r0 paused; its {} mailboxes taken over after {:.2}s",
        lost.len(),
        (OffsetDateTime::now_utc() - paused_at).as_seconds_f64()
    );
    for m in &lost {
        setup.env.deliver(m, "during the pause").await;
    }
    let n = addresses.len() + lost.len();
    assert!(eventually(LIMIT, || async { setup.delivered().len() == n }).await);

    let resumed_at = OffsetDateTime::now_utc();
    signal("-CONT", &replicas[0]);
    // Let it wake, find its leases gone, and rejoin: its heartbeat shows again.
    // It wakes, finds each lease gone (renewal refused, or its own deadline passed) and says so.
    let noticed = eventually(LIMIT, || async {
        let log = replicas[0].stderr();
        lost.iter().all(|m| {
            log.lines().any(|l| {
                l.contains(&format!("\"mailbox\":\"{m}\""))
                    && (l.contains("Lost the mailbox's lease") || l.contains("could not be renewed in time"))
            })
        })
    })
    .await;
    assert!(
        noticed,
        "r0 did not notice it lost its leases:\n{}",
        replicas[0].stderr()
    );
    let mut conn = setup.schema.connect().await;
    let claims: HashMap<String, (Option<String>, i64)> =
        sqlx::query_as::<_, (String, Option<String>, i64)>("SELECT mailbox, owner, claimed_ms FROM mailbox_leases")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|(m, o, c)| (m, (o, c)))
            .collect();
    let mut stale = Vec::new();
    let mut reclaimed = 0;
    for (at, mailbox, app) in delta_polls(&setup.env).await {
        if app != client_id(0) || at < resumed_at || !lost.contains(&mailbox) {
            continue;
        }
        // Allowed only under a lease r0 claimed anew after it resumed.
        match claims.get(&mailbox) {
            Some((Some(owner), claimed_ms))
                if owner == "r0" && i128::from(*claimed_ms) * 1_000_000 <= at.unix_timestamp_nanos() =>
            {
                reclaimed += 1
            }
            _ => stale.push((at, mailbox)),
        }
    }
    let metrics = replicas[0].get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    let refusals = crate::support::metric(&metrics, "inboxd_fencing_rejections_total", "");
    println!(
        "after SIGCONT: {} delta polls by r0 for mailboxes it lost, {reclaimed} under a lease claimed anew; fencing refusals on r0: {refusals:?}",
        stale.len()
    );
    assert!(stale.is_empty(), "r0 polled mailboxes it no longer owned: {stale:?}");
    let total = check_nothing_lost(&setup, &seeded(&setup.env, &addresses).await);
    println!("nothing lost; {total} duplicates");
}

/// Delivers a message to each mailbox in turn, every 20 ms, until told to stop; returns how many.
pub(crate) async fn feed(url: String, addresses: Vec<String>, mut stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let http = reqwest::Client::new();
    let mut sent = 0;
    while !*stop.borrow() {
        let address = &addresses[sent % addresses.len()];
        let resp = http
            .post(format!("{url}/_emulator/mailboxes/{address}/messages"))
            .json(&json!({
                "from": {"name": "Customer", "address": "customer@example.net"},
                "to": [{"name": "", "address": address}],
                "subject": format!("live {sent}"),
                "body": {"content_type": "text", "content": "arrived during the test"},
            }))
            .send()
            .await
            .expect("emulator answers");
        assert!(resp.status().is_success(), "deliver: {}", resp.status());
        sent += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => {}
        }
    }
    sent
}

/// Sends a signal to a replica.
fn signal(which: &str, binary: &Binary) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .arg(binary.pid().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_recover_by_themselves_when_their_connections_are_terminated() {
    let addresses: Vec<String> = (0..6).map(|n| format!("t{n}@load.example.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.load("t", addresses.len(), 30).await;
    setup
        .env
        .control("/_emulator/settings", json!({"latency_ms": 50}))
        .await;
    let expected = seeded(&setup.env, &addresses).await;
    let mut replicas = setup.start_all().await;
    let mut admin = admin().await;
    let mut terminated = 0;
    for round in 1..=3 {
        let reached = eventually(LIMIT, || async {
            setup.delivered().len() >= expected.len() * round / 5
        })
        .await;
        assert!(reached, "ingest stalled before termination {round}");
        let n: Vec<bool> =
            sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&setup.schema.0)
                .fetch_all(&mut admin)
                .await
                .unwrap();
        terminated += n.len();
    }
    println!(
        "terminated {terminated} connections of the replicas in 3 rounds, at {} of {} delivered",
        setup.delivered().len(),
        expected.len()
    );
    let all = eventually(LIMIT, || async { setup.delivered().len() == expected.len() }).await;
    assert!(all, "only {} of {} delivered", setup.delivered().len(), expected.len());
    let duplicates = check_nothing_lost(&setup, &expected);
    for (i, r) in replicas.iter_mut().enumerate() {
        assert!(r.wait_exit(Duration::ZERO).await.is_none(), "replica {i} exited");
        let ready = r.get("/readyz").await.map(|(s, _)| s).unwrap_or(0);
        assert_eq!(ready, 200, "replica {i} not ready");
    }
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[0], &ids, addresses.len()).await;
    println!(
        "all {} delivered, {duplicates} duplicates; spread: {:?}",
        expected.len(),
        spread(&last)
    );
    assert!(settled, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_to_postgres_with_nothing_lost_or_repeated() {
    let env = Env::new().await;
    let addresses: Vec<String> = (0..2).map(|n| format!("move{n}@contoso.com")).collect();
    env.mailboxes(&addresses).await;
    for m in &addresses {
        for n in 0..3 {
            env.deliver(m, &format!("before the move {n}")).await;
        }
    }
    // A single-node daemon on SQLite reads the first messages, then stops.
    let sqlite_config = env.config(&addresses, "1s");
    let daemon = env.start(&sqlite_config).await;
    assert_eq!(env.wait_for_events(6, LIMIT).await.len(), 6);
    daemon.stop().await;
    let before: HashSet<String> = env.events().into_iter().map(|e| e.graph_id).collect();
    // What the ingest did not write: an outbox row, a sealed token, a quarantined message and a
    // subscription, with empty and missing values on the way.
    let sqlite_url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let m0 = inboxd::domain::MailboxAddress::parse(&addresses[0]).unwrap();
    let now = OffsetDateTime::now_utc();
    let outbound = inboxd::store::OutboundRecord::queued(
        &m0,
        "key, with \"quotes\"".into(),
        "hash".into(),
        // Several stored pieces in SQLite, with multi-byte characters: joined back in order.
        format!(
            "{{\"kind\":\"reply\",\"comment\":\"line1\\nline2 {}\"}}",
            "é€x".repeat(450_000)
        ),
        "reply",
        now,
    );
    let token = inboxd::store::DelegatedToken {
        mailbox: m0.clone(),
        sealed_token: vec![0, 1, 2, 254, 255],
        scopes: "Mail.ReadWrite offline_access".into(),
        last_used_at: now,
    };
    let quarantined = inboxd::store::QuarantineEntry {
        id: String::new(),
        mailbox: m0.clone(),
        folder: "inbox".into(),
        graph_id: "AAMk=".into(),
        reason: "sink refused: 422".into(),
        at: now,
    };
    {
        let sqlite = inboxd::store::SqliteStore::open(&sqlite_url).await.unwrap();
        sqlite.enqueue_outbound(&outbound).await.unwrap();
        sqlite.save_delegated_token(&token).await.unwrap();
        sqlite.quarantine(&quarantined).await.unwrap();
        sqlite.close().await;
    }

    // The documented move: inboxd creates its tables on an empty schema, the script copies.
    let schema = Schema::create().await;
    inboxd::store::PgStore::open(&schema.url()).await.unwrap().close().await;
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/migrate-sqlite-to-postgres.sh"
        ))
        .arg(env.dir.path().join("inboxd.db"))
        .arg(schema.url())
        .output()
        .expect("the script runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        let pg = inboxd::store::PgStore::open(&schema.url()).await.unwrap();
        let copied = pg
            .outbound_by_key(&m0, &outbound.idempotency_key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (copied.id.as_str(), copied.status),
            (outbound.id.as_str(), outbound.status)
        );
        let due = pg.next_due_outbound(&m0, now).await.unwrap().unwrap();
        assert_eq!(due.request, outbound.request, "the payload survives the copy");
        assert_eq!(due.draft_id, None);
        assert_eq!(pg.delegated_token(&m0).await.unwrap(), Some(token.clone()));
        let q = pg.quarantined(Some(&m0)).await.unwrap();
        assert_eq!(
            (q.len(), q[0].graph_id.as_str(), q[0].reason.as_str()),
            (1, "AAMk=", "sink refused: 422")
        );
        assert_eq!(pg.delivered_total(&m0).await.unwrap(), 3);
        pg.close().await;
    }

    // More mail arrives; a replica on PostgreSQL carries on where SQLite stopped.
    for m in &addresses {
        env.deliver(m, "after the move").await;
    }
    let pg_events = env.dir.path().join("after-move.ndjson");
    let pg_config = sqlite_config
        .replace(
            &format!("url = \"sqlite://{}\"", env.dir.path().join("inboxd.db").display()),
            &format!(
                "url = \"{}\"\n\n[cluster]\nreplica_id = \"mover\"\nlease_ttl = \"3s\"",
                schema.url()
            ),
        )
        .replace(
            &env.events_path().display().to_string(),
            &pg_events.display().to_string(),
        );
    assert!(pg_config.contains("[cluster]"), "{pg_config}");
    let daemon = env.start(&pg_config).await;
    let arrived = eventually(LIMIT, || async { read_events(&pg_events).len() >= 2 }).await;
    assert!(arrived, "the PostgreSQL replica delivered nothing");
    daemon.stop().await;
    let after = read_events(&pg_events);
    let repeated: Vec<_> = after.iter().filter(|e| before.contains(&e.graph_id)).collect();
    println!(
        "{} messages before the move, {} after it, {} delivered again",
        before.len(),
        after.len(),
        repeated.len()
    );
    assert!(
        repeated.is_empty(),
        "messages delivered again after the move: {repeated:?}"
    );
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|e| e.subject == "after the move"));
}

/// POSTs a new message through a replica's API; returns the status and the answer.
async fn send_through(binary: &Binary, mailbox: &str, key: &str, subject: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/mailboxes/{mailbox}/send", binary.addr()))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", key)
        .json(&json!({
            "to": [{"name": "Customer", "address": "customer@example.net"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Sent by one replica of three."},
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the replica answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_asked_of_any_replica_are_sent_once_even_when_one_is_killed() {
    let addresses: Vec<String> = (0..6).map(|n| format!("out{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, _) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "mailboxes not spread");

    // Every replica accepts a message for every mailbox; the same key asked of another replica
    // answers with the same id. Halfway, r0 is killed and its share goes to the others.
    let mut asked: HashMap<String, String> = HashMap::new();
    let mut killed = false;
    for (n, mailbox) in addresses.iter().enumerate() {
        if n == addresses.len() / 2 {
            replicas[0].kill_9();
            killed = true;
        }
        for via in 0..REPLICAS {
            let via = if killed && via == 0 { 1 } else { via };
            let key = format!("key-{n}-{via}");
            let subject = format!("Ticket {n}-{via}");
            let (status, answer) = send_through(&replicas[via], mailbox, &key, &subject).await;
            assert_eq!(status, 202, "{answer}");
            let id = answer["id"].as_str().expect("an outbound id").to_string();
            let again = if via == 2 { 1 } else { 2 };
            let (status, repeat) = send_through(&replicas[again], mailbox, &key, &subject).await;
            assert!(status == 200 || status == 202, "{status} {repeat}");
            assert_eq!(
                repeat["id"].as_str(),
                Some(id.as_str()),
                "the key is unique across replicas"
            );
            asked.insert(subject, mailbox.clone());
        }
    }

    // Each message reaches Sent Items exactly once.
    let mut copies: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        copies.clear();
        for mailbox in &addresses {
            for m in setup.env.folder_messages(mailbox, "sentitems").await {
                if let Some(subject) = m["subject"].as_str() {
                    *copies.entry(subject.to_string()).or_insert(0) += 1;
                }
            }
        }
        if asked.keys().all(|s| copies.contains_key(s)) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent: usize = copies.values().sum();
    println!(
        "{} messages asked of three replicas (one killed halfway), {} distinct sent, {sent} copies in Sent Items",
        asked.len(),
        copies.len()
    );
    let missing: Vec<_> = asked.keys().filter(|s| !copies.contains_key(*s)).collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(copies.len(), asked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_hands_its_mailboxes_over_before_they_expire() {
    let addresses: Vec<String> = (0..6).map(|n| format!("term{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&replicas[1], &ids, addresses.len()).await;
    assert!(settled, "not spread: {last:?}");
    for (i, r) in replicas.iter().enumerate() {
        let text = r.get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
        let held = crate::support::metric(&text, "inboxd_leases", "state=\"held\"");
        assert_eq!(held, Some(2.0), "replica {i}: {held:?}");
    }

    let stopped_at = std::time::Instant::now();
    replicas[0].sigterm();
    assert!(
        replicas[0].wait_exit(LIMIT).await.is_some_and(|s| s.success()),
        "r0 did not exit cleanly"
    );
    let (moved, last) = settle(&replicas[1], &ids[1..], addresses.len()).await;
    let handover = stopped_at.elapsed();
    println!(
        "SIGTERM r0: its mailboxes owned by the others {:.2}s later (lease TTL {}s); spread {:?}",
        handover.as_secs_f64(),
        TTL.as_secs(),
        spread(&last)
    );
    assert!(moved, "{last:?}");
    assert!(
        handover < TTL,
        "took {handover:?}: released leases are taken at the next heartbeat, not at expiry"
    );
    let log = replicas[0].stderr();
    assert!(log.contains("Released this replica's mailbox leases"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_removed_from_the_config_is_released_and_claimed_by_nobody() {
    let addresses: Vec<String> = (0..6).map(|n| format!("cfg{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, _) = settle(&replicas[0], &ids, addresses.len()).await;
    assert!(settled, "not spread");

    // The same ConfigMap change reaches every replica: one mailbox less.
    let removed = addresses[0].clone();
    for path in &setup.configs {
        let toml = std::fs::read_to_string(path).unwrap();
        let edited = toml.replace(
            &format!("\n[[mailboxes]]\naddress = \"{removed}\"\napp = \"test\"\n"),
            "\n",
        );
        assert_ne!(toml, edited);
        std::fs::write(path, edited).unwrap();
    }
    let changed_at = OffsetDateTime::now_utc();
    let mut conn = setup.schema.connect().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut released = false;
    while !released && tokio::time::Instant::now() < deadline {
        let owner: Option<Option<String>> = sqlx::query_scalar("SELECT owner FROM mailbox_leases WHERE mailbox = $1")
            .bind(&removed)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        released = matches!(owner, Some(None));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the removed mailbox's lease was not released");
    let (settled, last) = settle(&replicas[1], &ids, addresses.len() - 1).await;
    assert!(settled && !last.contains_key(&removed), "{last:?}");
    // Several heartbeats later nobody has claimed it, and nobody polls it.
    let quiet_from = OffsetDateTime::now_utc();
    let mut beats = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while beats < 3 && tokio::time::Instant::now() < deadline {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas WHERE heartbeat_ms > $1")
            .bind(i64::try_from(quiet_from.unix_timestamp_nanos() / 1_000_000).unwrap() + 1000 * beats)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if n == REPLICAS as i64 {
            beats += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(beats, 3, "the replicas stopped heartbeating");
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM mailbox_leases WHERE mailbox = $1")
        .bind(&removed)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let polled: Vec<_> = delta_polls(&setup.env)
        .await
        .into_iter()
        .filter(|(at, m, _)| *m == removed && *at > quiet_from)
        .collect();
    println!(
        "{removed} removed at {changed_at}: lease released, owner now {owner:?}, {} polls of it since",
        polled.len()
    );
    assert_eq!(owner, None);
    assert!(polled.is_empty(), "{polled:?}");
}

/// The `field` count of each log line of a replica whose message is `message`.
fn logged_counts(binary: &Binary, message: &str, field: &str) -> Vec<u64> {
    binary
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let fields = if v["fields"].is_object() { &v["fields"] } else { &v };
            (fields["message"] == message).then(|| fields[field].as_u64())?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_takes_its_share_a_few_mailboxes_at_a_time() {
    let addresses: Vec<String> = (0..12).map(|n| format!("join{n}@contoso.com")).collect();
    let setup = Setup::new(&addresses).await;
    setup.env.mailboxes(&addresses).await;
    let (a, b) = tokio::join!(
        setup.env.spawn_binary(&setup.configs[0], 0),
        setup.env.spawn_binary(&setup.configs[1], 1),
    );
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();
    let (settled, last) = settle(&a, &ids[..2], addresses.len()).await;
    assert!(settled, "two replicas did not split 12 mailboxes: {last:?}");

    // Only what happens from the join on counts (the first two may have rebalanced at start).
    let gave_before: Vec<usize> = [&a, &b]
        .iter()
        .map(|r| logged_counts(r, "Gave up leases towards an even split.", "released").len())
        .collect();
    let joined_at = std::time::Instant::now();
    let c = setup.env.spawn_binary(&setup.configs[2], 2).await;
    let (settled, last) = settle(&a, &ids, addresses.len()).await;
    let took = joined_at.elapsed();
    assert!(settled, "the third replica did not get its share: {last:?}");
    let claims = logged_counts(&c, "Claimed mailbox leases.", "claimed");
    let gave: Vec<Vec<u64>> = [&a, &b]
        .iter()
        .zip(&gave_before)
        .map(|(r, before)| logged_counts(r, "Gave up leases towards an even split.", "released")[*before..].to_vec())
        .collect();
    let text = c.get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    let handovers = crate::support::metric(&text, "inboxd_lease_handovers_total", "");
    println!(
        "r2 joined: spread {:?} after {:.1}s; released per heartbeat by r0 {:?} and r1 {:?}; r2's claims {claims:?}; handovers {handovers:?}",
        spread(&last),
        took.as_secs_f64(),
        gave[0],
        gave[1]
    );
    assert_eq!(claims.iter().sum::<u64>(), 4, "{claims:?}");
    // Each of the two others gives up at most a quarter of its share (one) per heartbeat.
    assert_eq!(gave.iter().flatten().sum::<u64>(), 4, "{gave:?}");
    assert!(
        gave.iter().flatten().all(|n| *n == 1),
        "moved too many at once: {gave:?}"
    );
    assert_eq!(handovers, Some(4.0));
    drop(b);
}
