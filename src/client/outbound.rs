//! `inboxd outbound show ID`: one outbound request's status.

use std::process::ExitCode;

use super::api::{ApiClient, ClientError, segment};

/// Prints the request's fields, one per line (or the JSON).
pub async fn show(client: &ApiClient, id: &str, json: bool) -> Result<ExitCode, ClientError> {
    let answer = client.get(&format!("v1/outbound/{}", segment(id))).await?;
    if json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    for key in [
        "id",
        "mailbox",
        "status",
        "error",
        "attempts",
        "created_at",
        "updated_at",
    ] {
        let value = match &answer[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        println!("{key:<11} {value}");
    }
    Ok(ExitCode::SUCCESS)
}
