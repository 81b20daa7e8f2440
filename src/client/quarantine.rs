//! `inboxd quarantine list|replay`: messages the sink refused or Graph could not give whole.

use std::process::ExitCode;

use super::api::{ApiClient, ClientError, segment};
use super::table;

/// Lists quarantined messages, newest first.
pub async fn list(client: &ApiClient, mailbox: Option<&str>, json: bool) -> Result<ExitCode, ClientError> {
    let path = match mailbox {
        Some(m) => format!(
            "v1/quarantine?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("mailbox", m)
                .finish()
        ),
        None => "v1/quarantine".to_string(),
    };
    let answer = client.get(&path).await?;
    if json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let empty = Vec::new();
    let entries = answer["quarantine"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            vec![
                text("id"),
                text("mailbox"),
                text("folder"),
                text("at"),
                table::cut(&text("reason"), 100),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["ID", "MAILBOX", "FOLDER", "AT", "REASON"], &rows, None)
    );
    println!(
        "{} quarantined message(s); `inboxd quarantine replay ID` delivers one again",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Asks for one entry to be delivered again.
pub async fn replay(client: &ApiClient, id: &str) -> Result<ExitCode, ClientError> {
    let answer = client.post(&format!("v1/quarantine/{}/replay", segment(id))).await?;
    println!(
        "replay requested for {} (mailbox {}); the mailbox delivers it on its next round",
        answer["id"].as_str().unwrap_or(id),
        answer["mailbox"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
