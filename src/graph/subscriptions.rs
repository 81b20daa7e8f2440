//! Change-notification subscriptions: create, read, renew, reauthorize, delete.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::mailbox::MailboxGraph;
use super::{Call, CallError, segment};

/// A subscription as Graph answered it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expiration_date_time: OffsetDateTime,
}

/// What a new subscription is for and where its notifications go.
#[derive(Debug, Clone, Copy)]
pub struct NewSubscription<'a> {
    /// The mailbox's address (the watched resource names it as it is, not percent-encoded).
    pub address: &'a str,
    /// The watched folder (id or well-known name).
    pub folder: &'a str,
    /// Where Graph posts change notifications.
    pub notification_url: &'a str,
    /// Where Graph posts lifecycle notifications.
    pub lifecycle_url: &'a str,
    /// The secret Graph echoes in each notification.
    pub client_state: &'a str,
}

/// RFC 3339 without fractions, as Graph's examples write it.
fn wire_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `subscriptions/{id}`.
fn subscription_path(id: &str) -> String {
    format!("subscriptions/{}", segment(id))
}

impl MailboxGraph<'_> {
    /// `POST /subscriptions` for a folder's new messages, expiring at `expires`.
    pub async fn subscribe(
        &self,
        new: &NewSubscription<'_>,
        expires: OffsetDateTime,
    ) -> Result<Subscription, CallError> {
        let resource = format!(
            "users/{}/mailFolders('{}')/messages",
            new.address,
            new.folder.replace('\'', "''")
        );
        let call = Call::post(
            "subscribe",
            "subscriptions",
            json!({
                "changeType": "created",
                "notificationUrl": new.notification_url,
                "lifecycleNotificationUrl": new.lifecycle_url,
                "resource": resource,
                "expirationDateTime": wire_time(expires),
                "clientState": new.client_state,
            }),
        );
        self.typed(&call).await
    }

    /// `PATCH /subscriptions/{id}` with a new expiry.
    pub async fn renew_subscription(&self, id: &str, expires: OffsetDateTime) -> Result<Subscription, CallError> {
        let call = Call {
            method: Method::PATCH,
            ..Call::post(
                "renew_subscription",
                subscription_path(id),
                json!({"expirationDateTime": wire_time(expires)}),
            )
        };
        self.typed(&call).await
    }

    /// `GET /subscriptions/{id}`.
    pub async fn subscription(&self, id: &str) -> Result<Subscription, CallError> {
        let call = Call::get("read_subscription", subscription_path(id));
        self.typed(&call).await
    }

    /// `POST /subscriptions/{id}/reauthorize`.
    pub async fn reauthorize_subscription(&self, id: &str) -> Result<(), CallError> {
        let call = Call {
            body: None,
            ..Call::post(
                "reauthorize_subscription",
                format!("{}/reauthorize", subscription_path(id)),
                Value::Null,
            )
        };
        self.raw(&call).await.map(drop)
    }

    /// `DELETE /subscriptions/{id}`.
    pub async fn delete_subscription(&self, id: &str) -> Result<(), CallError> {
        let call = Call {
            method: Method::DELETE,
            ..Call::get("unsubscribe", subscription_path(id))
        };
        self.raw(&call).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::graph::mailbox::shaped;

    #[test]
    fn a_subscription_needs_its_id_and_a_readable_expiry() {
        let s: Subscription = shaped(
            "subscribe",
            json!({"id": "s1", "expirationDateTime": "2026-12-07T01:00:00.1234567Z", "resource": "x"}),
        )
        .unwrap();
        assert_eq!(
            (s.id.as_str(), s.expiration_date_time.unix_timestamp()),
            ("s1", 1_796_605_200)
        );
        let err = shaped::<Subscription>("renew_subscription", json!({"id": "s1"})).unwrap_err();
        assert!(
            err.detail.contains("missing field `expirationDateTime`"),
            "{}",
            err.detail
        );
        assert!(shaped::<Subscription>("subscribe", json!({"id": "s1", "expirationDateTime": "soon"})).is_err());
    }

    #[test]
    fn expiries_go_out_without_fractions() {
        let t = OffsetDateTime::from_unix_timestamp(1_796_605_200).unwrap() + time::Duration::milliseconds(250);
        assert_eq!(wire_time(t), "2026-12-07T01:00:00Z");
    }
}
