//! The subscription requests of one mailbox folder: create, read, renew, reauthorize, delete.

use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Notifications;
use crate::graph::{Call, CallError, GraphErrorKind, segment};
use crate::mailbox::MailboxCtx;

/// A subscription as Graph answered it.
pub(super) struct Created {
    /// Its id.
    pub(super) id: String,
    /// When it expires.
    pub(super) expires_at: OffsetDateTime,
}

/// The resource watched for a folder.
fn resource(ctx: &MailboxCtx, folder: &str) -> String {
    format!(
        "users/{}/mailFolders('{}')/messages",
        ctx.config.address.as_str(),
        folder.replace('\'', "''")
    )
}

/// RFC 3339 without fractions, as Graph's examples write it.
fn wire_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
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

/// Runs `call` once more with the cap Graph announced, when it refused the lifetime.
async fn with_cap<F>(hub: &Notifications, ctx: &MailboxCtx, build: F) -> Result<Value, CallError>
where
    F: Fn(OffsetDateTime) -> Call,
{
    let first = build(OffsetDateTime::now_utc() + hub.lifetime());
    match ctx.graph.call(&ctx.gate, &ctx.active(), &first).await {
        Err(e) => match announced_cap(&e) {
            Some(cap) if cap > 0 => {
                tracing::info!(mailbox = %ctx.config.address, minutes = cap, "Graph caps subscription lifetimes; asking for that instead.");
                hub.learned_cap_minutes.store(cap, std::sync::atomic::Ordering::Relaxed);
                let again = build(OffsetDateTime::now_utc() + hub.lifetime());
                ctx.graph.call(&ctx.gate, &ctx.active(), &again).await
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// The id and expiry of an answer.
fn parse(value: &Value, fallback_id: &str) -> Created {
    let id = value["id"].as_str().unwrap_or(fallback_id).to_string();
    let expires_at = value["expirationDateTime"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    Created { id, expires_at }
}

/// `POST /subscriptions` for a folder's new messages.
pub(super) async fn create(
    hub: &Notifications,
    ctx: &MailboxCtx,
    folder: &str,
    client_state: &str,
) -> Result<Created, CallError> {
    let value = with_cap(hub, ctx, |expires| {
        Call::post(
            "subscribe",
            "subscriptions",
            json!({
                "changeType": "created",
                "notificationUrl": hub.notification_url,
                "lifecycleNotificationUrl": hub.lifecycle_url,
                "resource": resource(ctx, folder),
                "expirationDateTime": wire_time(expires),
                "clientState": client_state,
            }),
        )
    })
    .await?;
    Ok(parse(&value, ""))
}

/// `PATCH /subscriptions/{id}` with a new expiry.
pub(super) async fn renew(hub: &Notifications, ctx: &MailboxCtx, id: &str) -> Result<Created, CallError> {
    let url = format!("subscriptions/{}", segment(id));
    let value = with_cap(hub, ctx, |expires| Call {
        method: Method::PATCH,
        ..Call::post(
            "renew_subscription",
            url.clone(),
            json!({"expirationDateTime": wire_time(expires)}),
        )
    })
    .await?;
    Ok(parse(&value, id))
}

/// `GET /subscriptions/{id}`: does it still exist?
pub(super) async fn read(ctx: &MailboxCtx, id: &str) -> Result<Created, CallError> {
    let call = Call::get("read_subscription", format!("subscriptions/{}", segment(id)));
    let value = ctx.graph.call(&ctx.gate, &ctx.active(), &call).await?;
    Ok(parse(&value, id))
}

/// `POST /subscriptions/{id}/reauthorize`.
pub(super) async fn reauthorize(ctx: &MailboxCtx, id: &str) -> Result<(), CallError> {
    let call = Call {
        body: None,
        ..Call::post(
            "reauthorize_subscription",
            format!("subscriptions/{}/reauthorize", segment(id)),
            Value::Null,
        )
    };
    ctx.graph.call(&ctx.gate, &ctx.active(), &call).await.map(|_| ())
}

/// `DELETE /subscriptions/{id}`; one already gone counts as deleted.
pub(super) async fn delete(ctx: &MailboxCtx, id: &str) -> Result<(), CallError> {
    let call = Call {
        method: Method::DELETE,
        ..Call::get("unsubscribe", format!("subscriptions/{}", segment(id)))
    };
    match ctx.graph.call(&ctx.gate, &ctx.active(), &call).await {
        Err(e) if is_gone(&e) => Ok(()),
        other => other.map(|_| ()),
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
