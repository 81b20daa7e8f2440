//! How much mail is held in process at once, all mailboxes together.
//!
//! A fixed number of pages may be in flight (a permit each), and each mailbox sizes its delta
//! pages from what its last page weighed, so that a page's share of the budget holds its
//! messages and the copies made of them (the parsed page, the event's text, the serialized
//! event). Memory then follows the setting, not the mailbox count or the message size; only
//! a single message larger than a page's share exceeds it, alone.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::graph::Message;

/// Pages processed at once. A mailbox's pages go one after another (fetch, complete, deliver,
/// record), so this is how many requests and deliveries overlap: on two cores, 16 smaller
/// pages delivered a backlog 5 to 10 % faster than 8 larger ones, in the same memory.
pub const PAGES_IN_FLIGHT: usize = 16;
/// Graph's largest delta page for messages worth asking for.
pub const MAX_PAGE_ITEMS: u32 = 100;
/// A mailbox's first page, before anything is known of its mail.
const FIRST_PAGE_ITEMS: u32 = 10;
/// Bytes held per byte of message: the parsed page, the event's text and HTML, the
/// serialized event.
const COPIES: u64 = 3;

/// The shared budget.
#[derive(Debug)]
pub struct IngestBudget {
    pages: Semaphore,
    /// Message bytes one page may carry.
    page_bytes: u64,
}

impl IngestBudget {
    /// A budget of `total_bytes` (`microsoft.in_flight_bytes`).
    pub fn new(total_bytes: u64) -> IngestBudget {
        IngestBudget {
            pages: Semaphore::new(PAGES_IN_FLIGHT),
            page_bytes: (total_bytes / PAGES_IN_FLIGHT as u64 / COPIES).max(1),
        }
    }

    /// Waits for a page's share.
    pub async fn page(&self) -> SemaphorePermit<'_> {
        self.pages.acquire().await.expect("the ingest budget is never closed")
    }

    /// Message bytes one page may carry (also the most attachment content asked for at once).
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }

    /// Items to ask for in the next page, given the bytes and count of the last one.
    pub fn next_page_items(&self, bytes: u64, items: usize) -> u32 {
        if items == 0 {
            return MAX_PAGE_ITEMS;
        }
        let mean = (bytes / items as u64).max(1);
        (self.page_bytes / mean).clamp(1, u64::from(MAX_PAGE_ITEMS)) as u32
    }
}

/// One mailbox's current page size.
#[derive(Debug)]
pub struct PageSize(AtomicU32);

impl Default for PageSize {
    fn default() -> Self {
        PageSize(AtomicU32::new(FIRST_PAGE_ITEMS))
    }
}

impl PageSize {
    /// Items to ask for.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Learns from a page that held `items` weighing `bytes`. An empty page teaches nothing
    /// (an idle mailbox keeps what its last mail taught it).
    pub fn learn(&self, budget: &IngestBudget, bytes: u64, items: usize) {
        if items > 0 {
            self.0.store(budget.next_page_items(bytes, items), Ordering::Relaxed);
        }
    }
}

/// What a delta item weighs beside its body: headers, addresses and the rest of the event
/// (also what a removed or unreadable item is counted at).
pub const ITEM_OVERHEAD: u64 = 2_048;

/// What a delta item weighs in memory without its attachments (their content is read after
/// the page, and counted then): its body, headers, addresses and the rest of the event.
pub fn weight(item: &Message) -> u64 {
    item.body_content().len() as u64 + ITEM_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ItemBody;

    #[test]
    fn pages_are_sized_to_the_share_of_the_budget() {
        let budget = IngestBudget::new(64 << 20);
        assert_eq!(budget.page_bytes(), (64 << 20) / 16 / 3);
        // Small mail: Graph's largest page.
        assert_eq!(budget.next_page_items(100 * 10_000, 100), MAX_PAGE_ITEMS);
        // 500 KB bodies: a handful per page.
        assert_eq!(budget.next_page_items(5 << 20, 10), 2);
        // One message over the share still moves, alone.
        assert_eq!(budget.next_page_items(50 << 20, 1), 1);
        assert_eq!(budget.next_page_items(0, 0), MAX_PAGE_ITEMS);
    }

    #[test]
    fn a_mailbox_learns_from_pages_with_mail_only() {
        let budget = IngestBudget::new(64 << 20);
        let size = PageSize::default();
        assert_eq!(size.get(), FIRST_PAGE_ITEMS);
        size.learn(&budget, 2 << 20, 4);
        assert_eq!(size.get(), 2);
        size.learn(&budget, 0, 0);
        assert_eq!(size.get(), 2, "an empty page teaches nothing");
        size.learn(&budget, 50_000, 10);
        assert_eq!(size.get(), MAX_PAGE_ITEMS);
    }

    #[test]
    fn weight_counts_the_body_and_the_rest_of_the_event() {
        let whole = Message {
            body: Some(ItemBody {
                content: Some("x".repeat(1000)),
                ..ItemBody::default()
            }),
            ..Message::with_id("whole")
        };
        assert_eq!(weight(&whole), 3_048);
        assert_eq!(weight(&Message::with_id("partial")), 2_048);
    }
}
