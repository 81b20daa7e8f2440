//! Against the RabbitMQ broker on 127.0.0.1:5672 (started by `.ci/run`); every test uses its
//! own exchange and queue and deletes them afterwards.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};

use super::*;
use crate::config::{AmqpConnection, Template};
use crate::sink::file::tests::sample_event;

/// An exchange and a queue bound to every routing key under a prefix, all this test's own.
struct Scratch {
    exchange: String,
    queue: String,
    prefix: String,
    channel: Channel,
    _connection: Connection,
}

pub(crate) fn local() -> AmqpConnection {
    AmqpConnection {
        url: "amqp://127.0.0.1:5672/%2f".into(),
        username: None,
        password: None,
        ca_file: None,
    }
}

impl Scratch {
    /// With a queue bound to `<prefix>.message.#` only (outbound events are unroutable).
    async fn new() -> Scratch {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let connection = crate::broker::amqp::connect(&local(), "inboxd test")
            .await
            .expect("RabbitMQ must listen on 127.0.0.1:5672 (see .ci/run)");
        let channel = connection.create_channel().await.unwrap();
        let s = Scratch {
            exchange: format!("t-{id}"),
            queue: format!("t-{id}"),
            prefix: format!("t{id}"),
            channel,
            _connection: connection,
        };
        s.channel
            .exchange_declare(
                s.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
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

    fn config(&self) -> RabbitSinkConfig {
        let t = |kind: &str| Template::for_tests(&format!("{}.{kind}.{{mailbox}}", self.prefix));
        RabbitSinkConfig {
            connection: local(),
            exchange: self.exchange.clone(),
            routing_keys: Topics {
                message: t("message"),
                outbound: t("outbound"),
                mailbox_state: t("mailbox_state"),
            },
            declare: false,
            timeout: Duration::from_secs(5),
        }
    }

    /// Everything in the queue, in order.
    async fn drain(&self) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m);
        }
        out
    }

    async fn cleanup(self) {
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

#[tokio::test]
async fn every_event_is_published_persistent_as_the_file_sink_writes_it() {
    let s = Scratch::new().await;
    let sink = RabbitSink::open(&s.config()).await.unwrap();
    let events: Vec<_> = (0..20).map(sample_event).collect();
    let outcomes = sink.deliver(&events).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let got = s.drain().await;
    assert_eq!(got.len(), 20);
    // Byte for byte what the file sink writes for the same events, one line each.
    let dir = tempfile::tempdir().unwrap();
    let file = crate::sink::FileSink::open(dir.path().join("events.ndjson"), None)
        .await
        .unwrap();
    assert!(file.deliver(&events).await.iter().all(Result::is_ok));
    let written = std::fs::read(dir.path().join("events.ndjson")).unwrap();
    let lines: Vec<&[u8]> = written.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 20);
    for (line, m) in lines.iter().zip(&got) {
        assert_eq!(*line, m.delivery.data.as_slice());
    }
    for (event, m) in events.iter().zip(&got) {
        assert_eq!(m.delivery.data, serde_json::to_vec(event).unwrap());
        assert_eq!(
            m.delivery.routing_key.as_str(),
            format!("{}.message.support@contoso%2Ecom", s.prefix)
        );
        let p = &m.delivery.properties;
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), event.dedup_key);
        assert_eq!(*p.delivery_mode(), Some(2));
        let headers = p.headers().as_ref().unwrap().inner();
        let text = |k: &str| match headers.get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text(EVENT_ID_HEADER), event.event_id);
        assert_eq!(text(SCHEMA_HEADER), "inboxd.message.v1");
    }
    s.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_event_is_not_acknowledged() {
    let s = Scratch::new().await;
    let mut config = s.config();
    // No queue is bound for this routing key.
    config.routing_keys.message = Template::for_tests(&format!("{}.nowhere.{{mailbox}}", s.prefix));
    let sink = RabbitSink::open(&config).await.unwrap();
    let outcomes = sink.deliver(&[sample_event(0), sample_event(1)]).await;
    for o in &outcomes {
        assert!(
            matches!(o, Err(SinkError::Unavailable(r)) if r.contains("unroutable")),
            "{o:?}"
        );
    }
    // Once routing binds a queue, the same events go through on the same sink.
    let routed = s.config();
    let sink = RabbitSink::open(&routed).await.unwrap();
    assert!(sink.deliver(&[sample_event(0)]).await[0].is_ok());
    assert_eq!(s.drain().await.len(), 1);
    s.cleanup().await;
}

#[tokio::test]
async fn a_missing_exchange_is_a_clear_startup_error_unless_declared() {
    let s = Scratch::new().await;
    let mut config = s.config();
    config.exchange = format!("{}-absent", s.exchange);
    let err = RabbitSink::open(&config).await.unwrap_err();
    assert!(err.to_string().contains("is not usable"), "{err}");
    config.declare = true;
    RabbitSink::open(&config).await.unwrap();
    let _ = s
        .channel
        .exchange_delete(config.exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    s.cleanup().await;
}

#[tokio::test]
async fn a_full_queue_that_rejects_publishes_makes_the_sink_unavailable() {
    let s = Scratch::new().await;
    // A queue that holds one message and refuses more: the broker nacks the rest.
    let full = format!("{}-full", s.queue);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    s.channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    s.channel
        .queue_bind(
            full.as_str().into(),
            s.exchange.as_str().into(),
            format!("{}.outbound.#", s.prefix).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sink = RabbitSink::open(&s.config()).await.unwrap();
    let mut first = crate::sink::nats::tests::outbound_event();
    let outcomes = sink.deliver(std::slice::from_ref(&first)).await;
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    first.dedup_key = "outbound:43:sent".into();
    let outcomes = sink.deliver(&[first]).await;
    assert!(
        matches!(&outcomes[0], Err(SinkError::Unavailable(r)) if r.contains("nack")),
        "{outcomes:?}"
    );
    let _ = s
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await;
    s.cleanup().await;
}
