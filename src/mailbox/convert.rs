//! Graph message JSON → `inboxd.message.v1` event. Anything missing that the event
//! requires is an error (the message is quarantined, the mailbox goes on).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::html_text::html_to_text;
use crate::domain::MailboxAddress;
use crate::event::{EmailAddress, EventAttachment, EventBody, MESSAGE_SCHEMA, MessageEvent};

/// `$select` for delta rounds: everything the event needs, in one request.
pub const DELTA_SELECT: &str = "id,subject,from,toRecipients,ccRecipients,replyTo,receivedDateTime,internetMessageId,conversationId,body,hasAttachments,internetMessageHeaders,isDraft";

/// Stable across re-deliveries: derived from the mailbox and the immutable id only.
pub fn dedup_key(mailbox: &MailboxAddress, graph_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{mailbox}\n{graph_id}").as_bytes());
    hex(&digest.as_ref()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn address(v: &Value) -> Option<EmailAddress> {
    let e = v.get("emailAddress")?;
    Some(EmailAddress {
        name: e.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        address: e.get("address").and_then(Value::as_str)?.to_string(),
    })
}

fn addresses(v: Option<&Value>) -> Vec<EmailAddress> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(address).collect())
        .unwrap_or_default()
}

/// Header value by name (case-insensitive) from `internetMessageHeaders`.
fn header<'a>(headers: &'a [Value], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| {
            h.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|h| h.get("value").and_then(Value::as_str))
}

/// Attachments as the event carries them; `cap` = `max_inline_attachment_bytes`.
pub fn attachments(list: &[Value], cap: u64) -> Vec<EventAttachment> {
    list.iter()
        .map(|a| {
            let bytes = a
                .get("contentBytes")
                .and_then(Value::as_str)
                .and_then(|b| STANDARD.decode(b).ok());
            let size = a
                .get("size")
                .and_then(Value::as_u64)
                .or(bytes.as_ref().map(|b| b.len() as u64))
                .unwrap_or(0);
            // Over the inline cap the content was hashed while fetched and not kept.
            let sha256 = bytes
                .as_ref()
                .map(|b| hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref()))
                .or_else(|| {
                    a.get(super::fetch::SHA256_FIELD)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            EventAttachment {
                name: a
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("attachment")
                    .to_string(),
                content_type: a
                    .get("contentType")
                    .and_then(Value::as_str)
                    .unwrap_or("application/octet-stream")
                    .to_string(),
                size,
                is_inline: a.get("isInline").and_then(Value::as_bool).unwrap_or(false),
                content_id: a.get("contentId").and_then(Value::as_str).map(str::to_string),
                sha256,
                content_base64: bytes.filter(|b| b.len() as u64 <= cap).map(|b| STANDARD.encode(b)),
            }
        })
        .collect()
}

/// Builds the event. `headers` and `attachment_list` come from the delta item or a follow-up
/// fetch. The body is taken out of `m`, not copied: it can be megabytes.
pub fn event(
    mailbox: &MailboxAddress,
    folder: &str,
    m: &mut Value,
    headers: &[Value],
    attachment_list: &[Value],
    cap: u64,
) -> Result<MessageEvent, String> {
    let graph_id = m
        .get("id")
        .and_then(Value::as_str)
        .ok_or("the message has no id")?
        .to_string();
    let received_at = m
        .get("receivedDateTime")
        .and_then(Value::as_str)
        .ok_or("the message has no receivedDateTime")?
        .to_string();
    time::OffsetDateTime::parse(&received_at, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("receivedDateTime '{received_at}' is not RFC 3339"))?;
    let body = m.get_mut("body").ok_or("the message has no body")?;
    let is_html = body
        .get("contentType")
        .and_then(Value::as_str)
        .is_none_or(|t| t.eq_ignore_ascii_case("html"));
    let content = match body.get_mut("content").map(Value::take) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let body = if is_html {
        EventBody {
            text: Some(html_to_text(&content)),
            html: Some(content),
        }
    } else {
        EventBody {
            text: Some(content),
            html: None,
        }
    };
    let internet_message_id = m
        .get("internetMessageId")
        .and_then(Value::as_str)
        .or_else(|| header(headers, "Message-ID"))
        .unwrap_or_default()
        .to_string();
    Ok(MessageEvent {
        schema: MESSAGE_SCHEMA.to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        dedup_key: dedup_key(mailbox, &graph_id),
        mailbox: mailbox.to_string(),
        folder: folder.to_string(),
        graph_id,
        internet_message_id,
        conversation_id: m
            .get("conversationId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        in_reply_to: header(headers, "In-Reply-To").map(str::to_string),
        references: header(headers, "References")
            .map(|r| r.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        subject: m.get("subject").and_then(Value::as_str).unwrap_or_default().to_string(),
        from: m.get("from").and_then(address),
        to: addresses(m.get("toRecipients")),
        cc: addresses(m.get("ccRecipients")),
        reply_to: addresses(m.get("replyTo")),
        received_at,
        body,
        attachments: attachments(attachment_list, cap),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_carries_threading_and_caps_attachments() {
        let mb = MailboxAddress::parse("Support@Contoso.test").unwrap();
        let m = json!({
            "id": "AAkA1", "subject": "RE: Order", "receivedDateTime": "2026-01-02T03:04:05Z",
            "internetMessageId": "<b@x>", "conversationId": "c1",
            "from": {"emailAddress": {"name": "Ann", "address": "ann@x.net"}},
            "toRecipients": [{"emailAddress": {"name": "", "address": "support@contoso.test"}}],
            "body": {"contentType": "html", "content": "<p>Hello &amp; bye</p>"},
        });
        let headers = vec![
            json!({"name": "in-reply-to", "value": "<a@x>"}),
            json!({"name": "References", "value": "<r@x> <a@x>"}),
        ];
        let atts = vec![
            json!({"name": "small.txt", "contentType": "text/plain", "size": 3, "contentBytes": "YWJj"}),
            json!({"name": "big.bin", "contentType": "application/pdf", "size": 6, "contentBytes": "YWJjZGVm"}),
        ];
        let e = event(&mb, "inbox", &mut m.clone(), &headers, &atts, 4).unwrap();
        assert_eq!(e.in_reply_to.as_deref(), Some("<a@x>"));
        assert_eq!(e.references, vec!["<r@x>", "<a@x>"]);
        assert_eq!(e.body.text.as_deref(), Some("Hello & bye"));
        assert_eq!(e.attachments[0].content_base64.as_deref(), Some("YWJj"));
        assert_eq!(e.attachments[1].content_base64, None);
        assert_eq!(
            e.attachments[1].sha256,
            "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
        );
        assert_eq!(e.dedup_key, dedup_key(&mb, "AAkA1"));
        assert_eq!(e.mailbox, "support@contoso.test");
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let mb = MailboxAddress::parse("a@b.test").unwrap();
        let err = event(&mb, "inbox", &mut json!({"id": "x", "body": {}}), &[], &[], 10).unwrap_err();
        assert!(err.contains("receivedDateTime"), "{err}");
        let err = event(
            &mb,
            "inbox",
            &mut json!({"id": "x", "receivedDateTime": "yesterday", "body": {}}),
            &[],
            &[],
            10,
        )
        .unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    /// Arbitrary JSON values, nested a little.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            Just(Value::from("2026-01-02T03:04:05Z")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::hash_map(
                    prop_oneof![
                        Just("id".to_string()),
                        Just("receivedDateTime".to_string()),
                        Just("body".to_string()),
                        Just("content".to_string()),
                        Just("contentType".to_string()),
                        Just("emailAddress".to_string()),
                        Just("address".to_string()),
                        Just("from".to_string()),
                        Just("toRecipients".to_string()),
                        Just("contentBytes".to_string()),
                        Just("size".to_string()),
                        Just("name".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_graph_message_becomes_an_event_or_a_named_reason(
            m in json_value(),
            headers in proptest::collection::vec(json_value(), 0..3),
            attachments in proptest::collection::vec(json_value(), 0..3),
            cap in 0u64..10,
        ) {
            let mb = MailboxAddress::parse("a@b.test").unwrap();
            match event(&mb, "inbox", &mut m.clone(), &headers, &attachments, cap) {
                Ok(e) => {
                    proptest::prop_assert_eq!(&e.dedup_key, &dedup_key(&mb, m["id"].as_str().unwrap()));
                    for a in &e.attachments {
                        proptest::prop_assert!(a.content_base64.as_ref().is_none_or(|b| (b.len() as u64) <= cap * 4 / 3 + 4));
                    }
                }
                Err(reason) => proptest::prop_assert!(
                    ["id", "receivedDateTime", "body", "RFC 3339"].iter().any(|f| reason.contains(f)),
                    "reason names nothing: {}", reason
                ),
            }
        }
    }
}
