//! The subscription requests of one mailbox folder: create, read, renew, reauthorize, delete.

use time::OffsetDateTime;

use super::Notifications;
use crate::graph::{CallError, GraphErrorKind, NewSubscription, Subscription};
use crate::mailbox::MailboxCtx;

/// A subscription as Graph answered it.
pub(super) struct Created {
    /// Its id.
    pub(super) id: String,
    /// When it expires.
    pub(super) expires_at: OffsetDateTime,
}

impl From<Subscription> for Created {
    fn from(s: Subscription) -> Created {
        Created {
            id: s.id,
            expires_at: s.expiration_date_time,
        }
    }
}

/// The N of "Subscription expiration can only be N minutes in the future".
pub(super) fn announced_cap(e: &CallError) -> Option<u64> {
    let CallError::Graph(g) = e else { return None };
    let rest = g.message.split("can only be ").nth(1)?;
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    let after = rest.trim_start()[digits.len()..].trim_start();
    after.starts_with("minute").then(|| digits.parse().ok()).flatten()
}

/// True when Graph says the subscription does not exist (any more).
pub(super) fn is_gone(e: &CallError) -> bool {
    matches!(e, CallError::Graph(g) if matches!(g.kind, GraphErrorKind::ItemNotFound | GraphErrorKind::MailboxNotFound))
}

/// Asks once more with the cap Graph announced, when it refused the lifetime.
async fn with_cap<F, Fut>(hub: &Notifications, ctx: &MailboxCtx, ask: F) -> Result<Subscription, CallError>
where
    F: Fn(OffsetDateTime) -> Fut,
    Fut: Future<Output = Result<Subscription, CallError>>,
{
    match ask(OffsetDateTime::now_utc() + hub.lifetime()).await {
        Err(e) => match announced_cap(&e) {
            Some(cap) if cap > 0 => {
                tracing::info!(mailbox = %ctx.config.address, minutes = cap, "Graph caps subscription lifetimes; asking for that instead.");
                hub.learned_cap_minutes.store(cap, std::sync::atomic::Ordering::Relaxed);
                ask(OffsetDateTime::now_utc() + hub.lifetime()).await
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// `POST /subscriptions` for a folder's new messages.
pub(super) async fn create(
    hub: &Notifications,
    ctx: &MailboxCtx,
    folder: &str,
    client_state: &str,
) -> Result<Created, CallError> {
    let new = NewSubscription {
        address: ctx.config.address.as_str(),
        folder,
        notification_url: &hub.notification_url,
        lifecycle_url: &hub.lifecycle_url,
        client_state,
    };
    let created = with_cap(hub, ctx, |expires| async move {
        ctx.mailbox_graph().subscribe(&new, expires).await
    })
    .await?;
    Ok(created.into())
}

/// `PATCH /subscriptions/{id}` with a new expiry.
pub(super) async fn renew(hub: &Notifications, ctx: &MailboxCtx, id: &str) -> Result<Created, CallError> {
    let renewed = with_cap(hub, ctx, |expires| async move {
        ctx.mailbox_graph().renew_subscription(id, expires).await
    })
    .await?;
    Ok(renewed.into())
}

/// `GET /subscriptions/{id}`: does it still exist?
pub(super) async fn read(ctx: &MailboxCtx, id: &str) -> Result<Created, CallError> {
    Ok(ctx.mailbox_graph().subscription(id).await?.into())
}

/// `POST /subscriptions/{id}/reauthorize`.
pub(super) async fn reauthorize(ctx: &MailboxCtx, id: &str) -> Result<(), CallError> {
    ctx.mailbox_graph().reauthorize_subscription(id).await
}

/// `DELETE /subscriptions/{id}`; one already gone counts as deleted.
pub(super) async fn delete(ctx: &MailboxCtx, id: &str) -> Result<(), CallError> {
    match ctx.mailbox_graph().delete_subscription(id).await {
        Err(e) if is_gone(&e) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphError;

    fn refused(message: &str) -> CallError {
        CallError::Graph(GraphError {
            kind: GraphErrorKind::Rejected,
            operation: "subscribe",
            status: Some(400),
            code: Some("InvalidRequest".into()),
            message: message.into(),
            request_id: None,
            client_request_id: "x".into(),
            retry_after: None,
        })
    }

    #[test]
    fn the_announced_cap_is_read_from_the_message_whatever_its_value() {
        for n in [4230u64, 10070, 60, 1] {
            let e = refused(&format!(
                "Subscription expiration can only be {n} minutes in the future."
            ));
            assert_eq!(announced_cap(&e), Some(n));
        }
        assert_eq!(announced_cap(&refused("Subscription validation request failed.")), None);
        assert_eq!(announced_cap(&refused("can only be many minutes")), None);
        assert_eq!(announced_cap(&refused("can only be 12 hours")), None);
    }
}
