//! Messages and what they are made of: recipients, bodies, attachments, threading.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

use super::util::{item_id, key};

/// A name + address pair.
#[derive(Clone, Debug, Deserialize, Default, PartialEq, Eq)]
pub(crate) struct Recipient {
    /// Display name.
    #[serde(default)]
    pub(crate) name: String,
    /// SMTP address.
    pub(crate) address: String,
}

/// `text` or `html`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyType {
    /// Plain text.
    Text,
    /// HTML.
    Html,
}

impl BodyType {
    /// Graph's spelling, case-insensitive.
    pub(crate) fn parse(s: &str) -> Option<BodyType> {
        match key(s).as_str() {
            "text" => Some(BodyType::Text),
            "html" => Some(BodyType::Html),
            _ => None,
        }
    }

    /// Graph's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BodyType::Text => "text",
            BodyType::Html => "html",
        }
    }
}

/// A file attachment.
#[derive(Clone)]
pub(crate) struct Attachment {
    /// Attachment id.
    pub(crate) id: String,
    /// File name.
    pub(crate) name: String,
    /// MIME type.
    pub(crate) content_type: String,
    /// Content (shared: copies of a sent message share the bytes).
    pub(crate) bytes: Arc<Vec<u8>>,
    /// Shown in the body rather than as a file.
    pub(crate) is_inline: bool,
    /// `cid:` reference for inline attachments.
    pub(crate) content_id: Option<String>,
    /// Last change.
    pub(crate) modified: OffsetDateTime,
}

/// A message in a mailbox.
#[derive(Clone)]
pub(crate) struct Message {
    /// Stays the same across moves (`Prefer: IdType="ImmutableId"`).
    pub(crate) immutable_id: String,
    /// Regular id: changes when the message moves.
    pub(crate) id: String,
    /// Folder it is in.
    pub(crate) folder_id: String,
    /// Change sequence of the last change (delta order).
    pub(crate) seq: u64,
    /// Sequence at which it entered its folder (created vs updated).
    pub(crate) entered_seq: u64,
    /// Version tag (`changeKey`, `@odata.etag`).
    pub(crate) change_key: String,
    /// Creation time.
    pub(crate) created: OffsetDateTime,
    /// Last modification time.
    pub(crate) modified: OffsetDateTime,
    /// When it arrived.
    pub(crate) received: OffsetDateTime,
    /// When it was sent (None for drafts).
    pub(crate) sent: Option<OffsetDateTime>,
    /// Subject.
    pub(crate) subject: String,
    /// Body as stored.
    pub(crate) body_type: BodyType,
    /// Body content as stored.
    pub(crate) body: String,
    /// From.
    pub(crate) from: Option<Recipient>,
    /// To.
    pub(crate) to: Vec<Recipient>,
    /// Cc.
    pub(crate) cc: Vec<Recipient>,
    /// Bcc.
    pub(crate) bcc: Vec<Recipient>,
    /// Reply-To.
    pub(crate) reply_to: Vec<Recipient>,
    /// RFC 5322 Message-ID, with angle brackets.
    pub(crate) internet_message_id: String,
    /// In-Reply-To.
    pub(crate) in_reply_to: Option<String>,
    /// References, oldest first.
    pub(crate) references: Vec<String>,
    /// Other internet headers (custom `x-` ones from senders).
    pub(crate) extra_headers: Vec<(String, String)>,
    /// Thread id shared by every copy of the conversation.
    pub(crate) conversation_id: String,
    /// Read flag.
    pub(crate) is_read: bool,
    /// Draft flag.
    pub(crate) is_draft: bool,
    /// Categories.
    pub(crate) categories: Vec<String>,
    /// `low`, `normal`, `high`.
    pub(crate) importance: String,
    /// Attachments.
    pub(crate) attachments: Vec<Attachment>,
    /// singleValueExtendedProperties: (id, value).
    pub(crate) extended: Vec<(String, String)>,
    /// Graph property name → change sequence of its last change (for partial delta items).
    pub(crate) changed: Vec<(&'static str, u64)>,
    /// Every JSON rendering of the message is broken this way (a test aid).
    pub(crate) malformed: Option<Malformed>,
}

/// How the JSON renderings of a message are broken on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Malformed {
    /// Subject and body carry the escape `\ud800`, a lone surrogate strict parsers reject.
    LoneSurrogate,
    /// The answer stops in the middle of the subject string.
    Truncated,
}

impl Message {
    /// A fresh message with generated ids, not yet stored.
    pub(crate) fn new(folder_id: &str, now: OffsetDateTime, domain: &str) -> Message {
        let imid = format!("<{}@{}>", super::util::opaque(12), domain);
        Message {
            immutable_id: item_id("AAkALg"),
            id: item_id("AAMkAD"),
            folder_id: folder_id.to_string(),
            seq: 0,
            entered_seq: 0,
            change_key: item_id("CQAAAB"),
            created: now,
            modified: now,
            received: now,
            sent: Some(now),
            subject: String::new(),
            body_type: BodyType::Html,
            body: String::new(),
            from: None,
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: Vec::new(),
            conversation_id: conversation_id_for(&imid),
            internet_message_id: imid,
            in_reply_to: None,
            references: Vec::new(),
            extra_headers: Vec::new(),
            is_read: false,
            is_draft: false,
            categories: Vec::new(),
            importance: "normal".into(),
            attachments: Vec::new(),
            extended: Vec::new(),
            changed: Vec::new(),
            malformed: None,
        }
    }

    /// Records that these Graph properties changed at change sequence `seq`.
    pub(crate) fn record_change(&mut self, properties: &[&'static str], seq: u64) {
        for p in properties {
            match self.changed.iter_mut().find(|(name, _)| name == p) {
                Some(entry) => entry.1 = seq,
                None => self.changed.push((p, seq)),
            }
        }
    }

    /// True when this property changed after change sequence `since`.
    pub(crate) fn changed_since(&self, property: &str, since: u64) -> bool {
        self.changed.iter().any(|(name, seq)| *name == property && *seq > since)
    }

    /// Re-derives the thread id from the threading headers (root of References).
    pub(crate) fn rethread(&mut self) {
        let root = self.references.first().cloned().or_else(|| self.in_reply_to.clone());
        self.conversation_id = conversation_id_for(root.as_deref().unwrap_or(&self.internet_message_id));
    }

    /// True when some attachment is not inline (Graph's `hasAttachments`).
    pub(crate) fn has_attachments(&self) -> bool {
        self.attachments.iter().any(|a| !a.is_inline)
    }
}

/// A conversation id derived from the thread's root Message-ID, so every copy of the
/// thread in every emulated mailbox agrees.
pub(crate) fn conversation_id_for(root_message_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, root_message_id.as_bytes());
    format!("AAQkAD{}", super::util::b64url(&digest.as_ref()[..24]))
}
