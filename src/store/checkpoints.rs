//! Where each mailbox folder's ingest stands: its delta link and the window a resync after
//! an expired delta token may reach back to.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::MailboxAddress;

/// What a folder's resync after an expired delta token may reach back to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaWindow {
    /// Where the folder began (`start_at`); `None`: all mail.
    pub start_from: Option<OffsetDateTime>,
    /// When the last completed round began; `None`: no round completed yet.
    pub checkpoint: Option<OffsetDateTime>,
}

impl DeltaWindow {
    /// The earliest receipt time a resync must cover: the later of where the folder began and
    /// the last checkpoint less `margin`; `None` means all mail.
    pub fn resync_from(&self, margin: time::Duration) -> Option<OffsetDateTime> {
        match (self.start_from, self.checkpoint.map(|c| c - margin)) {
            (Some(s), Some(c)) => Some(s.max(c)),
            (s, c) => s.or(c),
        }
    }
}

/// The delta link of each mailbox folder and its resync window.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The last acknowledged delta link of a mailbox folder.
    async fn delta_link(&self, mailbox: &MailboxAddress, folder: &str) -> Result<Option<String>, StoreError>;
    /// Stores the delta link of a finished round (atomically replaces the old one).
    async fn save_delta_link(&self, mailbox: &MailboxAddress, folder: &str, link: &str) -> Result<(), StoreError>;
    /// Stores the first link of a folder that starts from scratch, and where it starts
    /// (`None`: all mail); forgets any earlier checkpoint.
    async fn begin_delta(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        start_from: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
    /// Stores the delta link of a completed round and when that round began.
    async fn save_checkpoint(
        &self,
        mailbox: &MailboxAddress,
        folder: &str,
        link: &str,
        round_began: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Where a folder started and its last checkpoint: what a resync may reach back to.
    async fn delta_window(&self, mailbox: &MailboxAddress, folder: &str) -> Result<DeltaWindow, StoreError>;
}
