//! Progress of a folder's first sync (a large mailbox can take hours): messages and pages so
//! far and the rate, for `/v1/mailboxes`, and one INFO line a minute rather than one per page.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;

/// At most one progress line per folder this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// A first sync as `/v1/mailboxes` shows it (`first_sync`, absent when none is running).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirstSyncView {
    /// The folder being read.
    pub folder: String,
    /// Messages delivered or quarantined so far.
    pub messages: u64,
    /// Delta pages read so far.
    pub pages: u64,
    /// Messages per second since the sync (or its resumption) began.
    pub messages_per_second: f64,
    /// When it began (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// The counter of one folder's first sync.
#[derive(Debug)]
pub struct FirstSync {
    view: FirstSyncView,
    /// Messages counted before this process took over (a resumed sync), left out of the rate.
    carried: u64,
    started: Instant,
    last_log: Instant,
}

impl FirstSync {
    /// Starts counting `folder`, going on from `earlier` (the same sync before a failed round).
    pub fn start(folder: &str, earlier: Option<FirstSyncView>) -> FirstSync {
        let now = Instant::now();
        let view = earlier.filter(|v| v.folder == folder).unwrap_or_else(|| FirstSyncView {
            folder: folder.to_string(),
            messages: 0,
            pages: 0,
            messages_per_second: 0.0,
            started_at: OffsetDateTime::now_utc(),
        });
        FirstSync {
            carried: view.messages,
            view,
            started: now,
            last_log: now,
        }
    }

    /// Counts one page of `messages`.
    pub fn page(&mut self, messages: u64) {
        self.view.messages += messages;
        self.view.pages += 1;
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.view.messages_per_second = ((self.view.messages - self.carried) as f64 / secs * 10.0).round() / 10.0;
        }
    }

    /// True at most once per [`LOG_EVERY`]: time for a progress line.
    pub fn log_due(&mut self) -> bool {
        if self.last_log.elapsed() < LOG_EVERY {
            return false;
        }
        self.last_log = Instant::now();
        true
    }

    /// The progress so far.
    pub fn view(&self) -> &FirstSyncView {
        &self.view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_pages_and_logs_once_a_minute_not_per_page() {
        let mut sync = FirstSync::start("inbox", None);
        let mut lines = 0;
        // 180 pages of 100 messages, one every second: three minutes.
        for _ in 0..180 {
            tokio::time::advance(Duration::from_secs(1)).await;
            sync.page(100);
            if sync.log_due() {
                lines += 1;
            }
        }
        assert_eq!(lines, 3, "one line per minute");
        let v = sync.view();
        assert_eq!((v.messages, v.pages), (18_000, 180));
        assert_eq!(v.messages_per_second, 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_sync_keeps_its_counts_and_rates_only_the_new_pages() {
        let earlier = FirstSyncView {
            folder: "inbox".into(),
            messages: 5_000,
            pages: 50,
            messages_per_second: 80.0,
            started_at: OffsetDateTime::UNIX_EPOCH,
        };
        let mut sync = FirstSync::start("inbox", Some(earlier.clone()));
        tokio::time::advance(Duration::from_secs(10)).await;
        sync.page(100);
        let v = sync.view();
        assert_eq!(
            (v.messages, v.pages, v.started_at),
            (5_100, 51, OffsetDateTime::UNIX_EPOCH)
        );
        assert_eq!(v.messages_per_second, 10.0);
        // Another folder's progress is not carried over.
        let other = FirstSync::start("archive", Some(earlier));
        assert_eq!(other.view().messages, 0);
    }
}
