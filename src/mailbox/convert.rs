//! A Graph message, read → `inboxd.message.v1` event. Anything missing that the event
//! requires is an error (the message is quarantined, the mailbox goes on).

use super::fetch::HeldAttachment;
use super::html_text::html_to_text;
use crate::domain::MailboxAddress;
use crate::event::{Base64Text, EmailAddress, EventAttachment, EventBody, MESSAGE_SCHEMA, MessageEvent};
use crate::graph::{Header, Message, Recipient};

/// `$select` for delta rounds (the benchmark's emulator seeds answer it too).
pub use crate::graph::MESSAGE_SELECT as DELTA_SELECT;

/// Stable across re-deliveries: derived from the mailbox and the immutable id only.
pub fn dedup_key(mailbox: &MailboxAddress, graph_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{mailbox}\n{graph_id}").as_bytes());
    hex(&digest.as_ref()[..16])
}

/// Lowercase hex SHA-256 of attachment content given as base64 (the event's `sha256`), or
/// `None` when the text is not base64.
pub(super) fn base64_sha256_hex(text: &str) -> Option<String> {
    sha256_hex_of(|each| crate::event::decode_pieces(text, each)).map(|(_, sha)| sha)
}

/// What `decode` returned, and the lowercase hex SHA-256 of the bytes it handed over piece by
/// piece; `None` when it failed.
fn sha256_hex_of<T, E>(decode: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<T, E>) -> Option<(T, String)> {
    let mut sha = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let decoded = decode(&mut |piece| sha.update(piece)).ok()?;
    Some((decoded, hex(sha.finish().as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sender or recipient as the event carries it; one without an address is left out.
fn address(r: Recipient) -> Option<EmailAddress> {
    let e = r.email_address?;
    Some(EmailAddress {
        address: e.address?,
        name: e.name.unwrap_or_default(),
    })
}

fn addresses(list: Option<Vec<Recipient>>) -> Vec<EmailAddress> {
    list.map(|a| a.into_iter().filter_map(address).collect())
        .unwrap_or_default()
}

/// Header value by name (case-insensitive) from `internetMessageHeaders`.
fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| h.value.as_deref())
}

/// Attachments as the event carries them; `cap` = `max_inline_attachment_bytes`.
pub fn attachments(list: Vec<HeldAttachment>, cap: u64) -> Vec<EventAttachment> {
    list.into_iter()
        .map(|held| {
            let a = held.attachment;
            // The string is kept, not rebuilt from the bytes (see `Base64Text::decode`), and
            // the bytes are hashed as they are decoded, never held whole.
            let decoded = a
                .content_bytes
                .and_then(|b| sha256_hex_of(|each| Base64Text::decode(b, each)));
            let size = a.size.or(decoded.as_ref().map(|((_, len), _)| *len)).unwrap_or(0);
            // Over the inline cap the content was hashed while fetched and not kept.
            let (content_base64, sha256) = match decoded {
                Some(((text, len), sha)) => ((len <= cap).then_some(text), sha),
                None => (None, held.sha256.unwrap_or_default()),
            };
            EventAttachment {
                name: a.name.unwrap_or_else(|| "attachment".to_string()),
                content_type: a.content_type.unwrap_or_else(|| "application/octet-stream".to_string()),
                size,
                is_inline: a.is_inline.unwrap_or(false),
                content_id: a.content_id,
                sha256,
                content_base64,
            }
        })
        .collect()
}

/// Builds the event. `headers` and `attachment_list` come from the delta item or a follow-up
/// fetch. Everything is moved out of `m`, not copied: a body can be megabytes.
pub fn event(
    mailbox: &MailboxAddress,
    folder: &str,
    m: Message,
    headers: &[Header],
    attachment_list: Vec<HeldAttachment>,
    cap: u64,
) -> Result<MessageEvent, String> {
    let received_at = m.received_date_time.ok_or("the message has no receivedDateTime")?;
    time::OffsetDateTime::parse(&received_at, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("receivedDateTime '{received_at}' is not RFC 3339"))?;
    let body = m.body.ok_or("the message has no body")?;
    let is_html = body
        .content_type
        .as_deref()
        .is_none_or(|t| t.eq_ignore_ascii_case("html"));
    let content = body.content.unwrap_or_default();
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
        .internet_message_id
        .or_else(|| header(headers, "Message-ID").map(str::to_string))
        .unwrap_or_default();
    Ok(MessageEvent {
        schema: MESSAGE_SCHEMA.to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        dedup_key: dedup_key(mailbox, &m.id),
        mailbox: mailbox.to_string(),
        folder: folder.to_string(),
        graph_id: m.id,
        internet_message_id,
        conversation_id: m.conversation_id.unwrap_or_default(),
        in_reply_to: header(headers, "In-Reply-To").map(str::to_string),
        references: header(headers, "References")
            .map(|r| r.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        subject: m.subject.unwrap_or_default(),
        from: m.from.and_then(address),
        to: addresses(m.to_recipients),
        cc: addresses(m.cc_recipients),
        reply_to: addresses(m.reply_to),
        received_at,
        body,
        attachments: attachments(attachment_list, cap),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::graph::Attachment;
    use serde_json::{Value, json};

    fn message(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    fn held(v: Value) -> HeldAttachment {
        HeldAttachment {
            attachment: serde_json::from_value(v).unwrap(),
            sha256: None,
        }
    }

    #[test]
    fn event_carries_threading_and_caps_attachments() {
        let mb = MailboxAddress::parse("Support@Contoso.test").unwrap();
        let m = message(json!({
            "id": "AAkA1", "subject": "RE: Order", "receivedDateTime": "2026-01-02T03:04:05Z",
            "internetMessageId": "<b@x>", "conversationId": "c1",
            "from": {"emailAddress": {"name": "Ann", "address": "ann@x.net"}},
            "toRecipients": [{"emailAddress": {"name": "", "address": "support@contoso.test"}}],
            "body": {"contentType": "html", "content": "<p>Hello &amp; bye</p>"},
        }));
        let headers: Vec<Header> = serde_json::from_value(json!([
            {"name": "in-reply-to", "value": "<a@x>"},
            {"name": "References", "value": "<r@x> <a@x>"},
        ]))
        .unwrap();
        let atts = vec![
            held(json!({"name": "small.txt", "contentType": "text/plain", "size": 3, "contentBytes": "YWJj"})),
            held(json!({"name": "big.bin", "contentType": "application/pdf", "size": 6, "contentBytes": "YWJjZGVm"})),
            HeldAttachment {
                attachment: Attachment {
                    name: Some("huge.iso".into()),
                    size: Some(1 << 30),
                    ..Attachment::default()
                },
                sha256: Some("ab".repeat(32)),
            },
        ];
        let e = event(&mb, "inbox", m, &headers, atts, 4).unwrap();
        assert_eq!(e.in_reply_to.as_deref(), Some("<a@x>"));
        assert_eq!(e.references, vec!["<r@x>", "<a@x>"]);
        assert_eq!(e.body.text.as_deref(), Some("Hello & bye"));
        assert_eq!(e.body.html.as_deref(), Some("<p>Hello &amp; bye</p>"));
        assert_eq!(
            e.attachments[0].content_base64.as_ref().map(Base64Text::as_str),
            Some("YWJj")
        );
        assert_eq!(e.attachments[1].content_base64, None);
        assert_eq!(
            e.attachments[1].sha256,
            "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
        );
        assert_eq!(e.attachments[2].sha256, "ab".repeat(32), "hashed while fetched");
        assert_eq!(e.attachments[2].content_type, "application/octet-stream");
        assert_eq!(e.dedup_key, dedup_key(&mb, "AAkA1"));
        assert_eq!(e.mailbox, "support@contoso.test");
        assert_eq!(e.from.as_ref().map(|f| f.name.as_str()), Some("Ann"));
        assert_eq!(e.to.len(), 1);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let mb = MailboxAddress::parse("a@b.test").unwrap();
        let err = event(&mb, "inbox", message(json!({"id": "x", "body": {}})), &[], vec![], 10).unwrap_err();
        assert!(err.contains("receivedDateTime"), "{err}");
        let err = event(
            &mb,
            "inbox",
            message(json!({"id": "x", "receivedDateTime": "yesterday", "body": {}})),
            &[],
            vec![],
            10,
        )
        .unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        let err = event(
            &mb,
            "inbox",
            message(json!({"id": "x", "receivedDateTime": "2026-01-02T03:04:05Z"})),
            &[],
            vec![],
            10,
        )
        .unwrap_err();
        assert!(err.contains("body"), "{err}");
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
            // What cannot be read as a message is quarantined before conversion (see
            // `DeltaItem::read`); what can, converts or says which field is missing.
            let Ok(m) = serde_json::from_value::<Message>(m) else { return Ok(()) };
            let headers: Vec<Header> = headers.into_iter().filter_map(|h| serde_json::from_value(h).ok()).collect();
            let attachments: Vec<HeldAttachment> = attachments
                .into_iter()
                .filter_map(|a| serde_json::from_value(a).ok())
                .map(|attachment| HeldAttachment { attachment, sha256: None })
                .collect();
            let id = m.id.clone();
            match event(&mb, "inbox", m, &headers, attachments, cap) {
                Ok(e) => {
                    proptest::prop_assert_eq!(&e.dedup_key, &dedup_key(&mb, &id));
                    for a in &e.attachments {
                        proptest::prop_assert!(a.content_base64.as_ref().is_none_or(|b| (b.as_str().len() as u64) <= cap * 4 / 3 + 4));
                    }
                }
                Err(reason) => proptest::prop_assert!(
                    ["receivedDateTime", "body", "RFC 3339"].iter().any(|f| reason.contains(f)),
                    "reason names nothing: {}", reason
                ),
            }
        }

        #[test]
        fn kept_base64_is_what_encoding_the_bytes_gives(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let encoded = STANDARD.encode(&bytes);
            let held = HeldAttachment {
                attachment: Attachment { content_bytes: Some(encoded.clone()), ..Attachment::default() },
                sha256: None,
            };
            let e = attachments(vec![held], u64::MAX);
            proptest::prop_assert_eq!(e[0].content_base64.as_ref().map(Base64Text::as_str), Some(encoded.as_str()));
            proptest::prop_assert_eq!(e[0].size, bytes.len() as u64);
        }
    }
}
