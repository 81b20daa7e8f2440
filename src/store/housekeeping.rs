//! The store's own upkeep.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;

/// Keeps the delivered-keys table bounded: keys older than the retention go, unless a resync
/// of their mailbox could still reach them.
pub async fn prune_delivered_keys(
    store: Arc<dyn Store>,
    retention: time::Duration,
    margin: time::Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let before = time::OffsetDateTime::now_utc() - retention;
        match store.prune_delivered(before, margin).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "Pruned old delivered keys."),
            Err(e) => tracing::warn!(error = %e, "Pruning delivered keys failed; will retry in an hour."),
        }
    }
}
