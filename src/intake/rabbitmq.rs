//! Requests from a RabbitMQ queue with manual ack.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio_util::sync::CancellationToken;

use super::request::{Intake, REASON_HEADER, Refusal};
use crate::config::RabbitIntakeConfig;

/// Pause before reconnecting, and before a request whose store did not answer comes again.
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Requests in flight at once.
const PREFETCH: u16 = 16;

/// The queue to read and where to dead-letter.
pub struct RabbitIntake {
    /// Settings.
    config: RabbitIntakeConfig,
}

/// One connection: a consuming channel and a confirm-mode channel for dead letters.
struct Session {
    /// Kept open while its channels are used.
    _connection: Connection,
    /// Consumes the queue.
    consume: Channel,
    /// Publishes dead letters with confirms.
    publish: Channel,
}

impl RabbitIntake {
    /// Connects once to check the queue (declared if asked) and the dead-letter exchange.
    pub async fn open(config: &RabbitIntakeConfig) -> Result<RabbitIntake, String> {
        let intake = RabbitIntake { config: config.clone() };
        intake.session().await?;
        Ok(intake)
    }

    async fn session(&self) -> Result<Session, String> {
        let c = &self.config;
        let connection = crate::broker::amqp::connect(&c.connection, "inboxd intake").await?;
        let consume = connection.create_channel().await.map_err(|e| e.to_string())?;
        let declare = QueueDeclareOptions {
            passive: !c.declare,
            durable: true,
            ..Default::default()
        };
        consume
            .queue_declare(c.queue.as_str().into(), declare, FieldTable::default())
            .await
            .map_err(|e| format!("intake: RabbitMQ queue '{}' is not usable: {e}", c.queue))?;
        let publish = connection.create_channel().await.map_err(|e| e.to_string())?;
        if !c.dead_letter_exchange.is_empty() {
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            publish
                .exchange_declare(
                    c.dead_letter_exchange.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    format!(
                        "intake: dead-letter exchange '{}' is not usable: {e}",
                        c.dead_letter_exchange
                    )
                })?;
        }
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        consume
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Session {
            _connection: connection,
            consume,
            publish,
        })
    }

    /// Reads requests until cancelled, reconnecting after any loss.
    pub async fn run(&self, intake: Arc<Intake>, cancel: CancellationToken) {
        loop {
            match self.session().await {
                Ok(session) => self.consume(&session, &intake, &cancel).await,
                Err(e) => {
                    tracing::warn!(queue = %self.config.queue, error = %e, "Intake cannot reach RabbitMQ; retrying.")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }

    async fn consume(&self, session: &Session, intake: &Intake, cancel: &CancellationToken) {
        let mut consumer = match session
            .consume
            .basic_consume(
                self.config.queue.as_str().into(),
                "inboxd-intake".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(queue = %self.config.queue, error = %e, "Intake cannot consume; retrying.");
                return;
            }
        };
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.handle(session, intake, delivery).await,
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.config.queue, error = %e, "Intake lost its RabbitMQ connection; reconnecting.");
                    return;
                }
                None => return,
            }
        }
    }

    async fn handle(&self, session: &Session, intake: &Intake, delivery: Delivery) {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let header = |name: &str| header(&headers, name);
        match intake.accept(header, &delivery.data).await {
            Ok(_) => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %e, "Intake ack lost; the request may come again (harmless).");
                }
            }
            Err(Refusal::Retry(reason)) => {
                tracing::warn!(error = %reason, "Intake cannot store a request; it will be redelivered.");
                tokio::time::sleep(RETRY_DELAY).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                let _ = delivery.nack(requeue).await;
            }
            Err(Refusal::Invalid(reason)) => match self.dead_letter(session, &delivery, &reason).await {
                Ok(()) => {
                    tracing::warn!(reason = %reason, dead_letter = %self.config.dead_letter_exchange, "Invalid intake request dead-lettered.");
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    tracing::error!(
                        reason = %reason,
                        error = %e,
                        "An invalid intake request cannot be dead-lettered (is a queue bound to the dead-letter exchange?); it stays in the intake."
                    );
                    tokio::time::sleep(RETRY_DELAY * 5).await;
                    let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                }
            },
        }
    }

    /// Publishes the request, with its reason, to the dead-letter exchange; `Ok` once confirmed
    /// and routed.
    async fn dead_letter(&self, session: &Session, delivery: &Delivery, reason: &str) -> Result<(), String> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
        headers.insert(
            "Inboxd-Original-Queue".into(),
            AMQPValue::LongString(LongString::from(self.config.queue.as_str())),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = session
            .publish
            .basic_publish(
                self.config.dead_letter_exchange.as_str().into(),
                self.config.dead_letter_routing_key.as_str().into(),
                mandatory,
                &delivery.data,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        match confirm.await.map_err(|e| e.to_string())? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err("unroutable".into()),
            Confirmation::Nack(None) => Err("nacked".into()),
            Confirmation::NotRequested => Err("no confirm".into()),
        }
    }
}

/// A header by name (ignoring case), as text.
fn header(headers: &FieldTable, name: &str) -> Option<String> {
    headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .and_then(|(_, v)| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        })
}
