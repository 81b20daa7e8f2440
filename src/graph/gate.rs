//! Per-mailbox request governor: at most N concurrent requests, and after a 429 every
//! request of that mailbox waits out `Retry-After` (a throttled mailbox slows down alone).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Margin added to `Retry-After` so a request never arrives a hair early.
const SAFETY: Duration = Duration::from_millis(50);

/// The governor of one mailbox.
pub struct MailboxGate {
    /// For log lines about this mailbox's requests.
    mailbox: String,
    slots: Semaphore,
    size: u32,
    paused_until: Mutex<Option<Instant>>,
    /// With replicas: whether this replica may still act for the mailbox (its lease), asked
    /// right before every request, so a replica resumed after a pause never calls Graph for a
    /// mailbox it lost, whatever its timers woke first.
    lease: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl MailboxGate {
    /// A gate with `concurrency` slots (Graph allows 4 per app + mailbox).
    pub fn new(mailbox: &str, concurrency: usize) -> MailboxGate {
        let size = concurrency.clamp(1, 4);
        MailboxGate {
            mailbox: mailbox.to_string(),
            slots: Semaphore::new(size),
            size: size as u32,
            paused_until: Mutex::new(None),
            lease: std::sync::OnceLock::new(),
        }
    }

    /// The mailbox this gate governs.
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    /// Waits for a slot (or `n` slots for a `$batch`, which Graph runs four at a time) and
    /// for any throttling pause to end.
    pub async fn enter(&self, n: u32) -> SemaphorePermit<'_> {
        let permit = self
            .slots
            .acquire_many(n.clamp(1, self.size))
            .await
            .expect("gate semaphore is never closed");
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if Instant::now() < t => tokio::time::sleep_until(t).await,
                _ => return permit,
            }
        }
    }

    /// Makes every request wait for `holds` to answer true first (set once, at start).
    pub fn require_lease(&self, holds: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.lease.set(Box::new(holds));
    }

    /// False when this replica no longer holds the mailbox's lease.
    pub fn may_call(&self) -> bool {
        self.lease.get().is_none_or(|holds| holds())
    }

    /// Returns once no throttling pause is in force (without taking a slot).
    pub async fn wait_unpaused(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if Instant::now() < t => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Graph said to wait: nobody in this mailbox sends before then.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait + SAFETY;
        let mut guard = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}
