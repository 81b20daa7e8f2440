//! Refresh-token rotation across `kill -9` and 92 emulated days.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delegated::*;
use crate::support::{CLIENT, Env, TENANT, eventually, is_token_request};
use crate::support::{addr, last_seq};

// ---------------------------------------------------------------------------------------
// Rotation across kill -9
// ---------------------------------------------------------------------------------------

/// With 2-second access tokens the daemon refreshes about once a second. Halfway and at the
/// end of 92 emulated days the emulator clock jumps 46 days: refresh tokens unused for 90
/// days die (AADSTS700082), so only a daemon that stores and uses each rotated token keeps
/// going. It is killed right after a refresh was answered and must carry on after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_refresh_tokens_survive_kill_9_through_ninety_two_days() {
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let user = addr("rotation");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let path = env.write_config(&config(&env, &[], &delegated(&user, "test")));
    let mut daemon = env.spawn_binary(&path, 1).await;
    let imported = mint(&env, TENANT, CLIENT, &user).await;
    let (status, body) = import(daemon.addr(), &user, &imported).await;
    assert_eq!(status, 200, "import: {body}\n{}", daemon.stderr());
    let store = StoreFile::open(&env).await;
    let mut rotations = Rotations::default();
    env.deliver(&user, "day 0").await;
    assert!(
        wait_delivered(&env, &user, "day 0", Duration::from_secs(10)).await,
        "{}",
        daemon.stderr()
    );

    for day in [46, 92] {
        let n = rotations.seen.len() + 4;
        assert!(
            rotations.until(&store, &user, n, Duration::from_secs(15)).await,
            "the daemon stopped rotating before day {day}: {} tokens stored; {}\n{}",
            rotations.seen.len(),
            view(daemon.addr(), &user).await,
            daemon.stderr()
        );
        env.control("/_emulator/clock", json!({"advance_secs": 46 * 86_400}))
            .await;
    }
    let n = rotations.seen.len() + 4;
    assert!(
        rotations.until(&store, &user, n, Duration::from_secs(15)).await,
        "the daemon stopped rotating after day 92: {}\n{}",
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );

    // SIGKILL as soon as the emulator has answered a refresh (before or just after it was stored).
    let prefix = format!("/{TENANT}/oauth2");
    let since = last_seq(&env).await;
    let answered = eventually(Duration::from_secs(10), || async {
        let entries: Value = env
            .control_get(&format!("/_emulator/requests?since={since}&path_prefix={prefix}"))
            .await;
        entries["requests"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["status"] == 200))
    })
    .await;
    daemon.kill_9();
    assert!(answered, "no refresh within 10 s before the kill");
    rotations.observe(&store, &user).await;
    let before_kill = rotations.seen.len();

    let daemon = env.spawn_binary(&path, 2).await;
    env.deliver(&user, "day 92, after kill -9").await;
    assert!(
        wait_delivered(&env, &user, "day 92, after kill -9", Duration::from_secs(15)).await,
        "no delivery after the restart: {}\n{}",
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );
    let total = (before_kill + 3).max(21);
    assert!(
        rotations.until(&store, &user, total, Duration::from_secs(30)).await,
        "after the restart only {} refresh tokens were stored in all (expected {total}); {}\n{}",
        rotations.seen.len(),
        view(daemon.addr(), &user).await,
        daemon.stderr()
    );
    wait_state(&env, daemon.addr(), &user, "active", LIMIT).await;

    let mut distinct = rotations.seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), rotations.seen.len(), "a refresh token was stored twice");
    assert!(
        rotations.seen.iter().skip(1).all(|t| *t != imported),
        "the imported token came back after rotation"
    );
    let refused: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| is_token_request(e) && e["status"] != 200)
        .collect();
    assert!(refused.is_empty(), "token requests refused: {refused:#?}");
    // Flagged before the import (no grant yet); never once it had one.
    let events = state_events(&env, &user);
    let first_active = events
        .iter()
        .position(|e| e["state"] == "active")
        .expect("a state event into active");
    let left: Vec<&Value> = events[first_active..]
        .iter()
        .filter(|e| e["state"] != "active")
        .collect();
    assert!(left.is_empty(), "the mailbox left active: {left:#?}");
}
