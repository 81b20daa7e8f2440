//! Supervised tasks: a panic is caught, logged as one line, counted in
//! `inboxd_task_panics_total{task}`, reported through `on_panic`, and the task starts again
//! with backoff. No task dies silently.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// First wait before a panicked task starts again; doubles up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Longest wait before a panicked task starts again.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// A panic's message, whatever its payload.
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

/// Runs `make()` until it returns; when it panics, reports and starts it again after a
/// growing delay, unless `cancel` fired. `task` names the kind (a metric label); `name` the
/// instance (a mailbox address, for the log line).
pub async fn supervise<F, Fut, P, PFut>(
    task: &'static str,
    name: &str,
    metrics: &Metrics,
    cancel: CancellationToken,
    mut make: F,
    mut on_panic: P,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
    P: FnMut(String) -> PFut,
    PFut: Future<Output = ()>,
{
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let Err(payload) = AssertUnwindSafe(make()).catch_unwind().await else {
            return;
        };
        // Boxed: a panic is rare, and inline its handling would size every supervised task
        // (10,000 sleeping mailboxes) by its timer and report.
        let restart = Box::pin(after_panic(task, name, metrics, &cancel, delay, payload, &mut on_panic)).await;
        if !restart {
            return;
        }
        delay = delay.saturating_mul(2).min(MAX_RESTART_DELAY);
    }
}

/// Logs, counts and reports a panic, then waits `delay`; false when cancelled meanwhile.
async fn after_panic<P, PFut>(
    task: &'static str,
    name: &str,
    metrics: &Metrics,
    cancel: &CancellationToken,
    delay: Duration,
    payload: Box<dyn Any + Send>,
    on_panic: &mut P,
) -> bool
where
    P: FnMut(String) -> PFut,
    PFut: Future<Output = ()>,
{
    let text = panic_text(payload.as_ref());
    metrics
        .task_panics
        .get_or_create(&vec![("task", task.to_string())])
        .inc();
    tracing::error!(
        task, name, panic = %text, restart_in_ms = delay.as_millis() as u64,
        "A task panicked; it starts again by itself. This is a bug in inboxd: please report this line."
    );
    on_panic(text).await;
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_counted_reported_and_started_again() {
        let metrics = Metrics::new();
        let runs = Arc::new(AtomicU32::new(0));
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, rep) = (runs.clone(), reports.clone());
        supervise(
            "mailbox",
            "a@contoso.com",
            &metrics,
            CancellationToken::new(),
            move || {
                let r = r.clone();
                async move {
                    // Panics twice, then finishes.
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("boom {}", r.load(Ordering::SeqCst));
                    }
                }
            },
            move |text| {
                rep.lock().unwrap().push(text);
                async {}
            },
        )
        .await;

        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(*reports.lock().unwrap(), vec!["boom 1", "boom 2"]);
        let counted = metrics
            .task_panics
            .get_or_create(&vec![("task", "mailbox".to_string())])
            .get();
        assert_eq!(counted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_restarts() {
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, c) = (runs.clone(), cancel.clone());
        supervise(
            "sender",
            "outbox",
            &metrics,
            cancel,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                c.cancel();
                async { panic!("always") }
            },
            |_| async {},
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "no restart once cancelled");
    }
}
