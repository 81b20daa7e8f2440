//! Where events go: an NDJSON file or a signed webhook. Only an acknowledgement from
//! the sink lets the checkpoint advance.

mod file;
mod webhook;

pub use file::FileSink;
pub use webhook::WebhookSink;

use crate::config::SinkConfig;
use crate::event::SinkEvent;

/// Why an event was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Try again later (I/O error, timeout, 5xx, 408, 429): the message stays pending.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The receiver refused this event for good (4xx other than 408/429): quarantine it.
    #[error("sink rejected the event: {0}")]
    Rejected(String),
}

/// The configured sink.
pub enum Sink {
    /// NDJSON file.
    File(FileSink),
    /// HTTP receiver.
    Webhook(WebhookSink),
}

impl Sink {
    /// Opens the sink a config names (creates the file's directory).
    pub async fn open(config: &SinkConfig, http: reqwest::Client) -> Result<Sink, SinkError> {
        match config {
            SinkConfig::File { path, max_bytes } => Ok(Sink::File(FileSink::open(path.clone(), *max_bytes).await?)),
            SinkConfig::Webhook {
                url,
                signing_secret,
                timeout,
            } => Ok(Sink::Webhook(WebhookSink::new(
                http,
                url.clone(),
                signing_secret.clone(),
                *timeout,
            ))),
        }
    }

    /// Delivers events; one outcome per event, in order. `Ok` means durably acknowledged
    /// (the file sink has fsynced; the webhook answered 2xx).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        match self {
            Sink::File(f) => f.deliver(events).await,
            Sink::Webhook(w) => w.deliver(events).await,
        }
    }
}
