//! Outlook's per app + mailbox limits: 4 concurrent requests, 10,000 per 10 minutes,
//! and a second 429 for a client that comes back before `Retry-After` has passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::settings::Settings;

/// Throttling state per (app, mailbox).
#[derive(Default)]
pub(crate) struct Limits {
    /// Key: `client id|address`.
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Default)]
struct Bucket {
    /// Requests in flight.
    in_flight: usize,
    /// Arrival times (emulator clock, seconds) inside the window.
    recent: std::collections::VecDeque<f64>,
    /// Throttled until this time: anything earlier is throttled again.
    blocked_until: f64,
}

/// Why a request was throttled and for how long.
pub(crate) struct Throttled {
    /// Seconds to wait, decimal.
    pub(crate) retry_after: f64,
    /// Graph's code: `ApplicationThrottled` (concurrency) or `TooManyRequests`.
    pub(crate) code: &'static str,
    /// Graph's message.
    pub(crate) message: &'static str,
}

/// Held while a request runs; releases its concurrency slot on drop.
pub(crate) struct Permit {
    limits: Arc<Limits>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut buckets = self.limits.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(&self.key) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Admits a request or says why not. `now` is the emulator clock in seconds.
    pub(crate) fn admit(
        self: &Arc<Self>,
        app: &str,
        mailbox: &str,
        now: f64,
        s: &Settings,
    ) -> Result<Permit, Throttled> {
        let key = format!("{app}|{mailbox}");
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(key.clone()).or_default();
        let window = s.throttle_window_secs as f64;
        while b.recent.front().is_some_and(|t| *t <= now - window) {
            b.recent.pop_front();
        }
        // Graph keeps counting while a client is throttled.
        b.recent.push_back(now);
        if now < b.blocked_until {
            // Came back early: punished with a fresh full wait.
            let retry_after = s.throttle_retry_after_secs;
            b.blocked_until = now + retry_after;
            return Err(Throttled {
                retry_after,
                code: "TooManyRequests",
                message: "Please retry after the time given in Retry-After; the previous Retry-After was not honoured.",
            });
        }
        if b.recent.len() as u64 > s.throttle_requests {
            let oldest = b.recent.front().copied().unwrap_or(now);
            let retry_after = (oldest + window - now).max(s.throttle_retry_after_secs);
            b.blocked_until = now + retry_after;
            return Err(Throttled {
                retry_after,
                code: "TooManyRequests",
                message: "Application is over its MailboxRequests limit.",
            });
        }
        if b.in_flight >= s.throttle_concurrency {
            let retry_after = s.throttle_retry_after_secs;
            b.blocked_until = now + retry_after;
            return Err(Throttled {
                retry_after,
                code: "ApplicationThrottled",
                message: "Application is over its MailboxConcurrency limit.",
            });
        }
        b.in_flight += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            key,
        })
    }

    /// Forgets every bucket (reset).
    pub(crate) fn clear(&self) {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
