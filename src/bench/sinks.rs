//! `inboxd bench sinks`: the backlog scenario delivered into each sink in turn (the file sink,
//! NATS JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672), so the broker sinks'
//! throughput is read against the file sink's on the same machine. Completion is the daemon's
//! own `inboxd_messages_delivered_total`; what the broker holds is counted as a cross-check.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::{Map, Value, json};

use super::children::{Daemon, DaemonSpec, Emulator, WorkDir};
use super::events::unix_now;
use super::measure::{RssSampler, clock_ticks, cpu_seconds};
use super::report::{num, ratio};
use super::scenario::{Kind, Plan};

/// NATS the bench publishes to.
const NATS_URL: &str = "nats://127.0.0.1:4222";
/// RabbitMQ the bench publishes to.
const AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";

/// Runs the backlog into every sink; the report has one entry per sink and the ratios.
pub async fn run(exe: &Path, smoke: bool) -> anyhow::Result<Map<String, Value>> {
    let plan = Plan::new(Kind::Backlog, smoke);
    let mut sinks = Map::new();
    let mut problems = Vec::new();
    for kind in ["file", "nats", "rabbitmq"] {
        eprintln!("inboxd bench: backlog into the {kind} sink");
        let r = one(exe, &plan, kind)
            .await
            .with_context(|| format!("the {kind} sink"))?;
        if r["complete"] != json!(true) {
            problems.push(format!("the {kind} run did not deliver every message"));
        }
        sinks.insert(kind.into(), r);
    }
    let rate = |k: &str| sinks[k]["messages_per_s"].as_f64().unwrap_or(0.0);
    let mut r = Map::new();
    r.insert("scenario".into(), json!("sinks"));
    r.insert("smoke".into(), json!(smoke));
    r.insert("messages_seeded".into(), json!(plan.messages));
    r.insert("mailboxes".into(), json!(plan.mailboxes.len()));
    r.insert("nats_to_file_throughput".into(), ratio(rate("nats"), rate("file")));
    r.insert(
        "rabbitmq_to_file_throughput".into(),
        ratio(rate("rabbitmq"), rate("file")),
    );
    r.insert("sinks".into(), Value::Object(sinks));
    r.insert("problems".into(), json!(problems));
    Ok(r)
}

/// Where one run delivers, set up before and removed after.
enum Target {
    File,
    Nats {
        js: jetstream::Context,
        stream: String,
        prefix: String,
    },
    Rabbit {
        channel: lapin::Channel,
        name: String,
        _connection: lapin::Connection,
    },
}

impl Target {
    async fn prepare(kind: &str) -> anyhow::Result<Target> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(match kind {
            "nats" => {
                let client = async_nats::connect(NATS_URL)
                    .await
                    .with_context(|| format!("NATS at {NATS_URL}"))?;
                Target::Nats {
                    js: jetstream::new(client),
                    stream: format!("BENCH{id}"),
                    prefix: format!("bench{id}"),
                }
            }
            "rabbitmq" => {
                let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
                    .await
                    .with_context(|| format!("RabbitMQ at {AMQP_URL}"))?;
                let channel = connection.create_channel().await?;
                let name = format!("bench-{id}");
                let durable = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        lapin::ExchangeKind::Topic,
                        durable,
                        FieldTable::default(),
                    )
                    .await?;
                let queue = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(name.as_str().into(), queue, FieldTable::default())
                    .await?;
                channel
                    .queue_bind(
                        name.as_str().into(),
                        name.as_str().into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Target::Rabbit {
                    channel,
                    name,
                    _connection: connection,
                }
            }
            _ => Target::File,
        })
    }

    /// The `[sink]` keys, `None` for the file sink.
    fn sink(&self) -> Option<String> {
        match self {
            Target::File => None,
            Target::Nats { stream, prefix, .. } => Some(format!(
                "type = \"nats\"\nurl = \"{NATS_URL}\"\nstream = \"{stream}\"\ncreate_stream = true\n\
                 subject = \"{prefix}.message.{{mailbox}}\"\noutbound_subject = \"{prefix}.outbound.{{mailbox}}\"\n\
                 mailbox_state_subject = \"{prefix}.state.{{mailbox}}\"\nstream_subjects = [\"{prefix}.>\"]"
            )),
            Target::Rabbit { name, .. } => Some(format!(
                "type = \"rabbitmq\"\nurl = \"{AMQP_URL}\"\nexchange = \"{name}\""
            )),
        }
    }

    /// Events (of every kind) the broker holds; `None` for the file sink.
    async fn held(&self) -> Option<u64> {
        match self {
            Target::File => None,
            Target::Nats { js, stream, .. } => {
                let s = js.get_stream(stream).await.ok()?;
                Some(s.get_info().await.ok()?.state.messages)
            }
            Target::Rabbit { channel, name, .. } => {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let q = channel
                    .queue_declare(name.as_str().into(), passive, FieldTable::default())
                    .await
                    .ok()?;
                Some(u64::from(q.message_count()))
            }
        }
    }

    async fn cleanup(self) {
        match self {
            Target::File => {}
            Target::Nats { js, stream, .. } => {
                let _ = js.delete_stream(&stream).await;
            }
            Target::Rabbit { channel, name, .. } => {
                let _ = channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}

/// `inboxd_messages_delivered_total` in a metrics text.
fn delivered(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("inboxd_messages_delivered_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// One backlog run into `kind`.
async fn one(exe: &Path, plan: &Plan, kind: &str) -> anyhow::Result<Value> {
    let dir = WorkDir::new()?;
    let emulator = Emulator::start(exe, &dir.path, "emulator").await?;
    for spec in &plan.seed {
        emulator.load(spec).await?;
    }
    let target = Target::prepare(kind).await?;
    let sink = target.sink();
    let ticks = clock_ticks();
    let started = unix_now();
    let daemon = Daemon::start(
        exe,
        &dir.path,
        &emulator.url,
        &DaemonSpec {
            mailboxes: &plan.mailboxes,
            poll_secs: plan.poll_secs,
            start_at: "all",
            safety_poll_secs: None,
            sink: sink.as_deref(),
        },
    )
    .await?;
    let pid = daemon.process.pid();
    let rss = RssSampler::start(pid);
    let deadline = started + plan.deadline_secs;
    let mut count = 0.0;
    let complete = loop {
        if let Ok(text) = daemon.metrics().await {
            count = delivered(&text).unwrap_or(0.0);
        }
        if count >= plan.messages as f64 {
            break true;
        }
        if unix_now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended = unix_now();
    let cpu = cpu_seconds(pid, ticks).unwrap_or(f64::NAN);
    let peak_mb = rss.peak_bytes() as f64 / (1024.0 * 1024.0);
    drop(rss);
    drop(daemon);
    drop(emulator);
    let held = target.held().await;
    target.cleanup().await;
    let duration = ended - started;
    Ok(json!({
        "sink": kind,
        "complete": complete,
        "messages_delivered": count,
        "broker_events_held": held,
        "duration_s": num(duration),
        "messages_per_s": ratio(count, duration),
        "daemon_cpu_seconds_per_1000_messages": ratio(cpu * 1000.0, count),
        "daemon_peak_rss_mb": num(peak_mb),
        "timing_source": "daemon start to inboxd_messages_delivered_total reaching the seeded count (polled every 100 ms)",
    }))
}
