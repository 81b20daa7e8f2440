//! `inboxd status`: every mailbox and its state.

use std::io::IsTerminal;
use std::process::ExitCode;

use serde_json::Value;

use super::api::{ApiClient, ClientError};
use super::table;

/// Prints the mailboxes: a table on a terminal (coloured by state), JSON otherwise.
pub async fn run(client: &ApiClient, json: bool, force_table: bool) -> Result<ExitCode, ClientError> {
    let answer = client.get("v1/mailboxes").await?;
    let terminal = std::io::stdout().is_terminal();
    if json || (!terminal && !force_table) {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&answer, terminal));
    Ok(ExitCode::SUCCESS)
}

/// The table: address, access, state, since, last success, delivered, progress or reason.
pub fn render(answer: &Value, colour: bool) -> String {
    let empty = Vec::new();
    let mailboxes = answer["mailboxes"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = mailboxes
        .iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or("-").to_string();
            let time = |k: &str| m[k].as_str().map(short_time).unwrap_or_else(|| "-".into());
            let note = m["reason"]
                .as_str()
                .map(str::to_string)
                .or_else(|| progress(&m["first_sync"]))
                .unwrap_or_default();
            // The link is what a human acts on: it comes first, whole.
            let note = match m["consent_url"].as_str() {
                Some(url) => format!("consent: {url} ({})", table::cut(&note, 80)),
                None => table::cut(&note, 120),
            };
            vec![
                text("address"),
                text("access"),
                text("state"),
                time("since"),
                time("last_success_at"),
                m["delivered_total"].as_u64().map(|n| n.to_string()).unwrap_or_default(),
                note,
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "ADDRESS",
            "ACCESS",
            "STATE",
            "SINCE",
            "LAST SUCCESS",
            "DELIVERED",
            "REASON",
        ],
        &rows,
        colour.then_some(2),
    );
    let flagged = mailboxes
        .iter()
        .filter(|m| {
            !matches!(
                m["state"].as_str(),
                Some("active" | "starting" | "backoff" | "disabled")
            )
        })
        .count();
    out.push_str(&format!("{} mailbox(es), {flagged} flagged\n", mailboxes.len()));
    out
}

/// An RFC 3339 time to the second (`2026-05-04T09:20:02Z`).
fn short_time(t: &str) -> String {
    match (t.get(..19), t.ends_with('Z')) {
        (Some(head), true) => format!("{head}Z"),
        _ => t.to_string(),
    }
}

/// A first sync in progress, in words.
fn progress(p: &Value) -> Option<String> {
    let messages = p["messages"].as_u64()?;
    let pages = p["pages"].as_u64().unwrap_or(0);
    let rate = p["messages_per_second"].as_f64().unwrap_or(0.0);
    Some(format!("first sync: {messages} messages, {pages} pages, {rate:.0}/s"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render;

    #[test]
    fn a_first_sync_in_progress_is_shown_and_flags_are_counted() {
        let answer = json!({"mailboxes": [
            {"address": "big@x.example", "access": "app", "state": "active", "since": "2026-05-04T09:20:02.123456Z",
             "last_success_at": null, "delivered_total": 4200, "reason": null,
             "first_sync": {"folder": "inbox", "messages": 4200, "pages": 42, "messages_per_second": 350.0}},
            {"address": "user@x.example", "access": "delegated", "state": "needs_reconsent", "since": "2026-05-04T09:20:02Z",
             "reason": "no consent", "consent_url": "https://inboxd.example/oauth/start?mailbox=user%40x.example"},
        ]});
        let text = render(&answer, false);
        assert!(text.contains("first sync: 4200 messages, 42 pages, 350/s"), "{text}");
        assert!(text.contains("2026-05-04T09:20:02Z"), "times to the second: {text}");
        assert!(
            text.contains("consent: https://inboxd.example/oauth/start?mailbox=user%40x.example (no consent)"),
            "{text}"
        );
        assert!(text.ends_with("2 mailbox(es), 1 flagged\n"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(render(&answer, true).contains("\x1b[31mneeds_reconsent\x1b[0m"));
    }
}
