//! After `send`: Graph's 202 only means the message was accepted. Transport moves it from
//! Drafts through the Outbox to Sent Items later (and gives the Sent Items copy a new id),
//! or sends a non-delivery report back to the Inbox. This module finds out which happened.

use super::sender::Failure;
use super::steps::{self, Found};
use crate::graph::InboxMessage;
use crate::mailbox::MailboxCtx;

/// Where the marked message is now.
#[derive(Debug)]
pub(super) enum Whereabouts {
    /// In Sent Items: transport took it.
    Sent(Found),
    /// Still in the Outbox: in transit.
    Outbox,
    /// Still in Drafts.
    Drafts(Found),
    /// In none of the three (deleted, or never created).
    Nowhere,
}

/// Looks for the marked message in Sent Items, the Outbox and Drafts (never Deleted Items:
/// a discarded draft there is not the message).
pub(super) async fn locate(ctx: &MailboxCtx, outbound_id: &str) -> Result<Whereabouts, Failure> {
    if let Some(copy) = steps::find(ctx, "sentitems", outbound_id).await?.into_iter().next() {
        return Ok(Whereabouts::Sent(copy));
    }
    if !steps::find(ctx, "outbox", outbound_id).await?.is_empty() {
        return Ok(Whereabouts::Outbox);
    }
    if let Some(draft) = steps::find(ctx, "drafts", outbound_id).await?.into_iter().next() {
        return Ok(Whereabouts::Drafts(draft));
    }
    Ok(Whereabouts::Nowhere)
}

/// The reason of a non-delivery report about the message `internet_message_id`, if one is
/// in the Inbox: threaded on the message (same conversation, `In-Reply-To` or `References`
/// naming it) and marked as a report (`X-MS-Exchange-Message-Is-Ndr`, or an
/// `Undeliverable:` subject).
pub(super) async fn non_delivery(
    ctx: &MailboxCtx,
    internet_message_id: &str,
    conversation_id: &str,
) -> Result<Option<String>, Failure> {
    let items = ctx.mailbox_graph().inbox_conversation(conversation_id).await?;
    Ok(items.iter().find_map(|m| report_reason(m, internet_message_id)))
}

/// The reason, when `m` is a non-delivery report about `internet_message_id`.
fn report_reason(m: &InboxMessage, internet_message_id: &str) -> Option<String> {
    let header = |name: &str| {
        m.internet_message_headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| h.value.as_deref())
            .collect::<Vec<_>>()
    };
    let about = header("In-Reply-To")
        .iter()
        .chain(header("References").iter())
        .any(|v| v.split_whitespace().any(|id| id == internet_message_id));
    let subject = m.subject.as_deref().unwrap_or_default();
    let is_report =
        !header("X-MS-Exchange-Message-Is-Ndr").is_empty() || subject.to_ascii_lowercase().starts_with("undeliverable");
    if !(about && is_report) {
        return None;
    }
    let body = m.body.as_ref().and_then(|b| b.content.as_deref()).unwrap_or_default();
    let diagnostic = body
        .split("Remote Server returned '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .map(|d| d.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"));
    Some(match diagnostic {
        Some(d) => format!("non-delivery report: {d}"),
        None => format!("non-delivery report: {subject}"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::report_reason;

    /// A message of the Inbox as Graph answers it (read the way the look-up reads it).
    fn report(in_reply_to: &str, ndr_header: bool, subject: &str, body: &str) -> crate::graph::InboxMessage {
        let mut headers = vec![json!({"name": "In-Reply-To", "value": in_reply_to})];
        if ndr_header {
            headers.push(json!({"name": "X-MS-Exchange-Message-Is-Ndr", "value": ""}));
        }
        serde_json::from_value(
            json!({"subject": subject, "body": {"content": body}, "internetMessageHeaders": headers}),
        )
        .expect("the shape Graph answers")
    }

    #[test]
    fn a_report_about_the_message_gives_its_diagnostic() {
        let m = report(
            "<a@x>",
            true,
            "Undeliverable: Hi",
            "... Remote Server returned '550 5.1.1 not found' ...",
        );
        assert_eq!(
            report_reason(&m, "<a@x>").as_deref(),
            Some("non-delivery report: 550 5.1.1 not found")
        );
        let m = report("<a@x>", false, "Undeliverable: Hi", "no diagnostic");
        assert_eq!(
            report_reason(&m, "<a@x>").as_deref(),
            Some("non-delivery report: Undeliverable: Hi")
        );
    }

    #[test]
    fn other_messages_of_the_conversation_are_not_reports() {
        let customer_reply = report("<a@x>", false, "RE: Hi", "thanks");
        assert_eq!(report_reason(&customer_reply, "<a@x>"), None);
        let other_report = report("<b@x>", true, "Undeliverable: Other", "x");
        assert_eq!(report_reason(&other_report, "<a@x>"), None);
    }
}
