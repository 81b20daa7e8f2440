//! The leases this replica holds, as it last confirmed them: the epoch each write about a
//! mailbox must still find in the database, and until when (by this process's monotonic clock)
//! the replica may still act on it without hearing from the database again.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::domain::MailboxAddress;
use crate::store::StoreError;

/// One held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The epoch the claim got.
    pub epoch: i64,
    /// After this the replica treats the lease as lost, whatever the database says: it is
    /// earlier than the lease's expiry by a safety margin, measured from before the renewal
    /// was sent.
    pub valid_until: Instant,
}

/// This replica's leases and its refusal counter.
#[derive(Debug)]
pub struct Fence {
    replica: String,
    held: Mutex<HashMap<MailboxAddress, Held>>,
    refusals: Counter,
}

impl Fence {
    /// An empty fence for `replica`; refused writes count in `refusals`.
    pub fn new(replica: impl Into<String>, refusals: Counter) -> Fence {
        Fence {
            replica: replica.into(),
            held: Mutex::new(HashMap::new()),
            refusals,
        }
    }

    /// This replica's id (the `owner` of its lease rows).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<MailboxAddress, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch of a lease held and still valid, or the fencing error (counted).
    pub fn epoch(&self, mailbox: &MailboxAddress) -> Result<i64, StoreError> {
        let held = self.map().get(mailbox).copied();
        match held {
            Some(h) if Instant::now() < h.valid_until => Ok(h.epoch),
            Some(h) => Err(self.refuse(mailbox, h.epoch, "act")),
            None => Err(self.refuse(mailbox, 0, "act")),
        }
    }

    /// True while the lease of `mailbox` is held and valid (a question, not a refusal).
    pub fn holds(&self, mailbox: &MailboxAddress) -> bool {
        self.map().get(mailbox).is_some_and(|h| Instant::now() < h.valid_until)
    }

    /// The error for a write the lease no longer allows, counted.
    pub fn refuse(&self, mailbox: &MailboxAddress, epoch: i64, operation: &'static str) -> StoreError {
        self.refusals.inc();
        tracing::warn!(mailbox = %mailbox, epoch, operation, replica = %self.replica, "Refused a write: this replica no longer holds the mailbox's lease at this epoch.");
        StoreError::Fenced {
            mailbox: mailbox.clone(),
            epoch,
        }
    }

    /// Records a lease as held.
    pub fn hold(&self, mailbox: MailboxAddress, held: Held) {
        self.map().insert(mailbox, held);
    }

    /// Forgets a lease (released, lost or expired).
    pub fn forget(&self, mailbox: &MailboxAddress) -> Option<Held> {
        self.map().remove(mailbox)
    }

    /// Every lease held, valid or not.
    pub fn held(&self) -> HashMap<MailboxAddress, Held> {
        self.map().clone()
    }

    /// Addresses of the leases held and still valid.
    pub fn held_addresses(&self) -> Vec<String> {
        let now = Instant::now();
        self.map()
            .iter()
            .filter(|(_, h)| now < h.valid_until)
            .map(|(m, _)| m.to_string())
            .collect()
    }

    /// Drops the leases whose validity ran out (the database was not heard from in time);
    /// returns them.
    pub fn expire(&self, now: Instant) -> Vec<MailboxAddress> {
        let mut map = self.map();
        let gone: Vec<MailboxAddress> = map
            .iter()
            .filter(|(_, h)| now >= h.valid_until)
            .map(|(m, _)| m.clone())
            .collect();
        for m in &gone {
            map.remove(m);
        }
        gone
    }
}
