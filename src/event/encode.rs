//! `inboxd.message.v1` as JSON without serde: a backlog serializes every body twice (HTML and
//! text) plus attachment content, and serde_json's byte-at-a-time escaping was the largest
//! user-space cost of ingest. The output is byte for byte what serde_json writes (a property
//! test holds the two together), into one buffer sized up front.

use std::io::Write;

#[cfg(test)]
use super::Base64Text;
use super::{EmailAddress, EventAttachment, MessageEvent};

/// The event as compact JSON, fields in declaration order.
pub fn message(e: &MessageEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(e));
    out.push(b'{');
    field(&mut out, "schema", &e.schema);
    field(&mut out, "event_id", &e.event_id);
    field(&mut out, "dedup_key", &e.dedup_key);
    field(&mut out, "mailbox", &e.mailbox);
    field(&mut out, "folder", &e.folder);
    field(&mut out, "graph_id", &e.graph_id);
    field(&mut out, "internet_message_id", &e.internet_message_id);
    field(&mut out, "conversation_id", &e.conversation_id);
    key(&mut out, "in_reply_to");
    optional(&mut out, e.in_reply_to.as_deref());
    key(&mut out, "references");
    list(&mut out, &e.references, |out, r| string(out, r));
    field(&mut out, "subject", &e.subject);
    key(&mut out, "from");
    match &e.from {
        Some(a) => address(&mut out, a),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    key(&mut out, "to");
    list(&mut out, &e.to, address);
    key(&mut out, "cc");
    list(&mut out, &e.cc, address);
    key(&mut out, "reply_to");
    list(&mut out, &e.reply_to, address);
    field(&mut out, "received_at", &e.received_at);
    key(&mut out, "body");
    out.push(b'{');
    key(&mut out, "text");
    optional(&mut out, e.body.text.as_deref());
    key(&mut out, "html");
    optional(&mut out, e.body.html.as_deref());
    close(&mut out, b'}');
    out.push(b',');
    key(&mut out, "attachments");
    list(&mut out, &e.attachments, attachment);
    close(&mut out, b'}');
    out
}

/// Room for everything: the long strings plus a generous allowance for the rest (a few
/// escapes only cost a reallocation).
fn estimate(e: &MessageEvent) -> usize {
    let body = e.body.text.as_ref().map_or(0, String::len) + e.body.html.as_ref().map_or(0, String::len);
    let attachments: usize = e
        .attachments
        .iter()
        .map(|a| a.content_base64.as_ref().map_or(0, |c| c.as_str().len()) + a.name.len() + 256)
        .sum();
    body + attachments
        + e.subject.len()
        + 1024
        + 128 * (e.to.len() + e.cc.len() + e.reply_to.len() + e.references.len())
}

fn attachment(out: &mut Vec<u8>, a: &EventAttachment) {
    out.push(b'{');
    field(out, "name", &a.name);
    field(out, "content_type", &a.content_type);
    key(out, "size");
    let _ = write!(out, "{}", a.size);
    out.push(b',');
    key(out, "is_inline");
    out.extend_from_slice(if a.is_inline { b"true" } else { b"false" });
    out.push(b',');
    key(out, "content_id");
    optional(out, a.content_id.as_deref());
    field(out, "sha256", &a.sha256);
    if let Some(content) = &a.content_base64 {
        // The base64 alphabet needs no escaping.
        key(out, "content_base64");
        out.push(b'"');
        out.extend_from_slice(content.as_str().as_bytes());
        out.extend_from_slice(b"\",");
    }
    close(out, b'}');
}

fn address(out: &mut Vec<u8>, a: &EmailAddress) {
    out.push(b'{');
    field(out, "name", &a.name);
    field(out, "address", &a.address);
    close(out, b'}');
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `"name":"value",`
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    key(out, name);
    string(out, value);
    out.push(b',');
}

/// A string or `null`, then the comma.
fn optional(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
}

fn list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.extend_from_slice(b"],");
}

/// Replaces the trailing comma of the last member with `end` (`{` of an empty object never
/// happens here: every object has members).
fn close(out: &mut Vec<u8>, end: u8) {
    match out.last_mut() {
        Some(last) if *last == b',' => *last = end,
        _ => out.push(end),
    }
}

/// Bytes with the high bit set where a byte of `w` is below 0x20, `"` or `\`. The lowest one
/// set marks the first such byte exactly (higher ones may be false alarms after it).
fn specials(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON string, escaped as serde_json escapes (short forms for `\b \t \n \f \r`, lowercase
/// `\u00xx` for the other control characters, everything else as it is), eight bytes at a
/// time between escapes.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    loop {
        let mut found = false;
        while let Some(chunk) = b.get(i..i + 8) {
            let mask = specials(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                found = true;
                break;
            }
            i += 8;
        }
        if !found {
            while i < b.len() && !needs_escape(b[i]) {
                i += 1;
            }
        }
        let Some(&c) = b.get(i) else { break };
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::EventBody;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    #[test]
    fn every_ascii_byte_is_escaped_as_serde_json_escapes_it() {
        for b in 0u8..0x80 {
            for s in [
                (b as char).to_string(),
                format!("{}abcdefgh{}", b as char, b as char),
                format!("0123456{}", b as char),
            ] {
                assert_eq!(
                    escaped(&s),
                    serde_json::to_string(&s).expect("a string serializes"),
                    "byte {b:#04x}"
                );
            }
        }
    }

    #[test]
    fn base64_text_outside_the_alphabet_is_refused_where_it_is_wrong() {
        let err = Base64Text::try_from("YW\"Jj".to_string()).expect_err("a quote is not base64");
        assert!(err.contains("at 2"), "{err}");
        let json = r#"{"name":"a","content_type":"t","size":1,"is_inline":false,"content_id":null,"sha256":"","content_base64":"a\nb"}"#;
        let read = serde_json::from_str::<EventAttachment>(json);
        assert!(read.is_err(), "an event read back keeps the promise too: {read:?}");
    }

    fn recipient() -> impl Strategy<Value = EmailAddress> {
        (any::<String>(), any::<String>()).prop_map(|(name, address)| EmailAddress { name, address })
    }

    fn attachment_strategy() -> impl Strategy<Value = EventAttachment> {
        (
            any::<String>(),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(any::<String>()),
            proptest::option::of("[A-Za-z0-9+/=]{0,200}".prop_map(|t| Base64Text::try_from(t).expect("the alphabet"))),
        )
            .prop_map(|(name, size, is_inline, content_id, content_base64)| EventAttachment {
                name,
                content_type: "application/pdf".into(),
                size,
                is_inline,
                content_id,
                sha256: "ab".repeat(32),
                content_base64,
            })
    }

    fn event() -> impl Strategy<Value = MessageEvent> {
        (
            (any::<String>(), any::<String>(), proptest::option::of(any::<String>())),
            proptest::collection::vec(any::<String>(), 0..3),
            proptest::option::of(recipient()),
            proptest::collection::vec(recipient(), 0..3),
            (
                proptest::option::of(".{0,300}"),
                proptest::option::of("(.|\n|\t|\r|\"|\\\\){0,300}"),
            ),
            proptest::collection::vec(attachment_strategy(), 0..3),
        )
            .prop_map(
                |((subject, graph_id, in_reply_to), references, from, to, (text, html), attachments)| MessageEvent {
                    schema: crate::event::MESSAGE_SCHEMA.into(),
                    event_id: "e".into(),
                    dedup_key: "d".into(),
                    mailbox: "m@example.com".into(),
                    folder: "inbox".into(),
                    graph_id,
                    internet_message_id: "<x@y>".into(),
                    conversation_id: "c".into(),
                    in_reply_to,
                    references,
                    subject,
                    from,
                    cc: to.iter().rev().cloned().collect(),
                    reply_to: to.iter().take(1).cloned().collect(),
                    to,
                    received_at: "2026-12-07T04:00:00Z".into(),
                    body: EventBody { text, html },
                    attachments,
                },
            )
    }

    proptest! {
        #[test]
        fn the_fast_encoder_writes_what_serde_json_writes(e in event()) {
            let fast = message(&e);
            let serde = serde_json::to_vec(&e).expect("an event serializes");
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&serde));
        }

        #[test]
        fn strings_escape_as_serde_json_escapes_them(s in any::<String>()) {
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).expect("a string serializes"));
        }
    }
}
