//! Secrets mounted as files (`file:` references, as deploy/deployment.yaml mounts the Secret):
//! rewriting a secret file, with the config file untouched, reloads it without a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{Binary, CLIENT, Env, SECRET, SECRET_ENV, eventually};

/// How long anything the test waits for may take.
const LIMIT: Duration = Duration::from_secs(20);

async fn api_status(daemon: &Binary, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/v1/mailboxes", daemon.addr()))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn state(daemon: &Binary, token: &str, mailbox: &str) -> String {
    let body = reqwest::Client::new()
        .get(format!("http://{}/v1/mailboxes/{mailbox}", daemon.addr()))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match body {
        Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default()["state"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        Err(_) => String::new(),
    }
}

/// Replaces a secret file the way a Secret volume does: a new file renamed over the old one.
fn rotate(path: &Path, value: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, format!("{value}\n")).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_files_apply_without_a_restart() {
    let env = Env::new().await;
    let mailbox = "rotate@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let secrets = env.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let (api_token, client_secret) = (secrets.join("api-token"), secrets.join("client-secret"));
    rotate(&api_token, "first-api-token");
    rotate(&client_secret, SECRET);
    let config = env
        .config(std::slice::from_ref(&mailbox), "200ms")
        .replace(
            &format!("client_secret = \"env:{SECRET_ENV}\""),
            "client_secret = \"file:secrets/client-secret\"",
        )
        .replace("[server]\n", "[server]\napi_tokens = [\"file:secrets/api-token\"]\n");
    assert!(config.contains("file:secrets/client-secret"));
    let path = env.write_config(&config);
    let daemon = env.spawn_binary(&path, 1).await;
    assert!(
        eventually(LIMIT, || async {
            state(&daemon, "first-api-token", &mailbox).await == "active"
        })
        .await,
        "active with the first secrets; log:\n{}",
        daemon.stderr()
    );

    // The API token file is rotated: the new token works, the old one no longer does.
    rotate(&api_token, "second-api-token");
    assert!(
        eventually(LIMIT, || async { api_status(&daemon, "second-api-token").await == 200 }).await,
        "the rotated API token is accepted; log:\n{}",
        daemon.stderr()
    );
    assert_eq!(api_status(&daemon, "first-api-token").await, 401);

    // The client secret is rotated in Entra ID; a stale file flags the mailbox ...
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": "rotated-client-secret"}),
    )
    .await;
    rotate(&client_secret, "stale-client-secret");
    assert!(
        eventually(LIMIT, || async {
            state(&daemon, "second-api-token", &mailbox).await == "credential_invalid"
        })
        .await,
        "the stale secret is used and refused; log:\n{}",
        daemon.stderr()
    );
    // ... and the new one in the file brings it back, same process.
    let pid = daemon.pid();
    rotate(&client_secret, "rotated-client-secret");
    assert!(
        eventually(LIMIT, || async {
            state(&daemon, "second-api-token", &mailbox).await == "active"
        })
        .await,
        "active again with the rotated secret; log:\n{}",
        daemon.stderr()
    );
    assert_eq!(daemon.pid(), pid);
    assert!(!daemon.stderr().contains(SECRET), "no secret in the log");
}
