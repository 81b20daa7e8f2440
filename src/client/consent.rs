//! `inboxd consent MAILBOX`: prints the consent URL of a delegated mailbox and waits until the
//! mailbox is active. A browser that cannot reach inboxd afterwards ends on an address it cannot
//! open; pasting that address here completes the consent through this command (no curl needed).

use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;

use super::api::{ApiClient, ClientError, segment};

/// How often the mailbox's state is asked for while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Prints the URL, then waits for `active` (or a pasted callback address) until `timeout`.
pub async fn run(client: &ApiClient, mailbox: &str, timeout: Duration) -> Result<ExitCode, ClientError> {
    let path = format!("v1/mailboxes/{}", segment(mailbox));
    let consent = client.get(&format!("{path}/consent")).await?;
    let url = consent["url"].as_str().unwrap_or_default().to_string();
    println!("Open this address in a browser and sign in as the user of {mailbox} (or one with full access to it):");
    println!();
    println!("  {url}");
    println!();
    println!(
        "If the browser then cannot reach inboxd, paste the address it ended on (…/oauth/callback?code=…) here and press Enter."
    );
    println!("Waiting for {mailbox} to become active…");
    let mut pasted = stdin_lines();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL);
    let mut last_state = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let view = client.get(&path).await?;
                let state = view["state"].as_str().unwrap_or("unknown").to_string();
                if state != last_state {
                    let reason = view["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                    println!("{mailbox}: {state}{reason}");
                    last_state = state.clone();
                }
                if state == "active" {
                    println!("{mailbox} is active.");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Some(line) = pasted.recv() => {
                let Some(query) = callback_query(&line) else {
                    println!("That is not the address the sign-in ended on (it has …/oauth/callback?code=…&state=…); paste it whole.");
                    continue;
                };
                let (status, page) = client.finish_consent(&query).await?;
                println!("inboxd answered {status}: {page}");
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ClientError::TimedOut(format!(
                    "{mailbox} did not become active within {} (it is {last_state}); run `inboxd consent {mailbox}` again",
                    humantime::format_duration(timeout)
                )));
            }
        }
    }
}

/// The query of a pasted callback address (`…/oauth/callback?code=…&state=…`, or Entra's error).
fn callback_query(line: &str) -> Option<String> {
    let url = url::Url::parse(line.trim()).ok()?;
    if !url.path().ends_with("/oauth/callback") {
        return None;
    }
    let has = |name: &str| url.query_pairs().any(|(k, _)| k == name);
    (has("state") && (has("code") || has("error"))).then(|| url.query().unwrap_or_default().to_string())
}

/// Lines typed or piped on stdin (a thread, since reading stdin blocks).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim().is_empty() => {}
                Ok(_) => {
                    if tx.send(line.trim().to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::callback_query;

    #[test]
    fn only_a_callback_address_is_taken() {
        assert_eq!(
            callback_query("https://inboxd.example/oauth/callback?code=abc&state=xyz").as_deref(),
            Some("code=abc&state=xyz")
        );
        assert_eq!(
            callback_query(" http://h/oauth/callback?error=access_denied&state=s ").as_deref(),
            Some("error=access_denied&state=s")
        );
        assert_eq!(callback_query("https://login.example/authorize?code=a&state=b"), None);
        assert_eq!(callback_query("https://inboxd.example/oauth/callback?code=abc"), None);
        assert_eq!(callback_query("not a url"), None);
    }
}
