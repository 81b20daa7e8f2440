//! Refresh tokens are kept out of the store file and TRACE logs.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::delegated::*;
use crate::support::{CLIENT, Env, TENANT};
use crate::support::{addr, api_get};

/// Every file of the SQLite store (database, WAL, shared memory), concatenated.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("inboxd.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    bytes
}

/// Places where something shaped like an emulator refresh token (`1.A` + ≥ 64 base64url
/// characters) appears in clear.
fn token_shaped(bytes: &[u8]) -> Vec<String> {
    let url_safe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let mut found = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if w == b"1.A" {
            let run = bytes[i + 3..].iter().take_while(|b| url_safe(b)).count();
            if run >= 64 {
                found.push(String::from_utf8_lossy(&bytes[i..i + 3 + run.min(24)]).into_owned() + "…");
            }
        }
    }
    found
}

/// Places where something shaped like a signed JWT (an access token) appears.
fn jwt_shaped(bytes: &[u8]) -> Vec<String> {
    let jwt = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'.';
    let mut found = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if w == b"eyJ" {
            let run = &bytes[i..];
            let len = run.iter().take_while(|b| jwt(b)).count();
            if len >= 100 && run[..len].iter().filter(|b| **b == b'.').count() == 2 {
                found.push(String::from_utf8_lossy(&run[..24]).into_owned() + "…");
            }
        }
    }
    found
}

/// Whether `haystack` holds `token` or a 32-character piece of it.
fn contains_token(haystack: &[u8], token: &str) -> bool {
    let piece = &token.as_bytes()[3..35.min(token.len())];
    haystack.windows(piece.len()).any(|w| w == piece)
}

// ---------------------------------------------------------------------------------------
// Secrets at rest and in logs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_refresh_token_in_clear_in_the_store_file_or_in_trace_logs() {
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let user = addr("secretive");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let path = env.write_config(&config(&env, &[], &delegated(&user, "test")));
    let mut daemon = env.spawn_binary_logging(&path, 0, Some("trace")).await;

    // Two imports (a migration retried), then several rotations.
    let mut known = vec![
        mint(&env, TENANT, CLIENT, &user).await,
        mint(&env, TENANT, CLIENT, &user).await,
    ];
    for t in &known {
        let (status, body) = import(daemon.addr(), &user, t).await;
        assert_eq!(status, 200, "import: {body}");
        assert!(
            !contains_token(body.as_bytes(), t),
            "the import answer echoes the token"
        );
    }
    env.deliver(&user, "with a delegated grant").await;
    assert!(wait_delivered(&env, &user, "with a delegated grant", Duration::from_secs(10)).await);
    let store = StoreFile::open(&env).await;
    let mut rotations = Rotations::default();
    assert!(
        rotations.until(&store, &user, 4, Duration::from_secs(15)).await,
        "fewer than 4 stored refresh tokens: {}",
        rotations.seen.len()
    );
    store.pool.close().await;
    known.extend(rotations.seen.iter().cloned());
    let (_, _, listing) = api_get(daemon.addr(), "/v1/mailboxes").await;
    daemon.stop(Duration::from_secs(20)).await;

    let bytes = store_bytes(env.dir.path());
    assert!(!bytes.is_empty(), "no store file");
    let in_store: Vec<usize> = (0..known.len())
        .filter(|i| contains_token(&bytes, &known[*i]))
        .collect();
    assert!(
        in_store.is_empty(),
        "refresh tokens {in_store:?} (of {}) are in the store file in clear",
        known.len()
    );
    assert_eq!(
        token_shaped(&bytes),
        Vec::<String>::new(),
        "token-shaped strings in the store file"
    );

    let log = std::fs::read(&daemon.log).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("\"level\":\"TRACE\""),
        "RUST_LOG=trace produced no TRACE line; the check below would prove nothing"
    );
    let in_log: Vec<usize> = (0..known.len()).filter(|i| contains_token(&log, &known[*i])).collect();
    assert!(
        in_log.is_empty(),
        "refresh tokens {in_log:?} (of {}) are in the log",
        known.len()
    );
    assert_eq!(
        token_shaped(&log),
        Vec::<String>::new(),
        "token-shaped strings in the log"
    );
    assert_eq!(jwt_shaped(&log), Vec::<String>::new(), "access tokens in the log");
    assert_eq!(token_shaped(listing.as_bytes()), Vec::<String>::new(), "/v1/mailboxes");
}
