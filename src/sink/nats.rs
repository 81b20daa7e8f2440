//! The NATS JetStream sink: each event published to its subject with `Nats-Msg-Id` =
//! `dedup_key`, acknowledged only once the stream's PubAck arrived.

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
// Only the tests name it (through `use super::*`): events arrive encoded.
#[cfg(test)]
use bytes::Bytes;

use super::{EncodedEvent, EventSink, SinkError, deliver_all};
use crate::config::{NatsSinkConfig, Retention, StreamSettings, Topics};
use crate::event::SinkEvent;

/// Header carrying the event's `event_id`.
pub const EVENT_ID_HEADER: &str = "Inboxd-Event-Id";
/// Header carrying the event's `schema`.
pub const SCHEMA_HEADER: &str = "Inboxd-Schema";

/// Publishes events to a JetStream stream.
///
/// A batch is published as a whole (every message sent before any PubAck is awaited), then
/// each event is acknowledged by its own PubAck. `Nats-Msg-Id` is the `dedup_key`, so a
/// replay within the stream's duplicate window is dropped by the stream itself.
pub struct NatsSink {
    /// JetStream context; its timeout bounds each PubAck wait.
    js: jetstream::Context,
    /// Subject templates.
    subjects: Topics,
    /// The stream that must capture every event (a PubAck from another is not ours).
    stream: String,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connects, then creates the stream (`create_stream`) or checks that it exists and
    /// captures the configured subjects.
    pub async fn open(config: &NatsSinkConfig) -> Result<NatsSink, SinkError> {
        let client = crate::broker::nats::connect(&config.connection, "inboxd sink")
            .await
            .map_err(SinkError::Unavailable)?;
        let mut js = jetstream::new(client);
        js.set_timeout(config.timeout);
        ensure_stream(&js, config).await.map_err(SinkError::Unavailable)?;
        Ok(NatsSink {
            js,
            subjects: config.subjects.clone(),
            stream: config.stream.clone(),
        })
    }

    /// Encodes and delivers typed events (see [`EventSink::deliver_encoded`]).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        deliver_all(self, events).await
    }

    /// Sends one event; the future resolves with its PubAck.
    async fn publish(&self, event: &EncodedEvent<'_>) -> Result<PublishAckFuture, SinkError> {
        let subject = self.subjects.for_schema(event.schema).render(event.mailbox);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.dedup_key);
        headers.insert(EVENT_ID_HEADER, event.event_id);
        headers.insert(SCHEMA_HEADER, event.schema);
        headers.insert("Content-Type", "application/json");
        self.js
            .publish_with_headers(subject, headers, event.json.clone())
            .await
            .map_err(|e| failure(e.kind(), &e))
    }
}

#[async_trait]
impl EventSink for NatsSink {
    /// Publishes the batch, then waits for every PubAck; one outcome per event, in order.
    async fn deliver_encoded(&self, events: &[EncodedEvent<'_>]) -> Vec<Result<(), SinkError>> {
        let mut pending: Vec<Result<PublishAckFuture, SinkError>> = Vec::with_capacity(events.len());
        for event in events {
            pending.push(self.publish(event).await);
        }
        let acks = pending.into_iter().map(|p| async move {
            let ack = p?.await.map_err(|e| failure(e.kind(), &e))?;
            if ack.stream != self.stream {
                return Err(SinkError::Unavailable(format!(
                    "the subject is captured by stream '{}', not '{}'",
                    ack.stream, self.stream
                )));
            }
            Ok(())
        });
        let outcomes = futures_util::future::join_all(acks).await;
        if let Some(Err(e)) = outcomes.iter().find(|o| matches!(o, Err(SinkError::Unavailable(_)))) {
            tracing::warn!(
                stream = %self.stream,
                error = %e,
                "NATS did not acknowledge a batch; it stays pending."
            );
        }
        outcomes
    }
}

/// A publish that failed: too big for the server is this event's fault (quarantined, like
/// a webhook's 413); anything else (no connection, no ack in time, no stream, a full stream)
/// is the broker's, so the event stays pending.
fn failure(kind: PublishErrorKind, e: &(dyn std::error::Error + 'static)) -> SinkError {
    let reason = crate::broker::chain(e);
    let too_big = kind == PublishErrorKind::MaxPayloadExceeded
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|js| js.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    if too_big {
        SinkError::Rejected(format!("NATS refused the event: {reason}"))
    } else {
        SinkError::Unavailable(format!("NATS publish failed: {reason}"))
    }
}

/// Creates the stream when asked and it is absent; otherwise checks it captures our subjects.
async fn ensure_stream(js: &jetstream::Context, config: &NatsSinkConfig) -> Result<(), String> {
    let name = &config.stream;
    let settings = &config.stream_settings;
    let info = match js.get_stream(name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(e) if is_not_found(&e) && config.create_stream => {
            js.create_stream(stream_config(name, settings))
                .await
                .map_err(|e| format!("cannot create JetStream stream '{name}': {}", crate::broker::chain(&e)))?;
            tracing::info!(stream = %name, subjects = ?settings.subjects, "Created the JetStream stream.");
            return Ok(());
        }
        Err(e) if is_not_found(&e) => {
            return Err(format!(
                "JetStream stream '{name}' does not exist; create it or set sink.create_stream = true"
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot look up JetStream stream '{name}': {}",
                crate::broker::chain(&e)
            ));
        }
    };
    for template in config.subjects.all() {
        let sample = template.render("probe@example.com");
        if !info.subjects.iter().any(|pattern| subject_matches(pattern, &sample)) {
            return Err(format!(
                "JetStream stream '{name}' does not capture subject '{}' (its subjects: {})",
                template.as_str(),
                info.subjects.join(", ")
            ));
        }
    }
    if info.duplicate_window.is_zero() {
        return Err(format!(
            "JetStream stream '{name}' has no duplicate window, so replays would be stored twice"
        ));
    }
    if config.create_stream && info.duplicate_window != settings.duplicate_window {
        tracing::warn!(
            stream = %name,
            configured = ?settings.duplicate_window,
            actual = ?info.duplicate_window,
            "The existing stream's duplicate window differs from sink.duplicate_window; the stream's applies."
        );
    }
    Ok(())
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The stream inboxd creates: file storage, discard new (a full stream refuses rather than
/// dropping undelivered events).
fn stream_config(name: &str, settings: &StreamSettings) -> StreamConfig {
    StreamConfig {
        name: name.to_string(),
        subjects: settings.subjects.clone(),
        retention: match settings.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        duplicate_window: settings.duplicate_window,
        max_messages: settings.max_messages.unwrap_or(-1),
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest (at least one token).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
pub(super) mod tests;
