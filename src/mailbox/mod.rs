//! One task per mailbox: poll its folders, deliver, keep its state; a broken mailbox only
//! ever affects itself.

pub mod convert;
mod poll;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use poll::{KEY_RETENTION, PollError, RESYNC_MARGIN, RESYNC_WINDOW, RoundStats};
pub use status::{MailboxView, StatusBoard};

use crate::auth::{TokenSource, Verdict};
use crate::config::MailboxConfig;
use crate::domain::MailboxState;
use crate::graph::{CallError, Graph, GraphErrorKind, MailboxGate};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::Store;

/// Longest wait between re-probes of a flagged mailbox (a completed consent wakes it at once).
const MAX_REPROBE: Duration = Duration::from_secs(3600);
/// Longest wait between retries of a mailbox in `backoff`.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Everything a mailbox task uses.
pub struct MailboxCtx {
    /// Its configuration.
    pub config: MailboxConfig,
    /// Graph client.
    pub graph: Arc<Graph>,
    /// Its tokens: the app's, or its own delegated grant.
    pub tokens: TokenSource,
    /// Delegated only: the app-only registration used while re-consent is pending, and its name.
    pub fallback: Option<(String, TokenSource)>,
    /// The tokens work uses right now (`tokens`, or the fallback while flagged).
    pub current: arc_swap::ArcSwap<TokenSource>,
    /// True while mail flows through the fallback app (the mailbox stays flagged).
    pub on_fallback: std::sync::atomic::AtomicBool,
    /// Wakes a sleeping mailbox (consent completed): re-probe now.
    pub wake: tokio::sync::Notify,
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
    /// Pages held in memory at once, all mailboxes together (bounds memory on a backlog).
    pub ingest: Arc<tokio::sync::Semaphore>,
}

impl MailboxCtx {
    /// The tokens to use now.
    pub fn active(&self) -> TokenSource {
        (**self.current.load()).clone()
    }

    /// Picks primary or fallback tokens for the next round; returns the primary's failure
    /// when the fallback is used.
    async fn choose_tokens(&self) -> Option<crate::auth::TokenError> {
        let Some((_, fallback)) = &self.fallback else {
            return None;
        };
        match self.tokens.token().await {
            Ok(_) => {
                self.current.store(Arc::new(self.tokens.clone()));
                self.on_fallback.store(false, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) if e.verdict != Verdict::Transient => {
                self.current.store(Arc::new(fallback.clone()));
                self.on_fallback.store(true, std::sync::atomic::Ordering::Relaxed);
                Some(e)
            }
            Err(_) => None,
        }
    }
}

/// The state a failed round puts the mailbox in, with the reason and AADSTS code.
fn verdict(err: &PollError) -> (MailboxState, String, Option<u32>) {
    match err {
        PollError::Call(CallError::Token(t)) => (t.verdict.state(), reason_for(t), t.aadsts),
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
            let action = match state {
                MailboxState::AccessDenied => {
                    "the app may not open this mailbox: add it to the app's RBAC for Applications scope or application access policy"
                }
                MailboxState::NotFound => {
                    "no such mailbox, or not enabled for REST: fix the address or license the mailbox"
                }
                MailboxState::CredentialInvalid => {
                    "Graph refuses the app's tokens: check the app registration and its tenant"
                }
                _ => "inboxd retries by itself",
            };
            (
                state,
                format!(
                    "{} {}: {}: {action} ({ids})",
                    g.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()),
                    g.code.as_deref().unwrap_or(""),
                    g.message
                ),
                None,
            )
        }
        other => (
            MailboxState::Backoff,
            format!("{other}: inboxd retries by itself"),
            None,
        ),
    }
}

/// Polls until cancelled.
pub async fn run(ctx: Arc<MailboxCtx>, cancel: CancellationToken) {
    let mailbox = ctx.config.address.clone();
    let interval = ctx.config.poll_interval;
    // Flagged mailboxes are re-probed slowly and resume by themselves when the cause is gone.
    // Never `clamp` here: with an interval over 5 minutes its min would exceed its max.
    let reprobe_base = interval.max((interval.saturating_mul(4)).min(Duration::from_secs(300)));
    let mut reprobe = reprobe_base;
    let mut backoff = interval;
    loop {
        let primary_failure = Box::pin(ctx.choose_tokens()).await;
        let mut outcome = Ok(0u64);
        for folder in &ctx.config.folders {
            // Boxed: a sleeping mailbox task then holds a pointer, not the whole round's state machine
            // (10,000 idle mailboxes stay small).
            match Box::pin(poll::round(&ctx, folder, &cancel)).await {
                Ok(stats) => outcome = outcome.map(|n| n + stats.delivered),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let wait = match outcome {
            Ok(delivered) => {
                reprobe = reprobe_base;
                ctx.board.succeeded(&mailbox, delivered);
                match (&primary_failure, &ctx.fallback) {
                    (Some(e), Some((name, _))) => {
                        let reason = format!("{}; mail keeps flowing through fallback app '{name}'", reason_for(e));
                        Box::pin(ctx.board.set(&mailbox, e.verdict.state(), Some(reason), e.aadsts)).await;
                        backoff = interval;
                        interval
                    }
                    _ => {
                        Box::pin(ctx.board.set(&mailbox, MailboxState::Active, None, None)).await;
                        backoff = interval;
                        interval
                    }
                }
            }
            Err(PollError::Cancelled) => break,
            Err(e) => {
                let (state, reason, aadsts) = verdict(&e);
                if matches!(e, PollError::Store(_)) {
                    tracing::error!(mailbox = %mailbox, error = %e, "The store failed; polling is paused until it answers again.");
                }
                Box::pin(ctx.board.set(&mailbox, state, Some(reason), aadsts)).await;
                if state == MailboxState::Backoff {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                    backoff + jitter
                } else {
                    let wait = reprobe;
                    reprobe = (reprobe * 2).min(MAX_REPROBE);
                    wait
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.wake.notified() => {}
            _ = cancel.cancelled() => break,
        }
    }
    tracing::debug!(mailbox = %mailbox, "Mailbox task stopped.");
}

/// What happened and what to do, in one sentence (for `/v1/mailboxes` and the WARN line).
pub fn reason_for(e: &crate::auth::TokenError) -> String {
    let ids = match (&e.trace_id, &e.correlation_id) {
        (Some(t), Some(c)) => format!(" (Entra trace id {t}, correlation id {c})"),
        _ => String::new(),
    };
    let action = match e.verdict {
        Verdict::NeedsReconsent => "the mailbox's user must consent: open the consent link",
        Verdict::CredentialInvalid => {
            "an operator must fix the app's secret or certificate (rotate it and update the config)"
        }
        Verdict::Transient => "inboxd retries by itself",
    };
    format!("{}: {action}{ids}", e.reason)
}
