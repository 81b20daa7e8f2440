//! Requests from a durable JetStream pull consumer with explicit ack.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::request::{Intake, REASON_HEADER, Refusal};
use crate::config::NatsIntakeConfig;

/// A request whose store did not answer is offered again after this long.
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long the broker waits for our ack before redelivering (a crash mid-request).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The consumer, and the context to dead-letter through.
pub struct NatsIntake {
    /// Settings.
    config: NatsIntakeConfig,
    /// JetStream (dead-letter publishes wait for the PubAck).
    js: jetstream::Context,
    /// The durable consumer.
    consumer: PullConsumer,
}

impl NatsIntake {
    /// Connects; the stream must exist; the durable consumer is created if absent.
    pub async fn open(config: &NatsIntakeConfig) -> Result<NatsIntake, String> {
        let client = crate::broker::nats::connect(&config.connection, "inboxd intake").await?;
        let js = jetstream::new(client);
        let stream = js.get_stream(&config.stream).await.map_err(|e| {
            format!(
                "intake: JetStream stream '{}' is not usable: {}",
                config.stream,
                crate::broker::chain(&e)
            )
        })?;
        let consumer = stream
            .get_or_create_consumer(
                &config.consumer,
                pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    filter_subject: config.subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                format!(
                    "intake: cannot open consumer '{}' on stream '{}': {}",
                    config.consumer,
                    config.stream,
                    crate::broker::chain(&e)
                )
            })?;
        Ok(NatsIntake {
            config: config.clone(),
            js,
            consumer,
        })
    }

    /// Reads requests until cancelled; the client reconnects by itself.
    pub async fn run(&self, intake: Arc<Intake>, cancel: CancellationToken) {
        loop {
            let mut messages = match self.consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(consumer = %self.config.consumer, error = %crate::broker::chain(&e), "Intake cannot read from NATS; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_DELAY) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => self.handle(&intake, message).await,
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %self.config.consumer, error = %crate::broker::chain(&e), "Intake lost its NATS consumer; resubscribing.");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    async fn handle(&self, intake: &Intake, message: jetstream::Message) {
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| header(&headers, name);
        match intake.accept(header, &message.payload).await {
            Ok(_) => {
                // A lost ack means a redelivery, which the idempotency key turns into a no-op.
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(error = %e, "Intake ack not confirmed; the request may come again (harmless).");
                }
            }
            Err(Refusal::Retry(reason)) => {
                tracing::warn!(error = %reason, "Intake cannot store a request; it will be redelivered.");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
            Err(Refusal::Invalid(reason)) => {
                let mut dead = headers.clone();
                dead.insert(REASON_HEADER, reason.replace(['\r', '\n'], " ").as_str());
                dead.insert("Inboxd-Original-Subject", message.subject.as_str());
                let published = match self
                    .js
                    .publish_with_headers(self.config.dead_letter_subject.clone(), dead, message.payload.clone())
                    .await
                {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| crate::broker::chain(&e)),
                    Err(e) => Err(crate::broker::chain(&e)),
                };
                match published {
                    Ok(()) => {
                        tracing::warn!(reason = %reason, dead_letter = %self.config.dead_letter_subject, "Invalid intake request dead-lettered.");
                        let _ = message.double_ack_with(AckKind::Term).await;
                    }
                    Err(e) => {
                        tracing::error!(
                            reason = %reason,
                            dead_letter = %self.config.dead_letter_subject,
                            error = %e,
                            "An invalid intake request cannot be dead-lettered (does a stream capture the dead-letter subject?); it stays in the intake."
                        );
                        let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY * 5))).await;
                    }
                }
            }
        }
    }
}

/// A header by name, ignoring case.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str().to_string())
}
