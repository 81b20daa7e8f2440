//! A message as inboxd reads it from Graph: the fields it uses, nothing else (unknown fields
//! are ignored). Only `id` is required: a delta item of an updated message carries just what
//! changed, and what it lacks is fetched before the message is converted.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::ShapeError;

/// `$select` of a message: everything its event needs, in one request.
pub const MESSAGE_SELECT: &str = "id,subject,from,toRecipients,ccRecipients,replyTo,receivedDateTime,internetMessageId,conversationId,body,hasAttachments,internetMessageHeaders,isDraft";

/// A message, whole or partial.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Graph's (immutable) id.
    pub id: String,
    /// Subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Sender.
    #[serde(default)]
    pub from: Option<Recipient>,
    /// To.
    #[serde(default)]
    pub to_recipients: Option<Vec<Recipient>>,
    /// Cc.
    #[serde(default)]
    pub cc_recipients: Option<Vec<Recipient>>,
    /// Reply-To.
    #[serde(default)]
    pub reply_to: Option<Vec<Recipient>>,
    /// When it was received (RFC 3339, as Graph wrote it).
    #[serde(default)]
    pub received_date_time: Option<String>,
    /// `Message-ID`.
    #[serde(default)]
    pub internet_message_id: Option<String>,
    /// Graph's conversation id.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Body.
    #[serde(default)]
    pub body: Option<ItemBody>,
    /// True when it has attachments (inline images are not always counted).
    #[serde(default)]
    pub has_attachments: Option<bool>,
    /// Its MIME headers, when they were selected.
    #[serde(default)]
    pub internet_message_headers: Option<Vec<Header>>,
    /// True for a draft.
    #[serde(default)]
    pub is_draft: Option<bool>,
    /// Present on a delta entry of a message that left the folder.
    #[serde(rename = "@removed", default)]
    pub removed: Option<IgnoredAny>,
}

impl Message {
    /// A message known by its id only (everything else is fetched).
    pub fn with_id(id: impl Into<String>) -> Message {
        Message {
            id: id.into(),
            ..Message::default()
        }
    }

    /// True when it lacks what the event needs (an updated item carries only what changed).
    pub fn is_partial(&self) -> bool {
        self.received_date_time.is_none() || self.body.is_none()
    }

    /// True for a draft (a partial item says nothing either way).
    pub fn is_draft(&self) -> bool {
        self.is_draft == Some(true)
    }

    /// The body's content, empty when there is none.
    pub fn body_content(&self) -> &str {
        self.body
            .as_ref()
            .and_then(|b| b.content.as_deref())
            .unwrap_or_default()
    }
}

/// A sender or recipient.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    /// Name and address.
    #[serde(default)]
    pub email_address: Option<Address>,
}

/// A name and an address.
#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// SMTP address.
    #[serde(default)]
    pub address: Option<String>,
}

/// A message body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    /// `html` or `text`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The content.
    #[serde(default)]
    pub content: Option<String>,
}

/// One MIME header.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// Its name, as the sender spelt it.
    #[serde(default)]
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
}

/// A file attachment: its metadata, and its content when it was asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Graph's id (absent on odd items: such an attachment is described, never fetched).
    #[serde(default)]
    pub id: Option<String>,
    /// File name.
    #[serde(default)]
    pub name: Option<String>,
    /// MIME type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Size in bytes as Graph reports it.
    #[serde(default)]
    pub size: Option<u64>,
    /// True for an inline part (an image the body shows).
    #[serde(default)]
    pub is_inline: Option<bool>,
    /// `Content-ID`, which `cid:` references in the body name.
    #[serde(default)]
    pub content_id: Option<String>,
    /// The content, base64.
    #[serde(default)]
    pub content_bytes: Option<String>,
}

/// One entry of a delta page. A page whose entries all read as messages is read in one pass
/// ([`super::DeltaPage`]); otherwise each entry is held as its JSON text and read on its own,
/// so a malformed entry spoils only itself.
#[derive(Debug)]
pub struct DeltaItem(Entry);

#[derive(Debug)]
enum Entry {
    /// Read with the whole page.
    Read(Box<Message>),
    /// Held as text, read by [`DeltaItem::read`].
    Text(Box<RawValue>),
}

impl DeltaItem {
    /// An entry already read as a message.
    pub(super) fn read_with_page(message: Box<Message>) -> DeltaItem {
        DeltaItem(Entry::Read(message))
    }

    /// An entry held as text.
    pub(super) fn text(text: Box<RawValue>) -> DeltaItem {
        DeltaItem(Entry::Text(text))
    }

    /// True when the entry was read with its page.
    #[cfg(test)]
    pub(super) fn was_read_with_page(&self) -> bool {
        matches!(self.0, Entry::Read(_))
    }
}

/// What a delta entry says.
#[derive(Debug)]
pub enum Change {
    /// The message left the folder (`@removed`).
    Removed,
    /// A new or changed message (possibly partial).
    Message(Box<Message>),
}

/// A delta entry that is not a message inboxd can read, and why.
#[derive(Debug)]
pub struct BadItem {
    /// Its id, when it has a readable one.
    pub id: Option<String>,
    /// What is wrong, naming the field when one is missing.
    pub error: ShapeError,
}

impl DeltaItem {
    /// Reads the entry straight from its JSON text (no intermediate tree: an entry carries
    /// the whole body).
    pub fn read(self) -> Result<Change, BadItem> {
        let text = match self.0 {
            Entry::Read(m) if m.removed.is_some() => return Ok(Change::Removed),
            Entry::Read(m) => return Ok(Change::Message(m)),
            Entry::Text(text) => text,
        };
        let text = text.get();
        match super::mailbox::shaped_text::<Message>("delta", text) {
            Ok(m) if m.removed.is_some() => Ok(Change::Removed),
            Ok(m) => Ok(Change::Message(Box::new(m))),
            Err(e) => {
                /// What an entry that is not a message may still say.
                #[derive(Deserialize)]
                struct Marks {
                    #[serde(rename = "@removed", default)]
                    removed: Option<IgnoredAny>,
                    #[serde(default)]
                    id: Option<Value>,
                }
                let marks = serde_json::from_str::<Marks>(text).ok();
                if marks.as_ref().is_some_and(|m| m.removed.is_some()) {
                    return Ok(Change::Removed);
                }
                Err(BadItem {
                    // Kept for the quarantine entry.
                    id: marks.and_then(|m| m.id?.as_str().map(str::to_string)),
                    error: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> DeltaItem {
        DeltaItem::text(RawValue::from_string(value.to_string()).unwrap())
    }

    #[test]
    fn items_are_read_one_by_one_and_a_bad_one_names_its_field() {
        let removed = item(json!({"id": "gone", "@removed": {"reason": "deleted"}}));
        assert!(matches!(removed.read(), Ok(Change::Removed)));
        let removed_without_id = item(json!({"@removed": {}}));
        assert!(matches!(removed_without_id.read(), Ok(Change::Removed)));

        let partial = item(json!({"id": "p1", "isRead": true, "unknown": [1, 2]}));
        let Ok(Change::Message(m)) = partial.read() else {
            panic!("a partial item is a message")
        };
        assert!(m.is_partial());
        assert_eq!(m.id, "p1");

        let no_id = item(json!({"subject": "hi"}));
        let Err(bad) = no_id.read() else {
            panic!("an item without id")
        };
        assert_eq!(bad.id, None);
        assert!(bad.error.to_string().contains("`id`"), "{}", bad.error);

        let odd = item(json!({"id": "x1", "subject": 5}));
        let Err(bad) = odd.read() else {
            panic!("a subject that is a number")
        };
        assert_eq!(bad.id.as_deref(), Some("x1"), "quarantined with its id");
    }

    #[test]
    fn an_item_with_a_lone_surrogate_is_read_with_a_replacement_character() {
        let text = r#"{"id":"s1","subject":"bad \ud800 here"}"#;
        let item = DeltaItem::text(RawValue::from_string(text.to_string()).expect("a page holds it as text"));
        let Ok(Change::Message(m)) = item.read() else {
            panic!("the item is a message")
        };
        assert_eq!(m.subject.as_deref(), Some("bad \u{fffd} here"));
    }

    #[test]
    fn a_whole_message_reads_every_field_inboxd_uses() {
        let m: Message = serde_json::from_value(json!({
            "id": "AAkA1", "subject": "s", "receivedDateTime": "2026-01-02T03:04:05Z",
            "from": {"emailAddress": {"name": "Ann", "address": "ann@x.net"}},
            "toRecipients": [{"emailAddress": {"address": "b@x.net"}}], "ccRecipients": null,
            "body": {"contentType": "html", "content": "<p>x</p>"}, "hasAttachments": false,
            "internetMessageHeaders": [{"name": "References", "value": "<a@x>"}], "isDraft": false,
        }))
        .unwrap();
        assert!(!m.is_partial());
        assert!(!m.is_draft());
        assert_eq!(m.body_content(), "<p>x</p>");
        assert_eq!(m.cc_recipients.map(|c| c.len()), None);
        assert_eq!(m.internet_message_headers.unwrap()[0].value.as_deref(), Some("<a@x>"));
    }
}
