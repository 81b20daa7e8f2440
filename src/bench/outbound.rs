//! `inboxd bench outbound`: large replies through the API. One reply with 100 MB of
//! attachments, then 50 with 20 MB each, posted one after another as fast as the API accepts
//! them, so a queue forms in the store while the sender works. The daemon's peak RSS is held
//! to a budget that follows the largest single request, never the sum of the queue. Every
//! reply must reach the customer and Sent Items exactly once with each attachment at its size.
//! Then the daemon restarts with a short retention, and the store is measured before and after
//! the finished rows' payloads are dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::children::{CLIENT_ID, Daemon, DaemonSpec, Emulator, SECRET, TENANT, WorkDir, malloc_env};
use super::events::unix_now;
use super::measure::{RssSampler, clock_ticks, cpu_seconds, status_bytes};
use super::report::{budget, num, ratio};
use super::run::{metric, wait_active};

/// The mailbox inboxd sends from.
const SUPPORT: &str = "support@outbound.bench.example.com";
/// The customer: a mailbox in the emulator, so each reply is counted where it lands.
const CUSTOMER: &str = "customer@outbound.bench.example.com";
/// Environment variable the generated config points at for the API token.
const API_TOKEN_ENV: &str = "INBOXD_BENCH_API_TOKEN";
/// The bench's API token (handed over through [`API_TOKEN_ENV`], never written to the config).
const API_TOKEN: &str = "bench-api-token";
const MIB: usize = 1024 * 1024;
/// How often statuses and the store are polled.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Peak RSS budget: the daemon's RSS before the first request plus this many times the
/// largest request body. The API holds a request's body and its parsed form at once, then
/// the stored text; the sender reads one row back, parses it and decodes one attachment; the
/// two overlap while the queue is being filled. Four copies of the largest request cover that;
/// anything that grows with the queue does not fit.
const RSS_BUDGET_REQUESTS: f64 = 4.0;
/// `outbound.retention` of the restarted daemon, seconds.
const PRUNE_RETENTION_SECS: f64 = 1.0;

/// What is posted.
struct Sizes {
    /// The attachments of the first, large reply (bytes each).
    large: Vec<usize>,
    /// How many replies follow it.
    queued: usize,
    /// The attachments of each of those.
    each: Vec<usize>,
    /// Hard stop for the whole run, seconds.
    deadline_secs: f64,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            // One upload session and a few direct attachments.
            Sizes {
                large: vec![4 * MIB],
                queued: 3,
                each: vec![MIB],
                deadline_secs: 120.0,
            }
        } else {
            // 100 MB in four upload sessions; then 20 MB as one upload session and four
            // attachments small enough to be added in one request each.
            Sizes {
                large: vec![25 * MIB; 4],
                queued: 50,
                each: vec![16 * MIB, MIB, MIB, MIB, MIB],
                deadline_secs: 1800.0,
            }
        }
    }

    /// The attachment sizes of every reply, the large one first.
    fn replies(&self) -> Vec<Vec<usize>> {
        std::iter::once(self.large.clone())
            .chain(std::iter::repeat_n(self.each.clone(), self.queued))
            .collect()
    }
}

/// One reply as posted.
struct Posted {
    /// Its `Idempotency-Key`, also written into its comment to find it again.
    key: String,
    /// The outbound id the API answered.
    id: String,
    /// `(name, size)` of its attachments, sorted.
    attachments: Vec<(String, u64)>,
}

/// The daemon's API over HTTP with the bench token.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// `POST …/reply`; returns the outbound id of a 202.
    async fn reply(&self, original: &str, key: &str, body: Vec<u8>) -> anyhow::Result<String> {
        let url = format!(
            "{}/v1/mailboxes/{SUPPORT}/messages/{}/reply",
            self.base,
            crate::graph::segment(original)
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("posting reply {key}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 202 {
            bail!("reply {key} answered {status}: {answer}");
        }
        answer["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("reply {key}: 202 without an id: {answer}"))
    }

    /// The status of outbound `id`.
    async fn status(&self, id: &str) -> anyhow::Result<String> {
        let view: Value = self
            .http
            .get(format!("{}/v1/outbound/{id}", self.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(view["status"].as_str().unwrap_or("?").to_string())
    }
}

/// A Graph client on the emulator with its own app-only token, to count what arrived.
struct Graph {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Graph {
    async fn new(emulator: &str) -> anyhow::Result<Graph> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let token: Value = http
            .post(format!("{emulator}/{TENANT}/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = token["access_token"]
            .as_str()
            .context("token response without access_token")?
            .to_string();
        Ok(Graph {
            base: emulator.to_string(),
            http,
            token,
        })
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .json()
            .await?)
    }

    /// For every message of `folder` in `mailbox` whose body names a key in `keys`: how many
    /// copies there are and the `(name, size)` list of each copy's attachments.
    async fn copies(
        &self,
        mailbox: &str,
        folder: &str,
        keys: &[String],
    ) -> anyhow::Result<BTreeMap<String, Vec<Vec<(String, u64)>>>> {
        let mut found: BTreeMap<String, Vec<Vec<(String, u64)>>> = BTreeMap::new();
        let mut url = Some(format!(
            "{}/v1.0/users/{mailbox}/mailFolders/{folder}/messages?%24select=id,body&%24top=100",
            self.base
        ));
        while let Some(page_url) = url.take() {
            let page = self.get(&page_url).await?;
            for m in page["value"].as_array().into_iter().flatten() {
                let body = m.pointer("/body/content").and_then(Value::as_str).unwrap_or_default();
                let Some(key) = keys.iter().find(|k| body.contains(&marker(k))) else {
                    continue;
                };
                let id = m["id"].as_str().context("message without id")?;
                let listed = self
                    .get(&format!(
                        "{}/v1.0/users/{mailbox}/messages/{}/attachments?%24select=id,name,size",
                        self.base,
                        crate::graph::segment(id)
                    ))
                    .await?;
                let mut attachments: Vec<(String, u64)> = listed["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| Some((a["name"].as_str()?.to_string(), a["size"].as_u64()?)))
                    .collect();
                attachments.sort();
                found.entry(key.clone()).or_default().push(attachments);
            }
            url = page["@odata.nextLink"].as_str().map(str::to_string);
        }
        Ok(found)
    }
}

/// The text each reply's comment carries, unique per key.
fn marker(key: &str) -> String {
    format!("[{key}]")
}

/// Pseudo-random content of `size` bytes, base64.
fn content(size: usize) -> String {
    let mut bytes = vec![0u8; size];
    fastrand::Rng::with_seed(size as u64).fill(&mut bytes);
    STANDARD.encode(&bytes)
}

/// Sizes of the store's database file and its write-ahead log, in bytes.
fn store_bytes(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The outbox's payload bytes and the free pages of the database, in bytes.
async fn outbox_payload(db: &Path) -> anyhow::Result<(u64, u64)> {
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let payload: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(length(chunk)), 0) FROM outbox_payloads")
        .fetch_one(&pool)
        .await?;
    let free: i64 =
        sqlx::query_scalar("SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok((payload.max(0) as u64, free.max(0) as u64))
}

fn mb(bytes: u64) -> Value {
    num(bytes as f64 / MIB as f64)
}

/// The daemon's config: one app-only mailbox, the API token from the environment, and the
/// outbound retention.
fn config(dir: &Path, emulator: &str, retention: &str) -> String {
    let mailboxes = [SUPPORT.to_string()];
    let toml = Daemon::config(
        dir,
        emulator,
        &DaemonSpec {
            mailboxes: &mailboxes,
            poll_secs: 30,
            start_at: "now",
            safety_poll_secs: None,
            sink: None,
        },
    );
    let toml = toml.replacen(
        "[server]\n",
        &format!("[server]\napi_tokens = [\"env:{API_TOKEN_ENV}\"]\n"),
        1,
    );
    format!("{toml}\n[outbound]\nretention = \"{retention}\"\n")
}

/// The daemon's environment: the API token and the allocator settings of [`malloc_env`].
/// Returns the name of the allocator set-up for the report.
fn daemon_env() -> (Vec<(&'static str, &'static str)>, String) {
    let (mut env, name) = malloc_env();
    env.push((API_TOKEN_ENV, API_TOKEN));
    (env, name)
}

/// Runs the scenario; the report carries its own `problems`.
pub async fn run(exe: &Path, smoke: bool) -> anyhow::Result<Map<String, Value>> {
    let sizes = Sizes::new(smoke);
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "emulator").await?;
    emulator
        .post(
            "/_emulator/apps",
            &json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": SECRET,
                    "roles": ["Mail.ReadWrite", "Mail.Send"]}),
        )
        .await?;
    for address in [SUPPORT, CUSTOMER] {
        emulator
            .post(
                "/_emulator/mailboxes",
                &json!({"tenant_id": TENANT, "address": address}),
            )
            .await?;
    }
    let replies = sizes.replies();
    // One question from the customer per reply.
    let mut originals = Vec::new();
    for i in 0..replies.len() {
        let seeded = emulator
            .post(
                &format!("/_emulator/mailboxes/{SUPPORT}/messages"),
                &json!({"from": {"name": "Customer", "address": CUSTOMER},
                        "to": [{"name": "Support", "address": SUPPORT}],
                        "subject": format!("Question {i}"),
                        "body": {"content_type": "text", "content": "Please send the files."}}),
            )
            .await?;
        originals.push(
            seeded["immutable_id"]
                .as_str()
                .context("seeded message without immutable_id")?
                .to_string(),
        );
    }
    let mut encoded: BTreeMap<usize, String> = BTreeMap::new();
    for size in replies.iter().flatten() {
        encoded.entry(*size).or_insert_with(|| content(*size));
    }

    let db = dir.path.join("inboxd.db");
    let (env, malloc) = daemon_env();
    let ticks = clock_ticks();
    let started = unix_now();
    let deadline = started + sizes.deadline_secs;
    let daemon = Daemon::launch(
        exe,
        &dir.path,
        "daemon",
        &config(&dir.path, &emulator.url, "7days"),
        &env,
    )
    .await?;
    let pid = daemon.process.pid();
    let rss = RssSampler::start(pid);
    if !wait_active(&daemon, 1, deadline).await {
        bail!("the mailbox never became active (see daemon.log)");
    }
    let baseline = status_bytes(pid, "VmRSS").unwrap_or(0);
    let cpu_before = cpu_seconds(pid, ticks).unwrap_or(f64::NAN);
    let api = Api {
        base: daemon.url.clone(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?,
    };

    // As fast as the API accepts them: one after another, each sent as soon as the last 202.
    let first_post = unix_now();
    let mut posted = Vec::new();
    let mut largest_body = 0usize;
    let mut bodies_total = 0u64;
    for (i, (attachments, original)) in replies.iter().zip(&originals).enumerate() {
        let key = format!("bench-outbound-{i:03}");
        let files: Vec<Value> = attachments
            .iter()
            .enumerate()
            .map(|(n, size)| {
                json!({"name": format!("file-{n}-{size}.bin"), "content_type": "application/octet-stream",
                       "content_base64": encoded[size]})
            })
            .collect();
        let body = serde_json::to_vec(&json!({
            "comment": format!("Here are your files {}", marker(&key)),
            "attachments": files,
        }))?;
        drop(files);
        largest_body = largest_body.max(body.len());
        bodies_total += body.len() as u64;
        let id = api.reply(original, &key, body).await?;
        let mut expected: Vec<(String, u64)> = attachments
            .iter()
            .enumerate()
            .map(|(n, size)| (format!("file-{n}-{size}.bin"), *size as u64))
            .collect();
        expected.sort();
        posted.push(Posted {
            key,
            id,
            attachments: expected,
        });
    }
    let accepted_at = unix_now();
    drop(encoded);

    // Until every row is finished (or the deadline passes).
    let mut statuses: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for p in &posted {
            let done = statuses
                .get(&p.id)
                .is_some_and(|s| matches!(s.as_str(), "sent" | "failed" | "unconfirmed"));
            if !done {
                statuses.insert(p.id.clone(), api.status(&p.id).await?);
            }
        }
        let open = statuses
            .values()
            .filter(|s| !matches!(s.as_str(), "sent" | "failed" | "unconfirmed"))
            .count();
        if open == 0 || unix_now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let finished_at = unix_now();
    let cpu = cpu_seconds(pid, ticks).unwrap_or(f64::NAN);
    let peak = rss.peak_bytes();
    let metrics = daemon.metrics().await.unwrap_or_default();
    drop(rss);

    // What arrived, counted where it landed.
    let keys: Vec<String> = posted.iter().map(|p| p.key.clone()).collect();
    let graph = Graph::new(&emulator.url).await?;
    let received = graph.copies(CUSTOMER, "inbox", &keys).await?;
    let sent_items = graph.copies(SUPPORT, "sentitems", &keys).await?;
    let events = std::fs::read_to_string(&daemon.events).unwrap_or_default();
    let sent_events = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["schema"] == "inboxd.outbound.v1" && e["status"] == "sent")
        .count();
    let mut problems = Vec::new();
    let mut once = [0usize; 2];
    for p in &posted {
        let status = statuses.get(&p.id).map_or("?", String::as_str);
        if status != "sent" {
            problems.push(format!("{} ended {status}", p.key));
        }
        for (n, (copies, place)) in [(&received, "the customer's Inbox"), (&sent_items, "Sent Items")]
            .into_iter()
            .enumerate()
        {
            match copies.get(&p.key).map(Vec::as_slice) {
                Some([one]) if *one == p.attachments => once[n] += 1,
                Some([one]) => problems.push(format!(
                    "{} in {place} has attachments {one:?}, expected {:?}",
                    p.key, p.attachments
                )),
                Some(many) => problems.push(format!("{} is in {place} {} times", p.key, many.len())),
                None => problems.push(format!("{} never reached {place}", p.key)),
            }
        }
    }
    if sent_events != posted.len() {
        problems.push(format!("{sent_events} 'sent' events for {} replies", posted.len()));
    }
    let log = emulator.requests(0).await?;
    let count = |method: &str, suffix: &str| {
        log.iter()
            .filter(|e| e["method"] == method)
            .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            .count()
    };
    let (drafts, sends) = (count("POST", "/createReply"), count("POST", "/send"));
    let (sessions, direct) = (
        count("POST", "/attachments/createUploadSession"),
        count("POST", "/attachments"),
    );
    let chunks = log
        .iter()
        .filter(|e| e["method"] == "PUT" && e["path"].as_str().is_some_and(|p| p.starts_with("/_upload/")))
        .count();

    // The retention prune: measured on the running daemon's store, then the daemon restarts
    // with a retention of one second and drops the finished payloads at start.
    let store_before = store_bytes(&db);
    let (payload_before, free_before) = outbox_payload(&db).await?;
    drop(daemon);
    // Every row finished by `finished_at`; the prune at start takes rows finished more than
    // the retention ago, so that much time must have passed.
    let ripe = finished_at + PRUNE_RETENTION_SECS + 0.5 - unix_now();
    if ripe > 0.0 {
        tokio::time::sleep(Duration::from_millis((ripe * 1000.0) as u64)).await;
    }
    let restarted = Daemon::launch(
        exe,
        &dir.path,
        "daemon-restarted",
        &config(&dir.path, &emulator.url, &format!("{PRUNE_RETENTION_SECS}s")),
        &env,
    )
    .await?;
    let restart_rss = RssSampler::start(restarted.process.pid());
    let prune_deadline = unix_now() + 60.0;
    let (payload_after, free_after) = loop {
        let (payload, free) = outbox_payload(&db).await?;
        if payload == 0 || unix_now() >= prune_deadline {
            break (payload, free);
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let store_after = store_bytes(&db);
    let restart_peak = restart_rss.peak_bytes();
    drop(restart_rss);
    drop(restarted);
    drop(emulator);
    if payload_after > 0 {
        problems.push(format!(
            "{payload_after} payload bytes left in the outbox a minute after a restart with retention {PRUNE_RETENTION_SECS}s"
        ));
    }

    let attachment_bytes: u64 = posted.iter().flat_map(|p| p.attachments.iter().map(|(_, s)| *s)).sum();
    let duration = finished_at - first_post;
    let peak_mb = peak as f64 / MIB as f64;
    let budget_mb = (baseline as f64 + RSS_BUDGET_REQUESTS * largest_body as f64) / MIB as f64;
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("scenario", json!("outbound"));
    put("smoke", json!(smoke));
    put("daemon_malloc_env", json!(malloc));
    put("complete", json!(problems.is_empty()));
    put("replies", json!(posted.len()));
    put(
        "replies_sent",
        json!(statuses.values().filter(|s| *s == "sent").count()),
    );
    put("replies_in_customer_inbox_once", json!(once[0]));
    put("replies_in_sent_items_once", json!(once[1]));
    put("outbound_sent_events", json!(sent_events));
    put(
        "attachment_sizes_mb",
        json!({"first_reply": sizes.large.iter().map(|s| s / MIB).collect::<Vec<_>>(),
               "each_queued_reply": sizes.each.iter().map(|s| s / MIB).collect::<Vec<_>>(),
               "queued_replies": sizes.queued}),
    );
    put("attachment_mb_total", mb(attachment_bytes));
    put("largest_request_body_mb", mb(largest_body as u64));
    put("request_bodies_mb_total", mb(bodies_total));
    put("api_accept_duration_s", num(accepted_at - first_post));
    put("duration_s", num(duration));
    put(
        "duration_source",
        json!("first POST until GET /v1/outbound/{id} answered sent for every reply (polled every 200 ms)"),
    );
    put(
        "attachment_mb_per_s",
        ratio(attachment_bytes as f64 / MIB as f64, duration),
    );
    put("create_reply_requests", json!(drafts));
    put("upload_sessions", json!(sessions));
    put("upload_chunks", json!(chunks));
    put("direct_attachment_requests", json!(direct));
    put("send_requests", json!(sends));
    put("daemon_cpu_seconds", num(cpu - cpu_before));
    put("daemon_baseline_rss_mb", mb(baseline));
    put("daemon_peak_rss_mb", num(peak_mb));
    put(
        "daemon_reported_sent",
        metric(&metrics, "inboxd_outbound_total{status=\"sent\"}").map_or(Value::Null, num),
    );
    put("store_mb_before_prune", mb(store_before));
    put("store_mb_after_prune", mb(store_after));
    put("outbox_payload_mb_before_prune", mb(payload_before));
    put("outbox_payload_mb_after_prune", mb(payload_after));
    put("store_free_pages_mb_before_prune", mb(free_before));
    put("store_free_pages_mb_after_prune", mb(free_after));
    put("restarted_daemon_peak_rss_mb", mb(restart_peak));
    let mut budgets = Map::new();
    budgets.insert(
        "daemon_peak_rss_mb".into(),
        budget(
            &format!(
                "<= {:.0} (RSS before the first request + {RSS_BUDGET_REQUESTS} x the largest request body)",
                budget_mb
            ),
            &num(peak_mb),
            Some(peak_mb <= budget_mb),
        ),
    );
    r.insert("budget".into(), Value::Object(budgets));
    r.insert("problems".into(), json!(problems));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::super::children::IMAGE_MALLOC_ENV;

    /// The bench must run the daemon the way the image does: every allocator setting it
    /// passes is an `ENV` of the Dockerfile, with the same value.
    #[test]
    fn the_bench_passes_the_images_allocator_settings() {
        let dockerfile = include_str!("../../Dockerfile");
        let image: Vec<(String, String)> = dockerfile
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.strip_prefix("ENV ").unwrap_or(l).trim_end_matches('\\').trim())
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("MALLOC_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bench: Vec<(String, String)> = IMAGE_MALLOC_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(image, bench, "the Dockerfile's MALLOC_ settings and the bench's differ");
    }
}
