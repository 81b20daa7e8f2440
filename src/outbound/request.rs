//! What routing may ask for: replies, forwards and new mail, validated before anything is
//! stored. Every refusal names the field.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::domain::MailboxAddress;

/// Graph's limit for the attachments of one message.
pub const MAX_ATTACHMENTS_BYTES: usize = 150 * 1024 * 1024;

/// Which kind of outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Reply to the sender.
    Reply,
    /// Reply to everyone.
    ReplyAll,
    /// Forward.
    Forward,
    /// New message.
    Send,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reply => "reply",
            Kind::ReplyAll => "reply_all",
            Kind::Forward => "forward",
            Kind::Send => "send",
        }
    }
}

/// A recipient: `"a@b.c"` or `{"name", "address"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecipientInput {
    /// Just the address.
    Address(String),
    /// Name and address.
    Full {
        /// Display name.
        #[serde(default)]
        name: String,
        /// Address.
        address: String,
    },
}

/// A normalized recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Display name (may be empty).
    pub name: String,
    /// Address.
    pub address: String,
}

/// `{"content_type": "text"|"html", "content"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// `text` or `html`.
    pub content_type: String,
    /// The body.
    pub content: String,
}

/// An attachment as routing sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    /// File name.
    pub name: String,
    /// MIME type.
    #[serde(default = "octet_stream")]
    pub content_type: String,
    /// Content, base64.
    pub content_base64: String,
    /// Inline in the HTML body.
    #[serde(default)]
    pub is_inline: bool,
    /// Content-ID for inline parts.
    #[serde(default)]
    pub content_id: Option<String>,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

/// The body of `POST …/reply` and `…/forward` and `…/send`, as received.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiRequest {
    /// Short text Graph puts above the quoted original (reply, forward).
    #[serde(default)]
    pub comment: Option<String>,
    /// The whole body (instead of `comment`).
    #[serde(default)]
    pub body: Option<Body>,
    /// Reply to everyone (reply only).
    #[serde(default)]
    pub reply_all: bool,
    /// Subject (new mail).
    #[serde(default)]
    pub subject: Option<String>,
    /// Recipients (forward, new mail; overrides for replies).
    #[serde(default)]
    pub to: Vec<RecipientInput>,
    /// Cc.
    #[serde(default)]
    pub cc: Vec<RecipientInput>,
    /// Bcc.
    #[serde(default)]
    pub bcc: Vec<RecipientInput>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
}

/// A validated request, stored in the outbox and hashed for idempotency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRequest {
    /// What to do.
    pub kind: Kind,
    /// The original message (immutable id) for replies and forwards.
    pub original: Option<String>,
    /// Comment above the quoted original.
    pub comment: Option<String>,
    /// Whole body.
    pub body: Option<Body>,
    /// Subject (new mail).
    pub subject: Option<String>,
    /// To.
    pub to: Vec<Recipient>,
    /// Cc.
    pub cc: Vec<Recipient>,
    /// Bcc.
    pub bcc: Vec<Recipient>,
    /// Attachments (base64 checked).
    pub attachments: Vec<AttachmentInput>,
}

/// A refused request: HTTP status, error code and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// 400 or 413.
    pub status: u16,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human message naming the field.
    pub message: String,
}

fn bad(message: impl Into<String>) -> Invalid {
    Invalid {
        status: 400,
        code: "invalid_request",
        message: message.into(),
    }
}

fn recipients(list: &[RecipientInput], field: &str) -> Result<Vec<Recipient>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let (name, address) = match r {
                RecipientInput::Address(a) => (String::new(), a.clone()),
                RecipientInput::Full { name, address } => (name.clone(), address.clone()),
            };
            MailboxAddress::parse(&address).map_err(|e| bad(format!("{field}[{i}]: {e}")))?;
            Ok(Recipient {
                name,
                address: address.trim().to_string(),
            })
        })
        .collect()
}

impl ApiRequest {
    /// Validates for `kind`; `original` is the Graph id for replies and forwards.
    pub fn validate(self, kind: Kind, original: Option<String>) -> Result<OutboundRequest, Invalid> {
        if self.comment.is_some() && self.body.is_some() {
            return Err(bad(
                "comment and body cannot both be given: comment is placed above the quoted original, body replaces the whole body",
            ));
        }
        if let Some(b) = &self.body
            && !matches!(b.content_type.as_str(), "text" | "html")
        {
            return Err(bad(format!(
                "body.content_type must be \"text\" or \"html\", not \"{}\"",
                b.content_type
            )));
        }
        if self.reply_all && kind != Kind::Reply && kind != Kind::ReplyAll {
            return Err(bad("reply_all applies only to replies"));
        }
        let kind = if kind == Kind::Reply && self.reply_all {
            Kind::ReplyAll
        } else {
            kind
        };
        let (to, cc, bcc) = (
            recipients(&self.to, "to")?,
            recipients(&self.cc, "cc")?,
            recipients(&self.bcc, "bcc")?,
        );
        match kind {
            Kind::Forward if to.is_empty() && cc.is_empty() && bcc.is_empty() => {
                return Err(bad("to: a forward needs at least one recipient"));
            }
            Kind::Send if to.is_empty() && cc.is_empty() && bcc.is_empty() => {
                return Err(bad("to: a new message needs at least one recipient"));
            }
            Kind::Send if self.body.is_none() => return Err(bad("body: a new message needs a body")),
            Kind::Send if self.comment.is_some() => {
                return Err(bad("comment applies only to replies and forwards; use body"));
            }
            Kind::Reply | Kind::ReplyAll if self.comment.is_none() && self.body.is_none() => {
                return Err(bad("a reply needs comment or body"));
            }
            _ => {}
        }
        if kind != Kind::Send && self.subject.is_some() {
            return Err(bad(
                "subject applies only to new messages (replies and forwards take the original's)",
            ));
        }
        let mut total = 0usize;
        for (i, a) in self.attachments.iter().enumerate() {
            if a.name.trim().is_empty() {
                return Err(bad(format!("attachments[{i}].name must not be empty")));
            }
            total += decoded_len(&a.content_base64)
                .map_err(|e| bad(format!("attachments[{i}].content_base64 is not valid base64: {e}")))?;
        }
        if total > MAX_ATTACHMENTS_BYTES {
            return Err(Invalid {
                status: 413,
                code: "attachments_too_large",
                message: format!(
                    "attachments total {total} bytes; Graph allows at most {MAX_ATTACHMENTS_BYTES} per message"
                ),
            });
        }
        Ok(OutboundRequest {
            kind,
            original,
            comment: self.comment,
            body: self.body,
            subject: self.subject,
            to,
            cc,
            bcc,
            attachments: self.attachments,
        })
    }
}

/// The size `encoded` decodes to, checked piece by piece so that a 150 MB attachment is not
/// decoded into a second copy just to be measured.
pub fn decoded_len(encoded: &str) -> Result<usize, base64::DecodeError> {
    /// Characters per piece: a multiple of 4, so only the last piece may carry padding.
    const PIECE: usize = 64 * 1024;
    let encoded = encoded.trim().as_bytes();
    let mut buffer = vec![0u8; PIECE / 4 * 3];
    let mut total = 0;
    for piece in encoded.chunks(PIECE) {
        total += STANDARD.decode_slice(piece, &mut buffer).map_err(|e| match e {
            base64::DecodeSliceError::DecodeError(e) => e,
            base64::DecodeSliceError::OutputSliceTooSmall => base64::DecodeError::InvalidLength(piece.len()),
        })?;
    }
    Ok(total)
}

impl OutboundRequest {
    /// SHA-256 (hex) of the request and its mailbox: the same key with another request is a conflict.
    /// The JSON is fed to the digest as it is written, never held whole (it carries the attachments).
    pub fn hash(&self, mailbox: &MailboxAddress) -> String {
        let mut digest = Digest(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
        // Writing into a digest cannot fail, and these types always serialize.
        let _ = serde_json::to_writer(&mut digest, &(mailbox.as_str(), self));
        digest.0.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A SHA-256 that serde writes into.
struct Digest(aws_lc_rs::digest::Context);

impl std::io::Write for Digest {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An attachment as the sender reads it back from the outbox: the content is borrowed from
/// the stored text (base64 has nothing to unescape), so sending does not copy it.
#[derive(Debug, Deserialize)]
pub struct StoredAttachment<'a> {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Content, base64 (checked when the request was accepted).
    #[serde(borrow)]
    pub content_base64: Cow<'a, str>,
    /// Inline in the HTML body.
    pub is_inline: bool,
    /// Content-ID for inline parts.
    pub content_id: Option<String>,
}

/// A stored [`OutboundRequest`] as the sender reads it: the same fields, the attachments'
/// content borrowed from the stored text.
#[derive(Debug, Deserialize)]
pub struct StoredRequest<'a> {
    /// What to do.
    pub kind: Kind,
    /// The original message (immutable id) for replies and forwards.
    pub original: Option<String>,
    /// Comment above the quoted original.
    pub comment: Option<String>,
    /// Whole body.
    pub body: Option<Body>,
    /// Subject (new mail).
    pub subject: Option<String>,
    /// To.
    pub to: Vec<Recipient>,
    /// Cc.
    pub cc: Vec<Recipient>,
    /// Bcc.
    pub bcc: Vec<Recipient>,
    /// Attachments.
    #[serde(borrow)]
    pub attachments: Vec<StoredAttachment<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ApiRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn comment_and_body_together_are_refused() {
        let err = req(r#"{"comment":"a","body":{"content_type":"text","content":"b"}}"#)
            .validate(Kind::Reply, Some("x".into()));
        assert!(err.unwrap_err().message.contains("comment and body"));
    }

    #[test]
    fn bad_base64_and_recipients_name_the_field() {
        let err = req(r#"{"comment":"a","attachments":[{"name":"f","content_base64":"***"}]}"#)
            .validate(Kind::Reply, Some("x".into()))
            .unwrap_err();
        assert!(
            err.message.starts_with("attachments[0].content_base64"),
            "{}",
            err.message
        );
        let err = req(r#"{"to":["ok@x.test","broken"],"body":{"content_type":"text","content":"b"}}"#)
            .validate(Kind::Send, None)
            .unwrap_err();
        assert!(err.message.starts_with("to[1]"), "{}", err.message);
    }

    #[test]
    fn same_request_same_hash_other_request_other_hash() {
        let mb = MailboxAddress::parse("a@b.test").unwrap();
        let a = req(r#"{"comment":"hi"}"#)
            .validate(Kind::Reply, Some("m1".into()))
            .unwrap();
        let b = req(r#"{"comment":"hi"}"#)
            .validate(Kind::Reply, Some("m1".into()))
            .unwrap();
        let c = req(r#"{"comment":"hello"}"#)
            .validate(Kind::Reply, Some("m1".into()))
            .unwrap();
        assert_eq!(a.hash(&mb), b.hash(&mb));
        assert_ne!(a.hash(&mb), c.hash(&mb));
    }

    #[test]
    fn decoded_len_matches_decoding_across_pieces() {
        for len in [0usize, 1, 2, 3, 49_151, 49_152, 49_153, 200_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let encoded = STANDARD.encode(&bytes);
            assert_eq!(decoded_len(&encoded).unwrap(), len, "{len} bytes");
        }
        let mut broken = STANDARD.encode(vec![1u8; 100_000]);
        broken.replace_range(70_000..70_001, "*");
        assert!(decoded_len(&broken).is_err());
        assert!(decoded_len("QQ==QQ==").is_err(), "padding only at the end");
    }

    #[test]
    fn the_hash_is_that_of_the_serialized_request() {
        let mb = MailboxAddress::parse("a@b.test").unwrap();
        let r = req(r#"{"comment":"hi \"you\"","attachments":[{"name":"f","content_base64":"QUJD"}]}"#)
            .validate(Kind::Reply, Some("m1".into()))
            .unwrap();
        let whole = serde_json::to_vec(&(mb.as_str(), &r)).unwrap();
        let expected: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &whole)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // Hashes stored before the digest was streamed still match.
        assert_eq!(r.hash(&mb), expected);
    }

    #[test]
    fn a_stored_request_reads_back_with_its_content_borrowed() {
        let r = req(
            r#"{"comment":"hi","to":["x@y.test"],"attachments":[{"name":"a \"b\".txt","content_base64":"QUJD","content_id":"c1","is_inline":true}]}"#,
        )
        .validate(Kind::Reply, Some("m1".into()))
        .unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let stored: StoredRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (stored.kind, stored.original.as_deref(), stored.comment.as_deref()),
            (Kind::Reply, Some("m1"), Some("hi"))
        );
        assert_eq!(stored.to, r.to);
        let a = &stored.attachments[0];
        assert!(matches!(a.content_base64, Cow::Borrowed("QUJD")), "{a:?}");
        assert_eq!(
            (a.name.as_str(), a.content_id.as_deref(), a.is_inline),
            ("a \"b\".txt", Some("c1"), true)
        );
    }

    #[test]
    fn reply_all_flag_makes_a_reply_all() {
        let r = req(r#"{"comment":"hi","reply_all":true}"#)
            .validate(Kind::Reply, Some("m".into()))
            .unwrap();
        assert_eq!(r.kind, Kind::ReplyAll);
    }
}
