//! The terminal commands against the real daemon (`inboxd run`) and the emulator: `status`,
//! `quarantine list|replay`, `outbound show`, and `consent` completing headlessly; the token
//! from `INBOXD_API_TOKEN` or `--token-file`; clear errors for an unreachable daemon, a refused
//! token and an unknown id.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::addr;
use crate::support::delegated::{config, delegated};
use crate::support::{API_TOKEN, Env, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_inboxd");
/// A hang guard on a loaded machine, not what is measured.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `inboxd ARGS…` with only `vars` in its environment; stdout is a pipe (not a terminal).
async fn inboxd(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("inboxd finishes")
        .expect("inboxd runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A quarantined message: its JSON breaks every page it is on.
async fn truncated_message(env: &Env, mailbox: &str) {
    env.control(
        &format!("/_emulator/mailboxes/{mailbox}/messages"),
        json!({
            "from": {"name": "Customer", "address": "customer@example.net"},
            "to": [{"name": "", "address": mailbox}],
            "subject": "broken",
            "body": {"content_type": "text", "content": "cut off"},
            "malformed": "truncated",
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_quarantine_and_outbound_show_what_the_api_says_with_clear_errors() {
    let env = Env::new().await;
    let (good, broken, user) = (addr("cli-good"), addr("cli-broken"), addr("cli-user"));
    env.mailboxes(&[good.clone(), broken.clone(), user.clone()]).await;
    truncated_message(&env, &broken).await;
    let toml = config(&env, &[good.clone(), broken.clone()], &delegated(&user, "test"));
    let path = env.write_config(&toml);
    let daemon = env.spawn_binary(&path, 0).await;
    let url = format!("http://{}", daemon.addr());
    let token = [("INBOXD_API_TOKEN", API_TOKEN)];

    // The quarantine fills once the broken message was tried.
    let filled = eventually(LIMIT, || {
        let url = url.clone();
        async move {
            let out = inboxd(&["quarantine", "list", "--json", "--url", &url], &token).await;
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            answer["quarantine"].as_array().is_some_and(|a| !a.is_empty())
        }
    })
    .await;
    assert!(filled, "nothing was quarantined");

    // status: JSON when stdout is not a terminal; the table on request, without colours.
    let out = inboxd(&["status", "--url", &url], &token).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("status prints JSON when piped");
    let states: Vec<(String, String)> = answer["mailboxes"]
        .as_array()
        .expect("mailboxes")
        .iter()
        .map(|m| {
            (
                m["address"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(states.contains(&(user.clone(), "needs_reconsent".into())), "{states:?}");
    let out = inboxd(&["status", "--table", "--url", &url], &token).await;
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(table.starts_with("ADDRESS"), "{table}");
    let user_line = table
        .lines()
        .find(|l| l.starts_with(&user))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(user_line.contains("needs_reconsent"), "{user_line}");
    assert!(
        user_line.contains("/oauth/start?mailbox="),
        "consent link shown: {user_line}"
    );
    assert!(table.contains("3 mailbox(es), 1 flagged"), "{table}");
    assert!(
        !table.contains('\x1b'),
        "no colour codes when not on a terminal: {table:?}"
    );

    // The token from a file works the same; a wrong one is refused with what to do.
    let file = env.dir.path().join("api-token");
    std::fs::write(&file, format!("{API_TOKEN}\n")).unwrap();
    let out = inboxd(
        &[
            "status",
            "--json",
            "--url",
            &url,
            "--token-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = inboxd(&["status", "--url", &url], &[("INBOXD_API_TOKEN", "wrong-token")]).await;
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the API token (401)"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-token"), "the token is never echoed");
    let out = inboxd(&["status", "--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("INBOXD_API_TOKEN"), "{}", stderr(&out));

    // quarantine list as a table, then replay by id; an unknown id is named.
    let out = inboxd(&["quarantine", "list", "--url", &url, "--mailbox", &broken], &token).await;
    let listing = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = listing
        .lines()
        .find(|l| l.contains(&broken))
        .unwrap_or_else(|| panic!("{listing}"));
    let id = line.split_whitespace().next().unwrap().to_string();
    let out = inboxd(&["quarantine", "replay", &id, "--url", &url], &token).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("replay requested for {id} (mailbox {broken})")),
        "{}",
        stdout(&out)
    );
    let out = inboxd(&["quarantine", "replay", "no-such-entry", "--url", &url], &token).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown_quarantine_entry"), "{}", stderr(&out));

    // outbound show: a request queued through the API, then an unknown id.
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/mailboxes/{good}/send"))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "cli-test-1")
        .json(&json!({"subject": "hello", "to": ["someone@example.net"], "body": {"content_type": "text", "content": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let queued: Value = resp.json().await.unwrap();
    let outbound_id = queued["id"].as_str().unwrap().to_string();
    let out = inboxd(&["outbound", "show", &outbound_id, "--url", &url], &token).await;
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(shown.contains(&format!("id          {outbound_id}")), "{shown}");
    assert!(shown.contains(&format!("mailbox     {good}")), "{shown}");
    assert!(
        ["queued", "sending", "sent"]
            .iter()
            .any(|s| shown.contains(&format!("status      {s}"))),
        "{shown}"
    );
    let out = inboxd(
        &[
            "outbound",
            "show",
            "00000000-0000-4000-8000-000000000000",
            "--url",
            &url,
        ],
        &token,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown_outbound"), "{}", stderr(&out));

    // An unreachable daemon says so, and where it looked.
    drop(daemon);
    let out = inboxd(&["status", "--url", &url], &token).await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot reach inboxd at {url}")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_prints_the_url_and_a_pasted_callback_completes_it_headlessly() {
    let env = Env::new().await;
    let user = addr("cli-consent");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let path = env.write_config(&config(&env, &[], &delegated(&user, "test")));
    let daemon = env.spawn_binary(&path, 0).await;
    let url = format!("http://{}", daemon.addr());
    env.deliver(&user, "after consent").await;

    let mut child = tokio::process::Command::new(BIN)
        .args(["consent", &user, "--url", &url, "--timeout", "2m"])
        .env_clear()
        .env("INBOXD_API_TOKEN", API_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("inboxd consent starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();

    // The printed URL goes to the sign-in page (the emulator consents at once) ...
    let authorize = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.trim_start().starts_with("http") {
                return line.trim().to_string();
            }
        }
        panic!("no URL printed: {seen:#?}");
    })
    .await
    .expect("the URL is printed");
    assert!(authorize.starts_with(&env.url), "{authorize}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser.get(&authorize).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302, "authorize");
    let callback = resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_string();
    assert!(callback.contains("/oauth/callback?"), "{callback}");

    // ... and the address the browser ended on, pasted into the command, completes it.
    stdin.write_all(format!("{callback}\n").as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    let status = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
        }
        child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("consent did not finish: {seen:#?}"));
    assert_eq!(status.code(), Some(0), "{seen:#?}");
    assert!(seen.iter().any(|l| l.starts_with("inboxd answered 200")), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.starts_with(&format!("{user}: needs_reconsent"))),
        "{seen:#?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some(format!("{user} is active.").as_str()),
        "{seen:#?}"
    );
    // The mailbox now delivers.
    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events[0].subject, "after consent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_of_a_large_mailbox_shows_its_progress_until_it_is_done() {
    let env = Env::new().await;
    let mailboxes = env.load("progress", 1, 2_000).await;
    let mailbox = mailboxes[0].clone();
    // Slow pages, so the sync is seen while it runs.
    env.settings(json!({"latency_ms": 100})).await;
    let daemon = env
        .start(&crate::support::with_api_token(&env.config(&mailboxes, "1s")))
        .await;
    // Polled with a deadline: progress is recorded and grows while the sync runs.
    let mut seen: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let observed = loop {
        let progress = daemon.mailbox_views().await[&mailbox]["first_sync"].clone();
        if progress.is_object() {
            seen.push(progress);
        }
        if seen.len() >= 2 && seen.last().unwrap()["pages"].as_u64() > seen[0]["pages"].as_u64() {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(observed, "no growing first_sync progress seen: {seen:#?}");
    let first = &seen[0];
    assert_eq!(first["folder"], "inbox", "{first}");
    assert!(first["messages"].as_u64().unwrap() > 0, "{first}");
    assert!(first["started_at"].is_string(), "{first}");
    assert!(first["messages_per_second"].is_number(), "{first}");
    let last = seen.last().unwrap();
    assert!(last["messages"].as_u64() > first["messages"].as_u64(), "{seen:#?}");
    // Done: every message delivered and the progress gone from the status.
    let events = env.wait_for_events(2_000, LIMIT).await;
    assert_eq!(events.len(), 2_000);
    let done = eventually(LIMIT, || {
        let views = daemon.mailbox_views();
        let mailbox = mailbox.clone();
        async move { views.await[&mailbox].get("first_sync").is_none() }
    })
    .await;
    assert!(done, "first_sync stays after the sync finished");
    daemon.stop().await;
}
