//! Where events go: an NDJSON file, a signed webhook, a NATS JetStream stream or a RabbitMQ
//! exchange. Only an acknowledgement from the sink lets the checkpoint advance.

mod deliver;
mod file;
mod nats;
mod rabbitmq;
mod webhook;

pub use deliver::{EncodedEvent, EventSink, deliver_all};
pub use file::FileSink;
pub use nats::NatsSink;
pub use rabbitmq::RabbitSink;
pub use webhook::WebhookSink;

use crate::config::SinkConfig;
use crate::event::SinkEvent;
use crate::metrics::Metrics;

/// Why an event was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Try again later (I/O error, timeout, a redirect, 401/403/404, 408, 429, 5xx): the
    /// message stays pending and the mailbox waits; nothing is quarantined for it.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The receiver said this very event is bad (400, 413, 422): quarantine it.
    #[error("sink rejected the event: {0}")]
    Rejected(String),
}

/// The configured sink, and whether it is answering.
pub struct Sink {
    /// The file, the receiver or the broker.
    inner: Box<dyn EventSink>,
    /// `inboxd_sink_unavailable{sink}`: 1 while the last delivery found the sink unavailable.
    unavailable: prometheus_client::metrics::gauge::Gauge,
}

impl Sink {
    /// Opens the sink a config names (creates the file's directory).
    pub async fn open(config: &SinkConfig, http: reqwest::Client, metrics: &Metrics) -> Result<Sink, SinkError> {
        let (label, inner): (&str, Box<dyn EventSink>) = match config {
            SinkConfig::File { path, max_bytes } => ("file", Box::new(FileSink::open(path.clone(), *max_bytes).await?)),
            SinkConfig::Webhook {
                url,
                signing_secret,
                timeout,
            } => (
                "webhook",
                Box::new(WebhookSink::new(http, url.clone(), signing_secret.clone(), *timeout)),
            ),
            SinkConfig::Nats(c) => ("nats", Box::new(NatsSink::open(c).await?)),
            SinkConfig::Rabbitmq(c) => ("rabbitmq", Box::new(RabbitSink::open(c).await?)),
        };
        let unavailable = metrics
            .sink_unavailable
            .get_or_create(&vec![("sink", label.to_string())])
            .clone();
        unavailable.set(0);
        Ok(Sink { inner, unavailable })
    }

    /// Delivers events; one outcome per event, in order. `Ok` means durably acknowledged
    /// (the file sink has fsynced; the webhook answered 2xx; the stream sent its PubAck; the
    /// exchange confirmed without returning the event).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        let outcomes = deliver_all(self.inner.as_ref(), events).await;
        if outcomes.iter().any(|o| matches!(o, Err(SinkError::Unavailable(_)))) {
            self.unavailable.set(1);
        } else if !outcomes.is_empty() {
            self.unavailable.set(0);
        }
        outcomes
    }
}
