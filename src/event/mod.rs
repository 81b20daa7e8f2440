//! The events delivered to routing: `inboxd.message.v1` for each email, plus
//! `inboxd.outbound.v1` and `inboxd.mailbox_state.v1`. Their field names are a public contract.

use serde::{Deserialize, Serialize};

mod encode;

/// What every event handed to a sink has: an id per delivery attempt, a key stable across
/// re-deliveries, and the mailbox it is about (for logs).
pub trait SinkEvent: Serialize + Send + Sync {
    /// `event_id`.
    fn event_id(&self) -> &str;
    /// `dedup_key`.
    fn dedup_key(&self) -> &str;
    /// The mailbox, for log lines and broker subjects.
    fn mailbox(&self) -> &str;
    /// `schema`: which kind of event (brokers route each kind to its own subject).
    fn schema(&self) -> &str;
    /// The event as JSON, as every sink sends it.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Every event type has the same four fields the sinks need; `=> f` names a faster encoder
/// than serde's for a type (it must write the same bytes).
macro_rules! sink_event {
    ($($t:ty $(=> $json:path)?),*) => {
        $(impl SinkEvent for $t {
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn dedup_key(&self) -> &str {
                &self.dedup_key
            }
            fn mailbox(&self) -> &str {
                &self.mailbox
            }
            fn schema(&self) -> &str {
                &self.schema
            }
            $(fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
                Ok($json(self))
            })?
        })*
    };
}

sink_event!(MessageEvent => encode::message, OutboundEvent, MailboxStateEvent);

/// Schema name of [`OutboundEvent`].
pub const OUTBOUND_SCHEMA: &str = "inboxd.outbound.v1";

/// The result of an outbound request (`sent` or `failed`), so routing learns it without polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundEvent {
    /// Always `inboxd.outbound.v1`.
    pub schema: String,
    /// Unique per delivery attempt.
    pub event_id: String,
    /// `outbound:{id}:{status}`: stable across re-deliveries.
    pub dedup_key: String,
    /// The outbound id the API answered with.
    pub outbound_id: String,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: String,
    /// Sending mailbox.
    pub mailbox: String,
    /// `reply`, `reply_all`, `forward` or `send`.
    pub kind: String,
    /// `sent` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// Schema name of [`MailboxStateEvent`].
pub const MAILBOX_STATE_SCHEMA: &str = "inboxd.mailbox_state.v1";

/// A mailbox changed state: routing or alerting can react (e.g. page someone on `needs_reconsent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxStateEvent {
    /// Always `inboxd.mailbox_state.v1`.
    pub schema: String,
    /// Unique per event.
    pub event_id: String,
    /// `state:{mailbox}:{state}:{since}`.
    pub dedup_key: String,
    /// The mailbox.
    pub mailbox: String,
    /// Previous state.
    pub from: String,
    /// New state.
    pub state: String,
    /// What happened and what to do.
    pub reason: Option<String>,
    /// AADSTS code, if any.
    pub aadsts: Option<u32>,
    /// Consent link for `needs_reconsent`.
    pub consent_url: Option<String>,
    /// When (RFC 3339).
    pub since: String,
}

/// Schema name of [`MessageEvent`].
pub const MESSAGE_SCHEMA: &str = "inboxd.message.v1";

/// One email, as routing receives it. Fields may be added within v1, never removed or renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEvent {
    /// Always `inboxd.message.v1`.
    pub schema: String,
    /// Unique per delivery attempt (UUID v4).
    pub event_id: String,
    /// Stable across re-deliveries of the same message: routing deduplicates on it.
    pub dedup_key: String,
    /// Mailbox address.
    pub mailbox: String,
    /// Folder the message was found in (config name, e.g. `inbox`).
    pub folder: String,
    /// Immutable Graph id.
    pub graph_id: String,
    /// RFC 5322 Message-ID.
    pub internet_message_id: String,
    /// Graph conversation id.
    pub conversation_id: String,
    /// In-Reply-To header.
    pub in_reply_to: Option<String>,
    /// References header, oldest first.
    pub references: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Sender.
    pub from: Option<EmailAddress>,
    /// To.
    pub to: Vec<EmailAddress>,
    /// Cc.
    pub cc: Vec<EmailAddress>,
    /// Reply-To.
    pub reply_to: Vec<EmailAddress>,
    /// When Exchange received it (RFC 3339).
    pub received_at: String,
    /// Text and HTML bodies.
    pub body: EventBody,
    /// Attachments: content inline up to the configured cap, metadata beyond it.
    pub attachments: Vec<EventAttachment>,
}

/// A name and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    /// Display name (may be empty).
    pub name: String,
    /// SMTP address.
    pub address: String,
}

/// Both renderings of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// Plain text.
    pub text: Option<String>,
    /// HTML.
    pub html: Option<String>,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAttachment {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Shown in the body (`cid:`).
    pub is_inline: bool,
    /// Content-ID for inline parts.
    pub content_id: Option<String>,
    /// SHA-256 of the content, hex (computed even when the content is not embedded).
    pub sha256: String,
    /// Content, base64; absent when over `max_inline_attachment_bytes`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_base64: Option<Base64Text>,
}

/// Base64 text, standard alphabet: nothing in it needs escaping in JSON, so the encoder copies
/// it as it is (attachment content is a third of a backlog's bytes). Made by decoding, which
/// checks it, or from a string whose every byte is of the alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Base64Text(String);

impl Base64Text {
    /// Decodes `text` (canonical standard base64, as Graph sends `contentBytes`), handing the
    /// bytes to `each` a piece at a time (see [`decode_pieces`]): the text kept as it is
    /// (decoding canonical base64 and encoding the bytes again gives the same text), and the
    /// number of bytes.
    pub fn decode(text: String, each: impl FnMut(&[u8])) -> Result<(Base64Text, u64), base64::DecodeSliceError> {
        let len = decode_pieces(&text, each)?;
        Ok((Base64Text(text), len))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decodes standard base64 a piece at a time, handing each piece of the bytes to `each`; the
/// number of bytes. An attachment is hashed this way without its bytes ever being held whole
/// (an attachment over the inline cap can be many megabytes).
pub fn decode_pieces(text: &str, mut each: impl FnMut(&[u8])) -> Result<u64, base64::DecodeSliceError> {
    use base64::Engine;
    // A multiple of four characters: only the last piece may end in padding.
    const PIECE: usize = 16 * 1024;
    let mut bytes = [0u8; PIECE / 4 * 3];
    let mut total = 0;
    let mut pieces = text.as_bytes().chunks(PIECE).peekable();
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_some() && piece.ends_with(b"=") {
            return Err(base64::DecodeError::InvalidPadding.into());
        }
        let n = base64::engine::general_purpose::STANDARD.decode_slice(piece, &mut bytes)?;
        each(&bytes[..n]);
        total += n as u64;
    }
    Ok(total)
}

impl TryFrom<String> for Base64Text {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
        {
            None => Ok(Base64Text(text)),
            Some(at) => Err(format!("content_base64 has a byte outside the base64 alphabet at {at}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::{Base64Text, decode_pieces};

    #[test]
    fn pieces_decode_to_the_whole_and_padding_only_ends_the_text() {
        // Around the piece boundary (16 KiB of text = 12 KiB of bytes) and far past it.
        for len in [
            0,
            1,
            2,
            3,
            12 * 1024 - 1,
            12 * 1024,
            12 * 1024 + 1,
            12 * 1024 + 2,
            100_000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut pieces = Vec::new();
            let (text, n) = Base64Text::decode(STANDARD.encode(&bytes), |p| pieces.extend_from_slice(p)).unwrap();
            assert_eq!((pieces, n), (bytes.clone(), len as u64), "{len} bytes");
            assert_eq!(text.as_str(), STANDARD.encode(&bytes));
        }
        // Padding at the end of a piece that is not the last is not base64.
        let padded_mid = format!("{}{}", "A".repeat(16 * 1024 - 4), "QQ==QUJD");
        assert!(STANDARD.decode(&padded_mid).is_err());
        assert!(decode_pieces(&padded_mid, |_| {}).is_err());
        assert!(decode_pieces("not base64!", |_| {}).is_err());
    }
}
