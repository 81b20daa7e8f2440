//! One task per mailbox: poll its folders, deliver, keep its state; a broken mailbox only
//! ever affects itself.

pub mod convert;
mod poll;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use poll::{PollError, RESYNC_WINDOW, RoundStats};
pub use status::{MailboxView, StatusBoard};

use crate::auth::AppTokens;
use crate::config::MailboxConfig;
use crate::domain::MailboxState;
use crate::graph::{CallError, Graph, GraphErrorKind, MailboxGate};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::Store;

/// Longest wait between retries of a mailbox in `backoff`.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Everything a mailbox task uses.
pub struct MailboxCtx {
    /// Its configuration.
    pub config: MailboxConfig,
    /// Graph client.
    pub graph: Arc<Graph>,
    /// Its app's tokens.
    pub tokens: Arc<AppTokens>,
    /// Its request governor.
    pub gate: MailboxGate,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Delivery.
    pub sink: Arc<Sink>,
    /// State for the API.
    pub board: Arc<StatusBoard>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The state a failed round puts the mailbox in, with the reason and AADSTS code.
fn verdict(err: &PollError) -> (MailboxState, String, Option<u32>) {
    match err {
        PollError::Call(CallError::Token(t)) => (t.verdict.state(), t.reason.clone(), t.aadsts),
        PollError::Call(CallError::Graph(g)) => {
            let state = match g.kind {
                GraphErrorKind::AccessDenied => MailboxState::AccessDenied,
                GraphErrorKind::MailboxNotFound => MailboxState::NotFound,
                GraphErrorKind::Unauthorized => MailboxState::CredentialInvalid,
                _ => MailboxState::Backoff,
            };
            let ids = format!(
                "request-id {}, client-request-id {}",
                g.request_id.as_deref().unwrap_or("none"),
                g.client_request_id
            );
            (
                state,
                format!(
                    "{} {}: {} ({ids})",
                    g.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()),
                    g.code.as_deref().unwrap_or(""),
                    g.message
                ),
                None,
            )
        }
        other => (MailboxState::Backoff, other.to_string(), None),
    }
}

/// Polls until cancelled.
pub async fn run(ctx: Arc<MailboxCtx>, cancel: CancellationToken) {
    let mailbox = ctx.config.address.clone();
    let interval = ctx.config.poll_interval;
    // Flagged mailboxes are re-probed slowly and resume by themselves when the cause is gone.
    let reprobe = (interval * 4).clamp(interval, Duration::from_secs(300));
    let mut backoff = interval;
    loop {
        let mut outcome = Ok(0u64);
        for folder in &ctx.config.folders {
            match poll::round(&ctx, folder, &cancel).await {
                Ok(stats) => outcome = outcome.map(|n| n + stats.delivered),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let wait = match outcome {
            Ok(delivered) => {
                ctx.board.succeeded(&mailbox, delivered);
                ctx.board.set(&mailbox, MailboxState::Active, None, None).await;
                backoff = interval;
                interval
            }
            Err(PollError::Cancelled) => break,
            Err(e) => {
                let (state, reason, aadsts) = verdict(&e);
                if matches!(e, PollError::Store(_)) {
                    tracing::error!(mailbox = %mailbox, error = %e, "The store failed; polling is paused until it answers again.");
                }
                ctx.board.set(&mailbox, state, Some(reason), aadsts).await;
                if state == MailboxState::Backoff {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                    backoff + jitter
                } else {
                    reprobe
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
    }
    tracing::debug!(mailbox = %mailbox, "Mailbox task stopped.");
}
