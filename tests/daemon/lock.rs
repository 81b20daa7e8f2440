//! One writer per store: a second `inboxd run` on the same SQLite file exits at once with a
//! distinct code and names the lock file; the lock dies with its holder, even on SIGKILL.

use std::time::Duration;

use crate::support::{Env, SECRET, SECRET_ENV};

/// `EXIT_LOCKED` in src/main.rs (sysexits EX_TEMPFAIL).
const EXIT_LOCKED: i32 = 75;
/// How long the refused instance may take to exit.
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_second_instance_on_the_same_store_exits_naming_the_lock_file() {
    let env = Env::new().await;
    let mailbox = "lock@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let config = env.write_config(&env.config(std::slice::from_ref(&mailbox), "200ms"));
    let lock_file = env.dir.path().join("inboxd.db.lock");

    let mut first = env.spawn_binary(&config, 1).await;

    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_inboxd"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env(SECRET_ENV, SECRET)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("inboxd runs");
    let deadline = std::time::Instant::now() + LIMIT;
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second instance still runs after {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_LOCKED), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(&lock_file.display().to_string()),
        "the message names {}; stderr:\n{stderr}",
        lock_file.display()
    );
    let error_line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("one ERROR line; stderr:\n{stderr}"));
    assert_eq!(
        error_line["lock_file"].as_str(),
        Some(lock_file.display().to_string().as_str()),
        "{error_line}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the refused instance never listened"
    );

    // The first one is undisturbed.
    let (status, _) = first.get("/readyz").await.expect("the first instance answers");
    assert_eq!(status, 200);

    // The kernel drops the lock with its holder: after SIGKILL a new instance starts.
    first.kill_9();
    let mut third = env.spawn_binary(&config, 3).await;
    let (status, _) = third.get("/livez").await.expect("the new instance answers");
    assert_eq!(status, 200);
    third.sigterm();
    let exit = third.wait_exit(LIMIT).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}: {}", third.stderr());
}
