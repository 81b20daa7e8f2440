//! The RabbitMQ sink: each event published persistent and mandatory with publisher confirms;
//! acknowledged only by the broker's confirm, never when it returned the event as unroutable.

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};
use tokio::sync::Mutex;

use super::{EncodedEvent, EventSink, SinkError, deliver_all};
use crate::config::{RabbitSinkConfig, Topics};
use crate::event::SinkEvent;

/// Header carrying the event's `event_id`.
pub const EVENT_ID_HEADER: &str = "inboxd-event-id";
/// Header carrying the event's `schema`.
pub const SCHEMA_HEADER: &str = "inboxd-schema";

/// Publishes events to an exchange.
///
/// A batch is published as a whole, then every publisher confirm is awaited: only an `ack`
/// without a `basic.return` acknowledges an event. A nack, a return (no queue bound for the
/// routing key: `mandatory` is set), a lost connection or no confirm within the timeout leave
/// the event pending. The connection is reopened by the next batch after any failure.
pub struct RabbitSink {
    /// Where and how to connect.
    config: RabbitSinkConfig,
    /// The open connection and its confirm-mode channel; `None` after a failure. Locked only
    /// to take the channel or replace it, never while waiting for confirms.
    link: Mutex<Option<Link>>,
}

/// A connection and its channel in confirm mode.
struct Link {
    /// Kept so the connection lives as long as its channel.
    connection: Connection,
    /// Channel with publisher confirms.
    channel: Channel,
    /// Counts reconnections, so a batch resets only the link it failed on.
    generation: u64,
}

impl std::fmt::Debug for RabbitSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSink")
            .field("exchange", &self.config.exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitSink {
    /// Connects and declares the exchange (`declare = true`) or checks that it exists.
    pub async fn open(config: &RabbitSinkConfig) -> Result<RabbitSink, SinkError> {
        let sink = RabbitSink {
            config: config.clone(),
            link: Mutex::new(None),
        };
        let link = sink.connect().await.map_err(SinkError::Unavailable)?;
        *sink.link.lock().await = Some(link);
        Ok(sink)
    }

    async fn connect(&self) -> Result<Link, String> {
        let connection = crate::broker::amqp::connect(&self.config.connection, "inboxd sink").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a RabbitMQ channel: {e}"))?;
        let exchange = &self.config.exchange;
        if !exchange.is_empty() {
            let options = ExchangeDeclareOptions {
                passive: !self.config.declare,
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    if self.config.declare {
                        format!("cannot declare RabbitMQ exchange '{exchange}': {e}")
                    } else {
                        format!(
                            "RabbitMQ exchange '{exchange}' is not usable ({e}); declare it or set sink.declare = true"
                        )
                    }
                })?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("cannot enable publisher confirms: {e}"))?;
        Ok(Link {
            connection,
            channel,
            generation: 0,
        })
    }

    /// Encodes and delivers typed events (see [`EventSink::deliver_encoded`]).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        deliver_all(self, events).await
    }

    /// The open channel (and its generation), connecting first if there is none or it broke.
    async fn channel(&self) -> Result<(u64, Channel), String> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref()
            && crate::broker::amqp::usable(&l.connection, &l.channel)
        {
            return Ok((l.generation, l.channel.clone()));
        }
        let generation = link.as_ref().map_or(0, |l| l.generation + 1);
        *link = None;
        let mut fresh = self.connect().await?;
        fresh.generation = generation;
        let out = (generation, fresh.channel.clone());
        *link = Some(fresh);
        Ok(out)
    }

    async fn publish(&self, channel: &Channel, event: &EncodedEvent<'_>) -> Result<PublisherConfirm, SinkError> {
        let routing_key = routing_key(&self.config.routing_keys, event);
        let mut headers = FieldTable::default();
        headers.insert(
            EVENT_ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(event.event_id)),
        );
        headers.insert(
            SCHEMA_HEADER.into(),
            AMQPValue::LongString(LongString::from(event.schema)),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.dedup_key.into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        channel
            .basic_publish(
                self.config.exchange.as_str().into(),
                routing_key.into(),
                options,
                &event.json,
                properties,
            )
            .await
            .map_err(|e| unavailable(format!("publish failed: {e}")))
    }
}

#[async_trait]
impl EventSink for RabbitSink {
    /// Publishes the batch, then waits for every confirm; one outcome per event, in order.
    /// Batches of several mailboxes share the channel and are in flight at the same time.
    async fn deliver_encoded(&self, events: &[EncodedEvent<'_>]) -> Vec<Result<(), SinkError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let (generation, channel) = match self.channel().await {
            Ok(c) => c,
            Err(reason) => {
                tracing::warn!(exchange = %self.config.exchange, error = %reason, "RabbitMQ is unavailable; the batch stays pending.");
                return events
                    .iter()
                    .map(|_| Err(SinkError::Unavailable(reason.clone())))
                    .collect();
            }
        };
        let mut pending: Vec<Result<PublisherConfirm, SinkError>> = Vec::with_capacity(events.len());
        for event in events {
            pending.push(self.publish(&channel, event).await);
        }
        let timeout = self.config.timeout;
        let confirms = pending.into_iter().map(|p| async move {
            match tokio::time::timeout(timeout, p?).await {
                Err(_) => Err(unavailable(format!(
                    "no publisher confirm within {}s",
                    timeout.as_secs()
                ))),
                Ok(Err(e)) => Err(unavailable(format!("publish failed: {e}"))),
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
                    Err(unavailable(format!(
                        "the broker returned the event as unroutable ({} {}): no queue is bound for routing key '{}'",
                        returned.reply_code, returned.reply_text, returned.delivery.routing_key
                    )))
                }
                Ok(Ok(Confirmation::Nack(None))) => Err(unavailable("the broker nacked the event".to_string())),
                Ok(Ok(Confirmation::NotRequested)) => Err(unavailable("publisher confirms are off".to_string())),
            }
        });
        let outcomes = futures_util::future::join_all(confirms).await;
        if let Some(Err(e)) = outcomes.iter().find(|o| matches!(o, Err(SinkError::Unavailable(_)))) {
            tracing::warn!(exchange = %self.config.exchange, error = %e, "RabbitMQ did not confirm a batch; it stays pending.");
            // Confirms of a failed channel are lost for good: the next batch starts afresh.
            let mut link = self.link.lock().await;
            if link
                .as_ref()
                .is_some_and(|l| l.generation == generation && !crate::broker::amqp::usable(&l.connection, &l.channel))
            {
                *link = None;
            }
        }
        outcomes
    }
}

fn routing_key(topics: &Topics, event: &EncodedEvent<'_>) -> String {
    topics.for_schema(event.schema).render(event.mailbox)
}

fn unavailable(reason: String) -> SinkError {
    SinkError::Unavailable(format!("RabbitMQ: {reason}"))
}

#[cfg(test)]
mod tests;
