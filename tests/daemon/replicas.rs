//! What the replica tests share: three real `inboxd run` processes on the local PostgreSQL
//! (a schema of their own per test) and one emulator, and the checks the tests make of them.
//! The tests are in `replicas_*.rs`, one file per behaviour. PostgreSQL must answer on
//! 127.0.0.1:5432 (`.ci/postgres` starts it); these tests fail when it does not.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use inboxd::event::MessageEvent;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;

use crate::support::{API_TOKEN, Binary, Env, SECRET, SECRET_ENV, TENANT, log_path, log_time, read_events};

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
    pub(crate) async fn create() -> Schema {
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
    pub(crate) fn url(&self) -> String {
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
pub(crate) fn client_id(replica: usize) -> String {
    format!("8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b{replica:02}")
}

pub(crate) fn replica_id(replica: usize) -> String {
    format!("r{replica}")
}

/// The emulator, the schema and the replicas' configs.
pub(crate) struct Setup {
    pub(crate) env: Env,
    pub(crate) schema: Schema,
    pub(crate) configs: Vec<PathBuf>,
}

impl Setup {
    pub(crate) async fn new(mailboxes: &[String]) -> Setup {
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
