//! `inboxd demo`: the emulator in-process with sample mailboxes and mail, the daemon against
//! it with the embedded demo config (SQLite store, file sink), and a summary of what happened.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::emulator::{EmulatorOptions, spawn};
use crate::event::MessageEvent;

/// The demo's configuration, embedded so the demo needs no files.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const TENANT: &str = "9b1f4b7e-3c1d-4a57-8f0e-0c5d2c6a1a10";
const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
/// Bearer token of the demo's API (development only).
const DEMO_API_TOKEN: &str = "demo-api-token";

/// Runs the demo for at most `duration`, keeping its files in `data`.
pub async fn run(duration: Duration, data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let db = data.join("inboxd.db");
    let events_file = data.join("inbound.ndjson");
    for stale in [
        db.clone(),
        data.join("inboxd.db-wal"),
        data.join("inboxd.db-shm"),
        events_file.clone(),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let began = tokio::time::Instant::now();
    // What the demo does, as it happens (the summary comes at the end).
    let step = |what: &str| println!("[{:>5.1}s] {what}", began.elapsed().as_secs_f64());
    let emulator = spawn("127.0.0.1:0".parse()?, EmulatorOptions::default()).await?;
    let http = reqwest::Client::new();
    let seeded = seed(&http, emulator.url()).await?;

    let env: HashMap<String, String> = [
        ("INBOXD__MICROSOFT__AUTHORITY_HOST", emulator.url().to_string()),
        ("INBOXD__MICROSOFT__GRAPH_URL", emulator.url().to_string()),
        ("INBOXD__STORE__URL", format!("sqlite://{}", db.display())),
        ("INBOXD__SINK__PATH", events_file.display().to_string()),
        ("INBOXD__SERVER__API_TOKENS", DEMO_API_TOKEN.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config =
        crate::config::from_sources(DEMO_CONFIG, &env, data).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let app = Daemon::build(config).await?;
    let api_addr = app.local_addr();
    println!("inboxd demo");
    println!("  emulator    {}", emulator.url());
    println!("  daemon API  http://{}  (try /metrics)", app.local_addr());
    println!("  events      {}", events_file.display());
    step(&format!(
        "Emulator up at {}: app registered, 4 mailboxes with {seeded} messages waiting.",
        emulator.url()
    ));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    step("Daemon started: first delta round of every mailbox.");
    let mut reported = 0;
    let deadline = tokio::time::Instant::now() + duration;
    let mut expected = seeded;
    let mut live_sent = false;
    while tokio::time::Instant::now() < deadline {
        let delivered = read_events(&events_file).len();
        if delivered != reported {
            step(&format!(
                "Delivered {delivered} of {expected} messages to the event file so far."
            ));
            reported = delivered;
        }
        if delivered >= seeded && !live_sent {
            // Mail that arrives while the daemon runs is picked up by the next poll.
            expected += live_mail(&http, emulator.url()).await?;
            live_sent = true;
            step("Two new messages arrived in the mailboxes; the next poll picks them up.");
        }
        if live_sent && delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api = format!("http://{api_addr}");
    step("Replying to the first support message through the API; waiting for its sent copy.");
    let reply = send_reply(&http, &api, &read_events(&events_file), deadline).await;
    step("The delegated mailbox waits for consent: following its consent link as its user would.");
    let consent = consent_story(&http, &api, emulator.url(), &events_file, deadline).await;
    step("Stopping the daemon.");
    let _ = stop_tx.send(());
    daemon.await??;
    let sent = sent_items(&http, emulator.url()).await;
    emulator.stop().await;
    // The delegated mailbox's message arrives after its consent.
    let expected = expected + usize::from(consent.is_ok());
    summarize(&read_events(&events_file), expected, &events_file);
    match reply {
        Ok(status) => {
            println!("Reply through POST /v1/mailboxes/support@contoso.test/messages/{{graph_id}}/reply: {status}.")
        }
        Err(e) => println!("Reply through the API did not complete: {e:#}"),
    }
    for (subject, to, in_reply_to) in sent {
        println!("  Sent Items of support@contoso.test: \"{subject}\" to {to}, In-Reply-To {in_reply_to}");
    }
    println!();
    match consent {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => println!("The delegated mailbox story did not complete: {e:#}"),
    }
    Ok(())
}

/// Reads the NDJSON file (missing file: nothing delivered yet).
fn read_events(path: &Path) -> Vec<MessageEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let resp = http.post(&url).json(&body).send().await?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("emulator refused {url}: {status} {answer}");
    }
    Ok(answer)
}

fn message(from: (&str, &str), to: &str, subject: &str, kind: &str, content: &str) -> Value {
    json!({
        "from": {"name": from.0, "address": from.1},
        "to": [{"name": "", "address": to}],
        "subject": subject,
        "body": {"content_type": kind, "content": content},
    })
}

/// Creates the demo app, three mailboxes and realistic mail; returns how many messages.
async fn seed(http: &reqwest::Client, base: &str) -> anyhow::Result<usize> {
    post(
        http,
        format!("{base}/_emulator/apps"),
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": "demo-secret", "roles": ["Mail.ReadWrite", "Mail.Send"], "display_name": "inboxd demo"}),
    )
    .await?;
    for address in [
        "support@contoso.test",
        "sales@contoso.test",
        "billing@contoso.test",
        "escalations@contoso.test",
    ] {
        post(
            http,
            format!("{base}/_emulator/mailboxes"),
            json!({"tenant_id": TENANT, "address": address}),
        )
        .await?;
    }
    let pdf = base64::engine::general_purpose::STANDARD
        .encode(b"%PDF-1.4\n% demo invoice\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n");
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let mut messages = vec![
        (
            "support@contoso.test",
            message(
                ("Ann Lee", "ann.lee@example.net"),
                "support@contoso.test",
                "Order #1042 has not arrived",
                "text",
                "Hello,\n\nmy order #1042 was due on Monday and has not arrived. Can you check?\n\nAnn",
            ),
        ),
        (
            "sales@contoso.test",
            message(
                ("Raj Patel", "raj@fabrikam.example"),
                "sales@contoso.test",
                "Quote for 50 licences",
                "html",
                "<html><body><p>Hi team,</p><p>Could you send a quote for <b>50 licences</b>, billed yearly?</p><p>Raj</p></body></html>",
            ),
        ),
        (
            "billing@contoso.test",
            message(
                ("Mia Chen", "mia.chen@example.org"),
                "billing@contoso.test",
                "Refund status",
                "text",
                "Hi, I returned the blender two weeks ago. When will the refund arrive? Mia",
            ),
        ),
    ];
    let mut reply = message(
        ("Ann Lee", "ann.lee@example.net"),
        "support@contoso.test",
        "RE: Order #1042 has not arrived",
        "text",
        "Any news? The tracking page still shows nothing.\n\n> my order #1042 was due on Monday",
    );
    reply["internet_message_headers"] = json!([
        {"name": "Message-ID", "value": "<ann-2@example.net>"},
        {"name": "In-Reply-To", "value": "<ann-1@example.net>"},
        {"name": "References", "value": "<ann-1@example.net>"},
    ]);
    messages[0].1["internet_message_headers"] = json!([{"name": "Message-ID", "value": "<ann-1@example.net>"}]);
    messages.push(("support@contoso.test", reply));
    let mut invoice = message(
        ("Tom Berg", "tom@northwind.example"),
        "billing@contoso.test",
        "Invoice INV-2201 looks wrong",
        "html",
        "<html><body><p>The attached invoice charges 3 seats; we have 2.</p><p><img src=\"cid:logo@northwind\"></p></body></html>",
    );
    invoice["attachments"] = json!([
        {"name": "INV-2201.pdf", "content_type": "application/pdf", "content_base64": pdf},
        {"name": "logo.png", "content_type": "image/png", "content_base64": png, "is_inline": true, "content_id": "logo@northwind"},
    ]);
    messages.push(("billing@contoso.test", invoice));
    deliver_all(http, base, &messages).await
}

/// Two messages that arrive while the daemon runs.
async fn live_mail(http: &reqwest::Client, base: &str) -> anyhow::Result<usize> {
    let live = [
        (
            "sales@contoso.test",
            message(
                ("Raj Patel", "raj@fabrikam.example"),
                "sales@contoso.test",
                "RE: Quote for 50 licences",
                "text",
                "Also: is there a discount for 3 years?",
            ),
        ),
        (
            "support@contoso.test",
            message(
                ("Lena Vogt", "lena@example.de"),
                "support@contoso.test",
                "Password reset link expired",
                "text",
                "The reset link says it expired. Can you send a new one?",
            ),
        ),
    ];
    deliver_all(http, base, &live).await
}

/// Delivers `(mailbox, message)` pairs through the emulator's control API; returns how many.
async fn deliver_all(http: &reqwest::Client, base: &str, messages: &[(&str, Value)]) -> anyhow::Result<usize> {
    for (mailbox, m) in messages {
        post(
            http,
            format!("{base}/_emulator/mailboxes/{mailbox}/messages"),
            m.clone(),
        )
        .await?;
    }
    Ok(messages.len())
}

fn summarize(events: &[MessageEvent], expected: usize, file: &Path) {
    let mut per_mailbox: BTreeMap<&str, Vec<&MessageEvent>> = BTreeMap::new();
    for e in events {
        per_mailbox.entry(e.mailbox.as_str()).or_default().push(e);
    }
    println!();
    println!(
        "Delivered {} of {} messages (one JSON event per line in {}):",
        events.len(),
        expected,
        file.display()
    );
    for (mailbox, list) in &per_mailbox {
        println!("  {mailbox}");
        for e in list {
            let threading = if e.in_reply_to.is_some() {
                "  [reply in thread]"
            } else {
                ""
            };
            let attachments = if e.attachments.is_empty() {
                String::new()
            } else {
                format!("  [{} attachment(s)]", e.attachments.len())
            };
            let from = e.from.as_ref().map(|f| f.address.as_str()).unwrap_or("?");
            println!("    {:<42} from {from}{threading}{attachments}", e.subject);
        }
    }
}

/// GET on the daemon's API with the demo token, as JSON.
async fn api_get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http.get(url).bearer_auth(DEMO_API_TOKEN).send().await?.json().await?)
}

/// Replies to Ann's first message through the daemon's API and waits until it is sent.
async fn send_reply(
    http: &reqwest::Client,
    api: &str,
    events: &[MessageEvent],
    deadline: tokio::time::Instant,
) -> anyhow::Result<String> {
    let original = events
        .iter()
        .find(|e| e.subject == "Order #1042 has not arrived")
        .ok_or_else(|| anyhow::anyhow!("the message to reply to was not delivered"))?;
    let url = format!(
        "{api}/v1/mailboxes/support@contoso.test/messages/{}/reply",
        original.graph_id
    );
    let resp = http
        .post(&url)
        .bearer_auth(DEMO_API_TOKEN)
        .header("Idempotency-Key", "demo-reply-1042")
        .json(&json!({"comment": "Hello Ann, your parcel left our warehouse today; tracking follows by mail."}))
        .send()
        .await?;
    let accepted: Value = resp.json().await?;
    let id = accepted["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the API did not accept the reply: {accepted}"))?
        .to_string();
    loop {
        let status: Value = api_get(http, &format!("{api}/v1/outbound/{id}")).await?;
        let s = status["status"].as_str().unwrap_or("unknown").to_string();
        if matches!(s.as_str(), "sent" | "failed" | "unconfirmed") || tokio::time::Instant::now() > deadline {
            return Ok(format!("{s} (outbound id {id})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (subject, first recipient, In-Reply-To) of every message in support's Sent Items.
async fn sent_items(http: &reqwest::Client, base: &str) -> Vec<(String, String, String)> {
    let url = format!("{base}/_emulator/mailboxes/support@contoso.test/folders/sentitems/messages");
    let list: Value = match http.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let Some(items) = list.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap_or_default().to_string(),
                m["to"][0]["address"].as_str().unwrap_or_default().to_string(),
                m["in_reply_to"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
}

/// The delegated mailbox: flagged with its consent link, then consented to (the emulator's
/// sign-in page consents at once, as a user clicking "Accept" would), then delivering.
async fn consent_story(
    http: &reqwest::Client,
    api: &str,
    emulator: &str,
    events_file: &Path,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Vec<String>> {
    let mailbox = "escalations@contoso.test";
    let mut lines = Vec::new();
    let view = loop {
        let view: Value = api_get(http, &format!("{api}/v1/mailboxes/{mailbox}")).await?;
        if view["state"] == "needs_reconsent" || tokio::time::Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lines.push(format!("Delegated mailbox {mailbox}: state {}", view["state"]));
    lines.push(format!("  reason       {}", view["reason"].as_str().unwrap_or("")));
    lines.push(format!("  consent_url  {}", view["consent_url"].as_str().unwrap_or("")));
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut url = view["consent_url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no consent_url"))?
        .to_string();
    // /oauth/start → the sign-in page (emulator) → /oauth/callback on the daemon, carrying the
    // cookie /oauth/start sets, as a browser would: the callback checks it.
    let mut cookies: Vec<String> = Vec::new();
    for _ in 0..3 {
        let mut request = no_redirects.get(&url);
        if !cookies.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookies.join("; "));
        }
        let resp = request.send().await?;
        for set in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some(pair) = set.to_str().ok().and_then(|c| c.split(';').next()) {
                cookies.push(pair.trim().to_string());
            }
        }
        match resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
        {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    post(
        http,
        format!("{emulator}/_emulator/mailboxes/{mailbox}/messages"),
        message(
            ("Omar Haddad", "omar@example.com"),
            mailbox,
            "Complaint escalated by phone",
            "text",
            "Please call me back today.",
        ),
    )
    .await?;
    loop {
        let delivered = read_events(events_file).iter().any(|e| e.mailbox == mailbox);
        if delivered || tokio::time::Instant::now() > deadline {
            let view: Value = api_get(http, &format!("{api}/v1/mailboxes/{mailbox}")).await?;
            lines.push(format!(
                "  after consent: state {}, {} message(s) delivered, no restart",
                view["state"], view["delivered_total"]
            ));
            return Ok(lines);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
