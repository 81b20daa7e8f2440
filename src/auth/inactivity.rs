//! Warning before Entra expires a delegated mailbox's unused refresh token.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::MailboxAddress;
use crate::store::Store;

/// Entra expires refresh tokens unused for 90 days; a delegated mailbox that is disabled or
/// flagged for long does not refresh. Warn from 60 days on, daily.
pub async fn watch_refresh_inactivity(
    store: Arc<dyn Store>,
    mailboxes: Vec<MailboxAddress>,
    cancel: CancellationToken,
) {
    if mailboxes.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        for mailbox in &mailboxes {
            let Ok(Some(token)) = store.delegated_token(mailbox).await else {
                continue;
            };
            let idle_days = (time::OffsetDateTime::now_utc() - token.last_used_at).whole_days();
            if idle_days >= 60 {
                tracing::warn!(
                    mailbox = %mailbox, idle_days,
                    "The mailbox's refresh token has not been used for {idle_days} days; Entra expires it at 90. Enable the mailbox or fix its state, or consent again later."
                );
            }
        }
    }
}
