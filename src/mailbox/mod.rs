//! One task per mailbox: poll its folders, deliver, keep its state; a broken mailbox only
//! ever affects itself.

mod budget;
pub mod convert;
mod deliver;
mod fetch;
mod html_text;
pub mod notify;
mod poll;
pub mod progress;
mod replay;
mod status;
pub mod supervisor;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use budget::{IngestBudget, PageSize};
pub use fetch::{BATCH_BYTES, by_bytes};
pub use poll::{KEY_RETENTION, PollError, RESYNC_MARGIN, RoundStats};
pub use status::{FolderTrouble, MailboxView, NotificationsView, StatusBoard};

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
    /// Its configuration (shared with the configuration in force).
    pub config: Arc<MailboxConfig>,
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
    /// Wakes a sleeping mailbox (consent completed, a change notification): poll now.
    pub wake: tokio::sync::Notify,
    /// Set when a quarantine replay may be due (at start, and by the replay API), so an idle
    /// round does not ask the store every time.
    pub replay_pending: std::sync::atomic::AtomicBool,
    /// Milliseconds between successful rounds while change notifications are healthy (the
    /// safety poll); 0: `config.poll_interval`.
    pub poll_override: std::sync::atomic::AtomicU64,
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
    /// Mail held in memory at once, all mailboxes together (bounds memory on a backlog).
    pub ingest: Arc<IngestBudget>,
    /// Items its next delta page asks for, learnt from what its mail weighs.
    pub page_size: PageSize,
    /// Each folder's delta link as this task holds it (a list: most mailboxes poll one folder,
    /// and a map's smallest table is several times the size of one entry).
    pub delta_links: std::sync::Mutex<Vec<HeldLink>>,
    /// Where Graph ends a delta filtered on receipt time (`microsoft.filtered_delta_cap`).
    pub filtered_delta_cap: usize,
}

/// A folder's delta link as its task holds it.
#[derive(Debug)]
pub struct HeldLink {
    /// The folder.
    folder: Box<str>,
    /// The link the next round starts from.
    link: String,
    /// When the store last took a checkpoint of the folder (`None`: not in this process).
    checkpointed_at: Option<tokio::time::Instant>,
}

impl MailboxCtx {
    /// The folder's delta link as this task holds it.
    fn remembered_link(&self, folder: &str) -> Option<String> {
        self.delta_links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|held| *held.folder == *folder)
            .map(|held| held.link.clone())
    }

    /// Notes the link of the folder's next round; `checkpointed` when the store has just
    /// taken it as the checkpoint of a completed round.
    fn hold_link(&self, folder: &str, link: &str, checkpointed: bool) {
        let now = checkpointed.then(tokio::time::Instant::now);
        let mut links = self.delta_links.lock().unwrap_or_else(|p| p.into_inner());
        match links.iter_mut().find(|held| *held.folder == *folder) {
            Some(held) => {
                link.clone_into(&mut held.link);
                held.checkpointed_at = now.or(held.checkpointed_at);
            }
            None => {
                links.reserve_exact(1);
                links.push(HeldLink {
                    folder: folder.into(),
                    link: link.to_string(),
                    checkpointed_at: now,
                });
            }
        }
    }

    /// True when the store took a checkpoint of the folder less than `within` ago.
    fn checkpointed_within(&self, folder: &str, within: Duration) -> bool {
        self.delta_links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|held| *held.folder == *folder)
            .and_then(|held| held.checkpointed_at)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// The wait after a successful round: the safety poll while notifications are healthy.
    pub fn poll_wait(&self) -> Duration {
        match self.poll_override.load(std::sync::atomic::Ordering::Relaxed) {
            0 => self.config.poll_interval,
            ms => Duration::from_millis(ms),
        }
    }

    /// Graph as this mailbox sees it now (with the tokens [`MailboxCtx::active`] picks).
    pub fn mailbox_graph(&self) -> crate::graph::MailboxGraph<'_> {
        crate::graph::MailboxGraph::new(&self.graph, &self.gate, self.active(), self.config.address.as_str())
    }

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

/// True for failures of one folder only (a missing folder, a page Graph cannot serve); the
/// mailbox's other folders keep flowing. Tokens, access, the store and the sink concern all.
fn folder_scoped(e: &PollError) -> bool {
    match e {
        PollError::Call(CallError::Graph(g)) => !matches!(
            g.kind,
            GraphErrorKind::AccessDenied | GraphErrorKind::MailboxNotFound | GraphErrorKind::Unauthorized
        ),
        PollError::Malformed(_) => true,
        _ => false,
    }
}

/// When each failing folder may be tried again, and its current backoff.
type FolderBackoff = HashMap<String, (tokio::time::Instant, Duration)>;

/// Replays asked for, then every folder due on its own. `Ok` when at least one folder (or the
/// replay) got through or only folder-scoped trouble happened; the mailbox-wide error otherwise.
async fn poll_folders<'c>(
    ctx: &'c MailboxCtx,
    cancel: &CancellationToken,
    backoff: &mut FolderBackoff,
    mut held: Option<tokio::sync::SemaphorePermit<'c>>,
) -> Result<u64, PollError> {
    let mailbox = &ctx.config.address;
    let interval = ctx.config.poll_interval;
    let mut delivered = match Box::pin(replay::run(ctx)).await {
        Ok(stats) => stats.delivered,
        Err(e) if folder_scoped(&e) => {
            tracing::warn!(mailbox = %mailbox, error = %e, "Replaying quarantined messages failed; retrying next round.");
            0
        }
        Err(e) => return Err(e),
    };
    let mut folder_failures = Vec::new();
    let mut succeeded = 0;
    for folder in &ctx.config.folders {
        if backoff
            .get(folder)
            .is_some_and(|(at, _)| tokio::time::Instant::now() < *at)
        {
            continue;
        }
        // Boxed: a sleeping mailbox task then holds a pointer, not the whole round's state machine
        // (10,000 idle mailboxes stay small).
        match Box::pin(poll::round(ctx, folder, cancel, held.take())).await {
            Ok(stats) => {
                delivered += stats.delivered;
                succeeded += 1;
                backoff.remove(folder);
                ctx.board.folder_result(mailbox, folder, None);
            }
            Err(PollError::Cancelled) => return Err(PollError::Cancelled),
            Err(e) if folder_scoped(&e) => {
                let (_, previous) = backoff
                    .get(folder)
                    .copied()
                    .unwrap_or((tokio::time::Instant::now(), interval / 2));
                let next = previous.saturating_mul(2).max(interval).min(MAX_BACKOFF.max(interval));
                backoff.insert(folder.clone(), (tokio::time::Instant::now() + next, next));
                let (_, reason, _) = verdict(&e);
                ctx.board.folder_result(mailbox, folder, Some(reason));
                folder_failures.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    match folder_failures.into_iter().next() {
        Some(e) if succeeded == 0 && delivered == 0 => Err(e),
        _ => Ok(delivered),
    }
}

/// The coarsest grid wake-ups are rounded up to.
const WAKE_GRID: Duration = Duration::from_millis(250);

/// When to wake after `wait`: rounded up to a grid every mailbox shares (a twentieth of the
/// poll interval, at most 250 ms). Thousands of idle mailboxes then wake in groups, and the
/// runtime's threads are woken a few times a second rather than once per mailbox poll.
fn wake_at(wait: Duration, interval: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let at = tokio::time::Instant::now() + wait;
    let grid = (interval / 20).min(WAKE_GRID).as_nanos();
    if grid == 0 {
        return at;
    }
    let rounded = at.saturating_duration_since(epoch).as_nanos().div_ceil(grid) * grid;
    u64::try_from(rounded)
        .ok()
        .and_then(|ns| epoch.checked_add(Duration::from_nanos(ns)))
        .unwrap_or(at)
}

/// How long a mailbox waits between rounds: the poll interval, a growing backoff after
/// transient failures, a slow re-probe while flagged.
struct Pacing {
    interval: Duration,
    reprobe: Duration,
    backoff: Duration,
}

impl Pacing {
    fn new(interval: Duration) -> Pacing {
        Pacing {
            interval,
            reprobe: first_reprobe(interval),
            backoff: interval,
        }
    }

    /// A round got through: the next waits start from the beginning again.
    fn succeeded(&mut self) {
        self.reprobe = first_reprobe(self.interval);
        self.backoff = self.interval;
    }

    /// The wait after a failed round that left the mailbox in `state`.
    fn failed(&mut self, state: MailboxState) -> Duration {
        if state == MailboxState::Backoff {
            self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF.max(self.interval));
            let jitter = self.backoff.mul_f64(fastrand::f64() * 0.2);
            self.backoff + jitter
        } else {
            let wait = self.reprobe;
            self.reprobe = self.reprobe.saturating_mul(2).min(MAX_REPROBE);
            wait
        }
    }
}

/// The first wait before a flagged mailbox is probed again: flagged mailboxes are re-probed
/// slowly and resume by themselves when the cause is gone. Never `clamp` here: with an
/// interval over 5 minutes its min would exceed its max.
fn first_reprobe(interval: Duration) -> Duration {
    interval.max(interval.saturating_mul(4).min(Duration::from_secs(300)))
}

/// Polls until cancelled.
pub async fn run(ctx: Arc<MailboxCtx>, cancel: CancellationToken) {
    let mut pacing = Pacing::new(ctx.config.poll_interval);
    let mut folder_backoff = FolderBackoff::new();
    loop {
        // The first page permit is waited for before the round is allocated: 10,000 mailboxes
        // starting at once then wait as small tasks, not as 10,000 rounds.
        ctx.gate.wait_unpaused().await;
        let held = tokio::select! {
            permit = ctx.ingest.page() => permit,
            _ = cancel.cancelled() => break,
        };
        // Boxed: what a round needs lives only while it runs, so a sleeping mailbox (most of
        // them, most of the time) holds little more than its timer.
        let round = Box::pin(round(&ctx, &cancel, &mut pacing, &mut folder_backoff, held)).await;
        let Some(wait) = round else { break };
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at(wait, pacing.interval)) => {}
            _ = ctx.wake.notified() => {}
            _ = cancel.cancelled() => break,
        }
    }
    tracing::debug!(mailbox = %ctx.config.address, "Mailbox task stopped.");
}

/// One round with its first page permit: tokens, every folder, the mailbox's state. Returns
/// the wait before the next round, or `None` when cancelled.
async fn round<'c>(
    ctx: &'c MailboxCtx,
    cancel: &CancellationToken,
    pacing: &mut Pacing,
    folder_backoff: &mut FolderBackoff,
    held: tokio::sync::SemaphorePermit<'c>,
) -> Option<Duration> {
    let mailbox = &ctx.config.address;
    let primary_failure = Box::pin(ctx.choose_tokens()).await;
    let outcome = Box::pin(poll_folders(ctx, cancel, folder_backoff, Some(held))).await;
    match outcome {
        Ok(delivered) => {
            pacing.succeeded();
            ctx.board.succeeded(mailbox, delivered);
            match (&primary_failure, &ctx.fallback) {
                (Some(e), Some((name, _))) => {
                    let reason = format!("{}; mail keeps flowing through fallback app '{name}'", reason_for(e));
                    Box::pin(ctx.board.set(mailbox, e.verdict.state(), Some(reason), e.aadsts)).await;
                }
                _ => Box::pin(ctx.board.set(mailbox, MailboxState::Active, None, None)).await,
            }
            Some(ctx.poll_wait())
        }
        Err(PollError::Cancelled) => None,
        Err(e) => {
            let (state, reason, aadsts) = verdict(&e);
            if matches!(e, PollError::Store(_)) {
                tracing::error!(mailbox = %mailbox, error = %e, "The store failed; polling is paused until it answers again.");
            }
            Box::pin(ctx.board.set(mailbox, state, Some(reason), aadsts)).await;
            Some(pacing.failed(state))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_while_failing_and_start_over_after_a_success() {
        let minute = Duration::from_secs(60);
        let mut pacing = Pacing::new(minute);
        // Flagged: re-probed after 4 intervals, doubling up to an hour.
        assert_eq!(pacing.failed(MailboxState::NeedsReconsent), 4 * minute);
        assert_eq!(pacing.failed(MailboxState::NeedsReconsent), 8 * minute);
        for _ in 0..10 {
            pacing.failed(MailboxState::NeedsReconsent);
        }
        assert_eq!(pacing.failed(MailboxState::NeedsReconsent), MAX_REPROBE);
        // Transient trouble: doubling from the interval up to 5 minutes, plus at most 20 %.
        let first = pacing.failed(MailboxState::Backoff);
        assert!(first >= 2 * minute && first <= (2 * minute).mul_f64(1.2), "{first:?}");
        for _ in 0..10 {
            pacing.failed(MailboxState::Backoff);
        }
        let capped = pacing.failed(MailboxState::Backoff);
        assert!(
            capped >= MAX_BACKOFF && capped <= MAX_BACKOFF.mul_f64(1.2),
            "{capped:?}"
        );
        pacing.succeeded();
        assert_eq!(pacing.failed(MailboxState::NeedsReconsent), 4 * minute);
        let again = pacing.failed(MailboxState::Backoff);
        assert!(again <= (2 * minute).mul_f64(1.2), "{again:?}");
    }

    #[test]
    fn an_interval_over_five_minutes_is_its_own_reprobe_and_backoff_floor() {
        let interval = Duration::from_secs(600);
        let mut pacing = Pacing::new(interval);
        assert_eq!(pacing.failed(MailboxState::AccessDenied), interval);
        let backoff = pacing.failed(MailboxState::Backoff);
        assert!(backoff >= interval && backoff <= interval.mul_f64(1.2), "{backoff:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_are_rounded_up_to_a_shared_grid() {
        let interval = Duration::from_secs(60);
        let now = tokio::time::Instant::now();
        // A point of the grid; mailboxes due up to 250 ms before it wake with it.
        let point = wake_at(Duration::from_secs(60), interval);
        let to_point = point - now;
        for earlier in [Duration::ZERO, Duration::from_millis(10), Duration::from_millis(200)] {
            assert_eq!(
                wake_at(to_point - earlier, interval),
                point,
                "due {earlier:?} before it"
            );
        }
        for wait in [Duration::ZERO, Duration::from_millis(1), Duration::from_secs(61)] {
            let at = wake_at(wait, interval);
            assert!(at >= now + wait, "never early");
            assert!(at < now + wait + WAKE_GRID, "late by less than the grid");
        }
        // A short interval gets a finer grid: 300 ms polls are late by less than 15 ms.
        let at = wake_at(Duration::from_millis(300), Duration::from_millis(300));
        assert!(at < now + Duration::from_millis(315));
    }
}
