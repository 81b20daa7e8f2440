//! The RabbitMQ sink end to end: connections cut and restored mid-ingest by a proxy.

use std::collections::HashMap;

use inboxd::event::MessageEvent;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use super::{LIMIT, Proxy, check, sink_unavailable, unique, with_sink};
use crate::support::{Env, eventually};

/// An exchange and a queue bound to `<prefix>.message.#`, all the test's own.
pub struct Scratch {
    pub exchange: String,
    pub queue: String,
    pub prefix: String,
    pub channel: Channel,
    _connection: Connection,
}

impl Scratch {
    pub async fn new() -> Scratch {
        let connection = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default())
            .await
            .expect("RabbitMQ must listen on 127.0.0.1:5672 (see .ci/services)");
        let channel = connection.create_channel().await.unwrap();
        let s = Scratch {
            exchange: unique("x-"),
            queue: unique("q-"),
            prefix: unique("p"),
            channel,
            _connection: connection,
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        s.channel
            .exchange_declare(
                s.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        s.channel
            .queue_declare(
                s.queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        s.channel
            .queue_bind(
                s.queue.as_str().into(),
                s.exchange.as_str().into(),
                format!("{}.message.#", s.prefix).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        s
    }

    /// Messages waiting in the queue.
    pub async fn len(&self) -> usize {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .map(|q| q.message_count() as usize)
            .unwrap_or(0)
    }

    /// Takes every message: the event and its `message_id`.
    pub async fn drain(&self) -> Vec<(MessageEvent, String)> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let id = m.delivery.properties.message_id().as_ref().map(|s| s.to_string());
            out.push((
                serde_json::from_slice(&m.delivery.data).unwrap(),
                id.unwrap_or_default(),
            ));
        }
        out
    }

    pub fn sink(&self, url: &str) -> String {
        format!(
            "type = \"rabbitmq\"\nurl = \"{url}\"\nexchange = \"{}\"\nrouting_key = \"{p}.message.{{mailbox}}\"\n\
             outbound_routing_key = \"{p}.outbound.{{mailbox}}\"\nmailbox_state_routing_key = \"{p}.message_state.{{mailbox}}\"\n\
             timeout = \"2s\"\n",
            self.exchange,
            p = self.prefix
        )
    }

    pub async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_and_restored_mid_ingest_lose_nothing() {
    let s = Scratch::new().await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let env = Env::new().await;
    let mailboxes = env.load("mqcut", 4, 250).await;
    let mut expected = HashMap::new();
    for m in &mailboxes {
        for id in env.inbox_ids(m).await {
            expected.insert(id, m.clone());
        }
    }
    let toml = with_sink(
        &env.config(&mailboxes, "200ms"),
        &s.sink(&format!("amqp://{}/%2f", proxy.addr)),
    );
    // Graph-like latency: the ingest takes seconds, so the cut lands in its middle.
    env.control("/_emulator/settings", json!({"latency_ms": 150})).await;
    let daemon = env.start(&toml).await;
    assert!(eventually(LIMIT, || async { s.len().await > 0 }).await);

    proxy.cut();
    assert!(
        eventually(LIMIT, || async {
            let (_, metrics) = daemon.get("/metrics", None).await;
            sink_unavailable(&metrics, "rabbitmq") == Some(1.0)
        })
        .await,
        "inboxd_sink_unavailable{{sink=\"rabbitmq\"}} never became 1"
    );
    let during = s.len().await;
    proxy.restore();
    env.control("/_emulator/settings", json!({"latency_ms": 0})).await;
    // Taken off the queue as they come (copies count once), until every message is there.
    let got = std::sync::Mutex::new(Vec::new());
    let all_there = eventually(LIMIT, || async {
        let fresh = s.drain().await;
        let mut got = got.lock().unwrap();
        got.extend(fresh);
        let events: Vec<MessageEvent> = got.iter().map(|(e, _)| e.clone()).collect();
        check(&events, &expected).is_empty()
    })
    .await;
    daemon.stop().await;
    let mut got = got.into_inner().unwrap();
    got.extend(s.drain().await);
    assert!(all_there, "not every message arrived after the cut");
    assert!(during < expected.len(), "the cut landed after the ingest");
    for (event, message_id) in &got {
        assert_eq!(&event.dedup_key, message_id, "message_id is the dedup_key");
    }
    let events: Vec<MessageEvent> = got.into_iter().map(|(e, _)| e).collect();
    assert_eq!(check(&events, &expected), Vec::<String>::new());
    s.cleanup().await;
}
