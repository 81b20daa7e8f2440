//! The NATS sink end to end: `kill -9` of inboxd mid-ingest, and the broker itself killed and
//! restarted mid-ingest.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;

use super::{LIMIT, PrivateNats, check, duplicated, sink_unavailable, stream_events, stream_len, unique, with_sink};
use crate::support::{Env, eventually};

/// Graph id → mailbox of every seeded message.
async fn seeded(env: &Env, mailboxes: &[String]) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for m in mailboxes {
        for id in env.inbox_ids(m).await {
            ids.insert(id, m.clone());
        }
    }
    ids
}

fn nats_sink(url: &str, stream: &str, prefix: &str) -> String {
    format!(
        "type = \"nats\"\nurl = \"{url}\"\nstream = \"{stream}\"\ncreate_stream = true\n\
         subject = \"{prefix}.message.{{mailbox}}\"\noutbound_subject = \"{prefix}.outbound.{{mailbox}}\"\n\
         mailbox_state_subject = \"{prefix}.state.{{mailbox}}\"\nstream_subjects = [\"{prefix}.>\"]\ntimeout = \"2s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_ingest_loses_nothing_and_the_stream_holds_no_duplicate() {
    let env = Env::new().await;
    let mailboxes = env.load("natskill", 4, 250).await;
    let expected = seeded(&env, &mailboxes).await;
    let (stream, prefix) = (unique("KILL"), unique("kill"));
    let toml = with_sink(
        &env.config(&mailboxes, "200ms"),
        &nats_sink("nats://127.0.0.1:4222", &stream, &prefix),
    );
    let config = env.write_config(&toml);
    // Graph-like latency, so the ingest takes several seconds and kills land in its middle.
    env.control("/_emulator/settings", json!({"latency_ms": 150})).await;
    let js = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());

    let mut mid_ingest = 0;
    for run in 0..3 {
        let mut daemon = env.spawn_binary(&config, run).await;
        let before = stream_len(&js, &stream, &prefix).await;
        // Killed as soon as this run added events (explicit progress, not a timer).
        assert!(
            eventually(LIMIT, || async { stream_len(&js, &stream, &prefix).await > before }).await,
            "run {run} delivered nothing; stderr:\n{}",
            daemon.stderr()
        );
        daemon.kill_9();
        if stream_len(&js, &stream, &prefix).await < expected.len() {
            mid_ingest += 1;
        }
    }
    assert!(mid_ingest >= 1, "no kill landed mid-ingest");
    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let mut daemon = env.spawn_binary(&config, 3).await;
    assert!(
        eventually(LIMIT, || async {
            stream_len(&js, &stream, &prefix).await >= expected.len()
        })
        .await,
        "not everything delivered; stderr:\n{}",
        daemon.stderr()
    );
    daemon.sigterm();
    daemon
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("inboxd stops on SIGTERM");

    let events = stream_events(&js, &stream, &prefix).await;
    assert_eq!(check(&events, &expected), Vec::<String>::new());
    assert_eq!(
        duplicated(&events),
        0,
        "the stream holds duplicates despite Nats-Msg-Id"
    );
    assert_eq!(events.len(), expected.len());
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_ingest_loses_nothing() {
    let mut nats = PrivateNats::start().await;
    let env = Env::new().await;
    let mailboxes = env.load("natsdown", 4, 250).await;
    let expected = seeded(&env, &mailboxes).await;
    let (stream, prefix) = ("DOWN", "down");
    let toml = with_sink(
        &env.config(&mailboxes, "200ms"),
        &nats_sink(&nats.url(), stream, prefix),
    );
    // Graph-like latency: the ingest takes seconds, so the kill lands in its middle.
    env.control("/_emulator/settings", json!({"latency_ms": 150})).await;
    let daemon = env.start(&toml).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert!(eventually(LIMIT, || async { stream_len(&js, stream, prefix).await > 0 }).await);
    let before_kill = stream_len(&js, stream, prefix).await;
    nats.kill_9();
    assert!(before_kill < expected.len(), "the kill landed after the ingest");
    // inboxd notices: the sink is reported unavailable.
    assert!(
        eventually(LIMIT, || async {
            let (_, metrics) = daemon.get("/metrics", None).await;
            sink_unavailable(&metrics, "nats") == Some(1.0)
        })
        .await,
        "inboxd_sink_unavailable{{sink=\"nats\"}} never became 1"
    );
    nats.restart().await;
    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert!(
        eventually(LIMIT, || async {
            stream_len(&js, stream, prefix).await >= expected.len()
        })
        .await,
        "after the restart the stream holds {} of {}",
        stream_len(&js, stream, prefix).await,
        expected.len()
    );
    assert!(
        eventually(LIMIT, || async {
            let (_, metrics) = daemon.get("/metrics", None).await;
            sink_unavailable(&metrics, "nats") == Some(0.0)
        })
        .await
    );
    daemon.stop().await;
    let events = stream_events(&js, stream, prefix).await;
    assert_eq!(check(&events, &expected), Vec::<String>::new());
    assert_eq!(
        duplicated(&events),
        0,
        "the stream holds duplicates despite Nats-Msg-Id"
    );
}
