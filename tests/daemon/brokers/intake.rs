//! Reply requests read from a broker: stored before they are acknowledged, sent exactly once
//! even when inboxd is killed mid-stream, the same key twice is one email, and malformed
//! requests are dead-lettered with their reason.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Config as StreamConfig};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};

use super::rabbitmq::Scratch;
use super::{LIMIT, unique};
use crate::support::{Env, eventually};

/// The shared mailbox requests are sent from.
const SUPPORT: &str = "support@contoso.test";
/// Where the new mails go.
const ANN: &str = "ann@customer.test";

/// A new-mail request, as the HTTP API's body.
fn new_mail(subject: &str) -> Value {
    json!({"subject": subject, "to": [ANN], "body": {"content_type": "text", "content": "From the queue."}})
}

/// Subjects in support's Sent Items, with repeats.
async fn sent_subjects(env: &Env) -> Vec<String> {
    env.folder_messages(SUPPORT, "sentitems")
        .await
        .iter()
        .filter_map(|m| m["subject"].as_str().map(str::to_string))
        .collect()
}

fn nats_headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Inboxd-Mailbox", SUPPORT);
    h.insert("Inboxd-Action", "send");
    h.insert("Idempotency-Key", key);
    h
}

/// A stream for requests and their dead letters, and the intake config reading it.
async fn nats_intake(js: &jetstream::Context) -> (String, String, String) {
    let (stream, prefix) = (unique("REQ"), unique("req"));
    js.create_stream(StreamConfig {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.requests.>"), format!("{prefix}.dead")],
        ..Default::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "\n[intake]\ntype = \"nats\"\nstream = \"{stream}\"\nconsumer = \"inboxd\"\n\
         subject = \"{prefix}.requests.>\"\ndead_letter_subject = \"{prefix}.dead\"\n"
    );
    (stream, prefix, toml)
}

async fn publish(js: &jetstream::Context, subject: String, headers: HeaderMap, body: Vec<u8>) {
    js.publish_with_headers(subject, headers, Bytes::from(body))
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The daemon's config for the kill tests. A send cut off by SIGKILL before Graph heard it is
/// retried after a tenth of `outbound.confirm_within` (60 s by default): 20 s keeps that at 2 s.
fn killed_config(env: &Env) -> String {
    format!(
        "{}\n[outbound]\nconfirm_within = \"20s\"\n",
        env.config(&[SUPPORT.to_string()], "1s")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_requests_are_sent_exactly_once_across_kill_9() {
    const REQUESTS: usize = 12;
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let js = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let (stream, prefix, intake) = nats_intake(&js).await;
    let config = env.write_config(&format!("{}{intake}", killed_config(&env)));
    for i in 0..REQUESTS {
        let body = serde_json::to_vec(&new_mail(&format!("Queued {i}"))).unwrap();
        publish(
            &js,
            format!("{prefix}.requests.send"),
            nats_headers(&format!("k{i}")),
            body.clone(),
        )
        .await;
        // Routing retried: the same key again is the same request.
        publish(
            &js,
            format!("{prefix}.requests.send"),
            nats_headers(&format!("k{i}")),
            body,
        )
        .await;
    }
    // Graph-like latency, so the sends take long enough to be killed in the middle.
    env.control("/_emulator/settings", json!({"latency_ms": 100})).await;
    for run in 0..3 {
        let before = sent_subjects(&env).await.len();
        let mut daemon = env.spawn_binary(&config, run).await;
        assert!(
            eventually(LIMIT, || async { sent_subjects(&env).await.len() > before }).await,
            "run {run} sent nothing; stderr:\n{}",
            daemon.stderr()
        );
        daemon.kill_9();
    }
    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let mut daemon = env.spawn_binary(&config, 3).await;
    assert!(
        eventually(LIMIT, || async { sent_subjects(&env).await.len() >= REQUESTS }).await,
        "not every request sent; stderr:\n{}",
        daemon.stderr()
    );
    let consumer_done = eventually(LIMIT, || async {
        let mut s = js.get_stream(&stream).await.unwrap();
        let mut c: jetstream::consumer::PullConsumer = s.get_consumer("inboxd").await.unwrap();
        let _ = s.info().await;
        c.info()
            .await
            .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
    })
    .await;
    daemon.sigterm();
    daemon.wait_exit(Duration::from_secs(20)).await;
    assert!(consumer_done, "requests left unacknowledged in the consumer");
    let mut sent = sent_subjects(&env).await;
    sent.sort();
    let mut wanted: Vec<String> = (0..REQUESTS).map(|i| format!("Queued {i}")).collect();
    wanted.sort();
    assert_eq!(sent, wanted, "each request sent exactly once");
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_nats_requests_are_dead_lettered_with_their_reason() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let js = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let (stream, prefix, intake) = nats_intake(&js).await;
    let subject = format!("{prefix}.requests.send");
    publish(&js, subject.clone(), nats_headers("a"), b"{not json".to_vec()).await;
    let mut unknown = nats_headers("b");
    unknown.insert("Inboxd-Mailbox", "nobody@contoso.test");
    publish(
        &js,
        subject.clone(),
        unknown,
        serde_json::to_vec(&new_mail("x")).unwrap(),
    )
    .await;
    let mut no_key = HeaderMap::new();
    no_key.insert("Inboxd-Mailbox", SUPPORT);
    no_key.insert("Inboxd-Action", "send");
    publish(
        &js,
        subject.clone(),
        no_key,
        serde_json::to_vec(&new_mail("y")).unwrap(),
    )
    .await;
    publish(
        &js,
        subject.clone(),
        nats_headers("c"),
        serde_json::to_vec(&json!({"subject": "no recipients"})).unwrap(),
    )
    .await;
    // The envelope form, for clients that cannot set headers: valid, so it is sent.
    let envelope =
        json!({"mailbox": SUPPORT, "action": "send", "idempotency_key": "d", "request": new_mail("Enveloped")});
    publish(&js, subject, HeaderMap::new(), serde_json::to_vec(&envelope).unwrap()).await;

    let daemon = env
        .start(&format!("{}{intake}", env.config(&[SUPPORT.to_string()], "1s")))
        .await;
    let dead_subject = format!("{prefix}.dead");
    let dead = || async {
        let stream = js.get_stream(&stream).await.unwrap();
        let mut reasons = Vec::new();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await
                && m.subject.as_str() == dead_subject
            {
                reasons.push(m.headers.get("Inboxd-Dead-Letter-Reason").unwrap().to_string());
            }
        }
        reasons
    };
    assert!(eventually(LIMIT, || async { dead().await.len() >= 4 }).await);
    assert!(eventually(LIMIT, || async { sent_subjects(&env).await == ["Enveloped"] }).await);
    daemon.stop().await;
    let reasons = dead().await;
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for code in [
        "invalid_json",
        "unknown_mailbox",
        "idempotency_key_missing",
        "invalid_request",
    ] {
        assert!(reasons.iter().any(|r| r.starts_with(code)), "no {code} in {reasons:?}");
    }
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_requests_are_stored_once_and_malformed_ones_dead_lettered() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    // `s.queue` is the dead-letter queue, bound to the dead-letter exchange.
    let s = Scratch::new().await;
    let requests = unique("requests-");
    s.channel
        .queue_declare(
            requests.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    s.channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            "dead".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = |key: Option<&str>, body: Value| {
        let mut headers = FieldTable::default();
        let mut put = |k: &str, v: &str| {
            headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        };
        put("Inboxd-Mailbox", SUPPORT);
        put("Inboxd-Action", "send");
        if let Some(key) = key {
            put("Idempotency-Key", key);
        }
        let (channel, queue) = (s.channel.clone(), requests.clone());
        async move {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body).unwrap(),
                    BasicProperties::default().with_headers(headers),
                )
                .await
                .unwrap();
        }
    };
    publish(Some("k1"), new_mail("From RabbitMQ")).await;
    publish(Some("k1"), new_mail("From RabbitMQ")).await;
    publish(None, new_mail("No key")).await;
    let toml = format!(
        "{}\n[intake]\ntype = \"rabbitmq\"\nqueue = \"{requests}\"\ndead_letter_exchange = \"{}\"\ndead_letter_routing_key = \"dead\"\n",
        env.config(&[SUPPORT.to_string()], "1s"),
        s.exchange
    );
    let daemon = env.start(&toml).await;
    assert!(
        eventually(LIMIT, || async { s.len().await >= 1 }).await,
        "nothing dead-lettered"
    );
    assert!(eventually(LIMIT, || async { sent_subjects(&env).await == ["From RabbitMQ"] }).await);
    daemon.stop().await;
    let dead = s
        .channel
        .basic_get(
            s.queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    let reason = match dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("Inboxd-Dead-Letter-Reason").cloned())
    {
        Some(AMQPValue::LongString(r)) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
        other => panic!("no reason header: {other:?}"),
    };
    assert!(reason.starts_with("idempotency_key_missing"), "{reason}");
    assert_eq!(
        sent_subjects(&env).await,
        ["From RabbitMQ"],
        "the repeated key sent once"
    );
    let _ = s
        .channel
        .queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_requests_are_sent_exactly_once_across_kill_9() {
    const REQUESTS: usize = 12;
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    // `s.exchange` doubles as the dead-letter exchange; the requests have a queue of their own.
    let s = Scratch::new().await;
    let requests = unique("requests-");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    s.channel
        .queue_declare(requests.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    for i in 0..REQUESTS {
        let mut headers = FieldTable::default();
        for (k, v) in [
            ("Inboxd-Mailbox", SUPPORT.to_string()),
            ("Inboxd-Action", "send".to_string()),
            ("Idempotency-Key", format!("k{i}")),
        ] {
            headers.insert(k.into(), AMQPValue::LongString(LongString::from(v.as_str())));
        }
        let body = serde_json::to_vec(&new_mail(&format!("Queued {i}"))).unwrap();
        // Twice: routing retried, and the same key is the same request.
        for _ in 0..2 {
            s.channel
                .basic_publish(
                    "".into(),
                    requests.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_headers(headers.clone()),
                )
                .await
                .unwrap();
        }
    }
    let config = env.write_config(&format!(
        "{}\n[intake]\ntype = \"rabbitmq\"\nqueue = \"{requests}\"\ndead_letter_exchange = \"{}\"\n",
        killed_config(&env),
        s.exchange
    ));
    env.control("/_emulator/settings", json!({"latency_ms": 100})).await;
    for run in 0..3 {
        let before = sent_subjects(&env).await.len();
        let mut daemon = env.spawn_binary(&config, run).await;
        assert!(
            eventually(LIMIT, || async { sent_subjects(&env).await.len() > before }).await,
            "run {run} sent nothing; stderr:\n{}",
            daemon.stderr()
        );
        daemon.kill_9();
    }
    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    let mut daemon = env.spawn_binary(&config, 3).await;
    assert!(
        eventually(LIMIT, || async { sent_subjects(&env).await.len() >= REQUESTS }).await,
        "not every request sent; stderr:\n{}",
        daemon.stderr()
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let drained = eventually(LIMIT, || async {
        s.channel
            .queue_declare(requests.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok_and(|q| q.message_count() == 0 && q.consumer_count() == 1)
    })
    .await;
    daemon.sigterm();
    daemon.wait_exit(Duration::from_secs(20)).await;
    assert!(drained, "requests left in the queue");
    let mut sent = sent_subjects(&env).await;
    sent.sort();
    let mut wanted: Vec<String> = (0..REQUESTS).map(|i| format!("Queued {i}")).collect();
    wanted.sort();
    assert_eq!(sent, wanted, "each request sent exactly once");
    let _ = s
        .channel
        .queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await;
    s.cleanup().await;
}
