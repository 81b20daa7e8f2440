//! The emulator's clock: real time plus an offset that tests can only move forward.

use std::sync::Mutex;

use time::{Duration, OffsetDateTime};

/// Real UTC time shifted by `offset`.
#[derive(Default)]
pub(crate) struct Clock {
    /// How far tests have advanced the clock.
    offset: Mutex<Duration>,
}

impl Clock {
    /// Emulator "now".
    pub(crate) fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emulator "now" as fractional Unix seconds (throttling precision).
    pub(crate) fn unix_f64(&self) -> f64 {
        let now = self.now();
        now.unix_timestamp() as f64 + f64::from(now.nanosecond()) / 1e9
    }

    /// Moves the clock forward; negative or non-finite amounts are refused by the caller.
    pub(crate) fn advance(&self, secs: f64) {
        let mut offset = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *offset += Duration::seconds_f64(secs);
    }

    /// Back to real time (reset).
    pub(crate) fn reset(&self) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) = Duration::ZERO;
    }
}
