//! The API against slow, many and careless clients: half-open connections are closed after
//! the header timeout without starving `/livez`; bodies are limited per route; the store's
//! own error text stays in the log, the client gets a short reason and a request id.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::outbound::{ANN, SUPPORT, config, from_ann};
use crate::support::{API_TOKEN, Env, eventually};

/// Idle, half-open connections opened at once.
const HALF_OPEN: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_half_open_connections_neither_starve_livez_nor_stay_open() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into()]).await;
    let toml = config(&env, &[SUPPORT]).replace(
        "shutdown_grace = \"10s\"\n",
        "shutdown_grace = \"10s\"\nheader_timeout = \"2s\"\n",
    );
    let binary = env.spawn_binary(&env.write_config(&toml), 0).await;
    let addr = binary.addr();
    let mut idle = Vec::with_capacity(HALF_OPEN + 10);
    for i in 0..HALF_OPEN {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            // A request line and one header, then nothing: the headers never end.
            s.write_all(b"GET /livez HTTP/1.1\r\nHost: inboxd\r\n").await.unwrap();
        }
        // (The other half send nothing at all.)
        idle.push(s);
    }
    // Keep-alive connections left idle after one complete request.
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: inboxd\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        idle.push(s);
    }
    let opened = Instant::now();
    let started = Instant::now();
    let (status, body) = binary.get("/livez").await.expect("/livez answers");
    let took = started.elapsed();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        took < Duration::from_secs(1),
        "/livez took {took:?} beside {HALF_OPEN} idle connections"
    );

    // Every idle connection is closed by the server (EOF or reset) within the header timeout.
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        let mut handles = Vec::new();
        for mut s in idle {
            handles.push(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "idle connections still open {:?} after they were opened (header timeout 2s)",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_are_limited_per_route() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Big").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let big = json!({"refresh_token": "x".repeat(1024 * 1024)});
    let resp = http
        .post(format!("{base}/v1/mailboxes/{SUPPORT}/refresh-token"))
        .bearer_auth(API_TOKEN)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413, "a megabyte to a small route");
    // The reply route takes what Graph allows: a 1 MB attachment is fine.
    let attachment = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![7u8; 1024 * 1024]);
    let resp = http
        .post(format!("{base}/v1/mailboxes/{SUPPORT}/messages/{original}/reply"))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "big-1")
        .json(&json!({"comment": "a file", "attachments": [{"name": "a.bin", "content_base64": attachment}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 202, "{:?}", resp.text().await);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_errors_stay_in_the_log_and_the_client_gets_a_request_id() {
    const DETAIL: &str = "private detail of the database";
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Broken store").await;
    let binary = env.spawn_binary(&env.write_config(&config(&env, &[SUPPORT])), 0).await;
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", env.dir.path().join("inboxd.db").display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_insert BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'private detail of the database'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/mailboxes/{SUPPORT}/messages/{original}/reply",
            binary.addr()
        ))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "broken-1")
        .json(&json!({"comment": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let header = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("x-request-id");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert_eq!(body["error"]["request_id"], header.as_str(), "{body}");
    assert!(
        !body.to_string().contains(DETAIL),
        "the store's text reached the client: {body}"
    );
    let logged = eventually(Duration::from_secs(5), || async {
        binary
            .stderr()
            .lines()
            .any(|l| l.contains(DETAIL) && l.contains(&header))
    })
    .await;
    assert!(logged, "the detail is not in the log under the request id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into()]).await;
    let toml = config(&env, &[SUPPORT]).replace(
        "shutdown_grace = \"10s\"\n",
        "shutdown_grace = \"10s\"\nheader_timeout = \"60s\"\nmax_connections = 3\n",
    );
    let binary = env.spawn_binary(&env.write_config(&toml), 0).await;
    let addr = binary.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: inboxd\r\n").await.unwrap();
        held.push(s);
    }
    // A fourth client is not served while the three hold every slot (their header timeout is
    // a minute away; without the limit this answers in milliseconds).
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    fourth
        .write_all(b"GET /livez HTTP/1.1\r\nHost: inboxd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(1), fourth.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "served beyond the limit: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // One slot frees: the fourth is served.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(10), fourth.read_to_end(&mut answer))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}
