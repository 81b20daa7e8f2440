//! What every sink implements: delivering a batch of events, each encoded once, with one
//! outcome per event.

use async_trait::async_trait;
use bytes::Bytes;

use super::SinkError;
use crate::event::SinkEvent;

/// An event as the sinks send it: its JSON, encoded once, and the fields they route, label
/// and deduplicate by.
#[derive(Debug, Clone)]
pub struct EncodedEvent<'a> {
    /// `event_id`.
    pub event_id: &'a str,
    /// `dedup_key`.
    pub dedup_key: &'a str,
    /// The mailbox, for log lines and broker subjects.
    pub mailbox: &'a str,
    /// `schema`: which kind of event.
    pub schema: &'a str,
    /// The event as JSON.
    pub json: Bytes,
}

impl<'a> EncodedEvent<'a> {
    /// Encodes an event; one that cannot be serialised is the event's fault (rejected).
    pub fn encode<E: SinkEvent>(event: &'a E) -> Result<EncodedEvent<'a>, SinkError> {
        let json = event
            .to_json()
            .map_err(|e| SinkError::Rejected(format!("event cannot be serialised: {e}")))?;
        Ok(EncodedEvent {
            event_id: event.event_id(),
            dedup_key: event.dedup_key(),
            mailbox: event.mailbox(),
            schema: event.schema(),
            json: Bytes::from(json),
        })
    }
}

/// A place events go: an NDJSON file, a webhook, a NATS stream, a RabbitMQ exchange.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers a batch; one outcome per event, in order. `Ok` means durably acknowledged.
    async fn deliver_encoded(&self, events: &[EncodedEvent<'_>]) -> Vec<Result<(), SinkError>>;
}

/// Encodes events and delivers those that encode; one outcome per event, in order (an event
/// that cannot be encoded is rejected without reaching the sink).
pub async fn deliver_all<S, E>(sink: &S, events: &[E]) -> Vec<Result<(), SinkError>>
where
    S: EventSink + ?Sized,
    E: SinkEvent,
{
    let mut encoded = Vec::with_capacity(events.len());
    let mut refused = Vec::with_capacity(events.len());
    for event in events {
        match EncodedEvent::encode(event) {
            Ok(e) => {
                encoded.push(e);
                refused.push(None);
            }
            Err(e) => refused.push(Some(e)),
        }
    }
    let mut delivered = sink.deliver_encoded(&encoded).await.into_iter();
    refused
        .into_iter()
        .map(|r| match r {
            Some(e) => Err(e),
            None => delivered
                .next()
                .unwrap_or_else(|| Err(SinkError::Unavailable("the sink gave no outcome for the event".into()))),
        })
        .collect()
}
