//! Reply requests read from a broker (`[intake]`): a durable JetStream consumer or a RabbitMQ
//! queue. Each message is stored in the outbox before it is acknowledged; an invalid one goes
//! to the dead-letter subject or exchange with its reason.

mod nats;
mod rabbitmq;
mod request;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use request::{
    ACTION_HEADER, IDEMPOTENCY_HEADER, Intake, MAILBOX_HEADER, MESSAGE_ID_HEADER, REASON_HEADER, Refusal,
};

use crate::config::IntakeConfig;
use nats::NatsIntake;
use rabbitmq::RabbitIntake;

/// An opened intake, ready to run.
pub enum Source {
    /// JetStream consumer.
    Nats(Box<NatsIntake>),
    /// RabbitMQ queue.
    Rabbitmq(Box<RabbitIntake>),
}

impl Source {
    /// Connects and checks the stream / queue and the dead-letter target: a missing one is
    /// a start-up error.
    pub async fn open(config: &IntakeConfig) -> Result<Source, String> {
        Ok(match config {
            IntakeConfig::Nats(c) => Source::Nats(Box::new(NatsIntake::open(c).await?)),
            IntakeConfig::Rabbitmq(c) => Source::Rabbitmq(Box::new(RabbitIntake::open(c).await?)),
        })
    }

    /// Reads and stores requests until cancelled.
    pub async fn run(&self, intake: Arc<Intake>, cancel: CancellationToken) {
        match self {
            Source::Nats(n) => n.run(intake, cancel).await,
            Source::Rabbitmq(r) => r.run(intake, cancel).await,
        }
    }
}
