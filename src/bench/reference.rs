//! The physical limit of `backlog`: a bare client doing the daemon's Graph requests against
//! a freshly seeded emulator, writing the response bytes, with no other logic.
//!
//! Ids differ between two seeded emulators, so the daemon's log cannot be replayed verbatim;
//! instead, for each mailbox (all at once, as the daemon does), the client pages through the
//! Inbox delta with the daemon's query and page sizes (taken from its request log: the same
//! pages, so the same delta requests) and `Prefer` values, and
//! after each page issues the daemon's `$batch` shape: one GET `…/attachments` (metadata) per
//! message with `hasAttachments`, 20 per batch, then the content of each listed attachment
//! under the inline cap, in batches bounded as the daemon bounds them (larger ones one at a
//! time). Each response body is appended to one file, fsynced once per page, where the
//! daemon's sink fsyncs. One token for the whole run.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::children::{CLIENT_ID, Emulator, SECRET, TENANT, WorkDir};
use super::events::unix_now;
use super::report;
use super::scenario::Plan;
use crate::graph::{ATTACHMENT_SELECT, BATCH_MAX, IMMUTABLE_IDS, segment};

/// Attachments up to this size are fetched in `$batch` (`max_inline_attachment_bytes`'s default).
const INLINE_CAP: u64 = crate::config::DEFAULT_MAX_INLINE_ATTACHMENT_BYTES;
/// Most delta pages followed per mailbox (a bound, far above what the backlog needs).
const MAX_PAGES: usize = 10_000;

/// What the reference client did.
pub struct ReferenceRun {
    /// Messages seen in delta pages.
    pub messages: u64,
    /// From the token request to the last byte written.
    pub duration_s: f64,
    /// Requests as its emulator counted them.
    pub counts: report::RequestCounts,
    /// Bytes written.
    pub bytes: u64,
    /// CPU seconds the client used (this process, measured as the daemon's are).
    pub cpu_seconds: Option<f64>,
    /// The CPUs its emulator could run on.
    pub emulator_cpus: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    out: Mutex<std::fs::File>,
}

impl Client {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<bytes::Bytes> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("reference request failed: {status}");
        }
        Ok(body)
    }

    async fn batch(&self, parts: &[Value]) -> anyhow::Result<bytes::Bytes> {
        let req = self
            .http
            .post(format!("{}/v1.0/$batch", self.base))
            .json(&json!({ "requests": parts }));
        self.send(req).await
    }

    fn write(&self, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        let mut f = self.out.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        if sync { f.sync_data() } else { Ok(()) }
    }
}

/// A GET inside `$batch`, with the `Prefer` the daemon sends.
fn get_part(id: &str, url: &str) -> Value {
    json!({"id": id, "method": "GET", "url": url, "headers": {"Prefer": IMMUTABLE_IDS}})
}

/// The attachments a `$batch` of lists names: part id, content URL and size.
fn listed_attachments(answer: &[u8], address: &str) -> anyhow::Result<Vec<(String, String, u64)>> {
    let answer: Value = serde_json::from_slice(answer)?;
    let mut out = Vec::new();
    for part in answer["responses"].as_array().into_iter().flatten() {
        let Some(message) = part["id"].as_str().and_then(|id| id.strip_prefix("a:")) else {
            continue;
        };
        for a in part["body"]["value"].as_array().into_iter().flatten() {
            let Some(id) = a["id"].as_str() else { continue };
            let url = format!(
                "/users/{}/messages/{}/attachments/{}",
                segment(address),
                segment(message),
                segment(id)
            );
            out.push((format!("c:{message}:{id}"), url, a["size"].as_u64().unwrap_or(u64::MAX)));
        }
    }
    Ok(out)
}

/// Graph's largest delta page, asked for where the daemon's log has no size.
const PAGE_ITEMS: u32 = 100;

/// One mailbox: delta pages in order, of the sizes in `sizes` (the last one repeated once they
/// run out); after each, the attachment batches of its messages.
async fn mailbox(client: Arc<Client>, address: String, query: String, sizes: Vec<u32>) -> anyhow::Result<u64> {
    let mut url = format!(
        "{}/v1.0/users/{}/mailFolders/inbox/messages/delta?{query}",
        client.base,
        segment(&address)
    );
    let mut messages = 0;
    for page in 0..MAX_PAGES {
        let size = sizes.get(page).or(sizes.last()).copied().unwrap_or(PAGE_ITEMS);
        let req = client
            .http
            .get(&url)
            .header("Prefer", format!("odata.maxpagesize={size}"))
            .header("Prefer", IMMUTABLE_IDS);
        let page = client.send(req).await?;
        client.write(&page, false)?;
        let page: Value = serde_json::from_slice(&page)?;
        let items = page.get("value").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut parts = Vec::new();
        for m in items.iter().filter(|m| m.get("@removed").is_none()) {
            let Some(id) = m.get("id").and_then(Value::as_str) else {
                continue;
            };
            messages += 1;
            if m.get("hasAttachments").and_then(Value::as_bool) == Some(true) {
                let url = format!(
                    "/users/{}/messages/{}/attachments?$select={ATTACHMENT_SELECT}",
                    segment(&address),
                    segment(id)
                );
                parts.push(get_part(&format!("a:{id}"), &url));
            }
        }
        // The daemon's shape since attachments are fetched metadata first: the lists, then
        // the content of each attachment under the inline cap in `$batch` (bounded in parts
        // and bytes), and each larger one on its own.
        let mut contents = Vec::new();
        for chunk in parts.chunks(BATCH_MAX) {
            let answer = client.batch(chunk).await?;
            client.write(&answer, false)?;
            contents.extend(listed_attachments(&answer, &address)?);
        }
        let (small, large): (Vec<_>, Vec<_>) = contents.into_iter().partition(|(_, _, size)| *size <= INLINE_CAP);
        // Grouped as the daemon groups them: a page's share of the default memory budget.
        let limit = crate::mailbox::IngestBudget::new(crate::config::DEFAULT_IN_FLIGHT_BYTES)
            .page_bytes()
            .min(crate::mailbox::BATCH_BYTES);
        for group in crate::mailbox::by_bytes(small, limit) {
            let parts: Vec<Value> = group.iter().map(|(id, url)| get_part(id, url)).collect();
            let answer = client.batch(&parts).await?;
            client.write(&answer, false)?;
        }
        for (_, url, _) in large {
            let req = client
                .http
                .get(format!("{}/v1.0{url}", client.base))
                .header("Prefer", IMMUTABLE_IDS);
            let answer = client.send(req).await?;
            client.write(&answer, false)?;
        }
        client.write(b"", true)?;
        match (
            page.get("@odata.nextLink").and_then(Value::as_str),
            page.get("@odata.deltaLink"),
        ) {
            (Some(next), _) => url = next.to_string(),
            (None, Some(_)) => return Ok(messages),
            (None, None) => bail!("delta page of {address} without a next or delta link"),
        }
    }
    bail!("{address}: more than {MAX_PAGES} delta pages")
}

/// Seeds a fresh emulator as `plan` does and runs the reference client against it, with the
/// daemon's delta query and page sizes by mailbox.
pub async fn run(
    exe: &Path,
    plan: &Plan,
    delta_query: Option<&str>,
    page_sizes: &HashMap<String, Vec<u32>>,
) -> anyhow::Result<ReferenceRun> {
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "reference-emulator").await?;
    for spec in &plan.seed {
        emulator.load(spec).await?;
    }
    let query = match delta_query {
        Some(q) => q.to_string(),
        None => format!(
            "%24select={}",
            url::form_urlencoded::byte_serialize(crate::mailbox::convert::DELTA_SELECT.as_bytes()).collect::<String>()
        ),
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let ticks = super::measure::clock_ticks();
    let cpu_before = super::measure::cpu_seconds(std::process::id(), ticks);
    let started = unix_now();
    let token: Value = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", emulator.url))
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
    let token = token
        .get("access_token")
        .and_then(Value::as_str)
        .context("token response without access_token")?
        .to_string();
    let out_path = dir.path.join("reference.out");
    let client = Arc::new(Client {
        http,
        base: emulator.url.clone(),
        token,
        out: Mutex::new(std::fs::File::create(&out_path)?),
    });
    let tasks: Vec<_> = plan
        .mailboxes
        .iter()
        .map(|a| {
            let sizes = page_sizes.get(a).cloned().unwrap_or_default();
            tokio::spawn(mailbox(client.clone(), a.clone(), query.clone(), sizes))
        })
        .collect();
    let mut messages = 0;
    for t in tasks {
        messages += t.await??;
    }
    let duration_s = unix_now() - started;
    let cpu_seconds = match (cpu_before, super::measure::cpu_seconds(std::process::id(), ticks)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let bytes = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
    let counts = report::count_requests(&emulator.requests(0).await?);
    Ok(ReferenceRun {
        messages,
        duration_s,
        counts,
        bytes,
        cpu_seconds,
        emulator_cpus: emulator.cpus(),
    })
}
