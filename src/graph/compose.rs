//! Sending mail: drafts, replies and forwards, the marker property that finds a draft again,
//! attachments and upload sessions, send, and the look-ups that confirm a send.
//!
//! Requests that create something (a draft, an attachment, an upload session) and `send` are
//! made once, never retried inside the call: after an unknown outcome the caller looks for
//! the marked item before it asks again.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::mailbox::MailboxGraph;
use super::{Call, CallError, segment};

/// The extended property that marks inboxd's drafts with the outbound id.
pub const MARKER_PROPERTY: &str = "String {8c6f3b1e-2d4a-4b7e-9f15-6a0c2e9d4b31} Name inboxd-outbound-id";

/// Immutable ids: the draft keeps its id while it moves (Drafts → Outbox → Sent Items copy).
const IMMUTABLE: &str = "IdType=\"ImmutableId\"";

/// A call that creates something: one try, the caller looks before trying again.
fn creating(call: Call) -> Call {
    Call { retry: false, ..call }
}

/// How a draft is made.
#[derive(Debug, Clone, Copy)]
pub enum DraftOf<'a> {
    /// New mail.
    New,
    /// `createReply` on this message.
    Reply(&'a str),
    /// `createReplyAll` on this message.
    ReplyAll(&'a str),
    /// `createForward` of this message.
    Forward(&'a str),
}

/// A recipient of a draft.
#[derive(Debug, Clone, Copy)]
pub struct Addressee<'a> {
    /// Display name (may be empty).
    pub name: &'a str,
    /// Address.
    pub address: &'a str,
}

/// A draft's body.
#[derive(Debug, Clone, Copy)]
pub struct DraftBody<'a> {
    /// `text` or `html`.
    pub content_type: &'a str,
    /// The body.
    pub content: &'a str,
}

/// What a new draft says. For replies and forwards, empty recipient lists are left out so
/// Graph fills them from the original.
#[derive(Debug, Clone, Default)]
pub struct DraftContent<'a> {
    /// Subject (new mail only; replies and forwards take the original's).
    pub subject: Option<&'a str>,
    /// Comment above the quoted original (replies and forwards).
    pub comment: Option<&'a str>,
    /// The whole body.
    pub body: Option<DraftBody<'a>>,
    /// To.
    pub to: Vec<Addressee<'a>>,
    /// Cc.
    pub cc: Vec<Addressee<'a>>,
    /// Bcc.
    pub bcc: Vec<Addressee<'a>>,
}

/// An attachment to add to a draft.
#[derive(Debug, Clone, Copy)]
pub struct NewAttachment<'a> {
    /// File name.
    pub name: &'a str,
    /// MIME type.
    pub content_type: &'a str,
    /// Inline in the HTML body.
    pub is_inline: bool,
    /// Content-ID for inline parts.
    pub content_id: Option<&'a str>,
}

/// A message as the send path reads it: a draft, or its copy in Sent Items.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkedMessage {
    /// Its (immutable) id.
    pub id: String,
    /// `internetMessageId` (a draft may not have one yet).
    #[serde(default)]
    pub internet_message_id: Option<String>,
    /// `conversationId`.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// `isDraft`, when it was asked for ([`MailboxGraph::outbound_message`]).
    #[serde(default)]
    pub is_draft: Option<bool>,
}

/// An attachment already on a draft.
#[derive(Debug, Clone, Deserialize)]
pub struct PresentAttachment {
    /// File name. Optional because Graph gives item attachments without one; such an
    /// attachment is never inboxd's, so it must not make the whole list unreadable.
    #[serde(default)]
    pub name: Option<String>,
    /// Size in bytes, as Graph counts it (some overhead over the content).
    #[serde(default)]
    pub size: Option<u64>,
}

/// An upload session for a large attachment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadSession {
    /// Where the chunks go (a pre-authorized URL: no bearer token is sent there).
    pub upload_url: String,
}

/// A message of the Inbox, as the non-delivery-report look-up reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxMessage {
    /// Subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Body (asked for as text).
    #[serde(default)]
    pub body: Option<MessageBody>,
    /// The message's internet headers.
    #[serde(default)]
    pub internet_message_headers: Vec<MessageHeader>,
}

/// A message body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageBody {
    /// The content.
    #[serde(default)]
    pub content: Option<String>,
}

/// One internet header.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    #[serde(default)]
    pub value: Option<String>,
}

/// A list answer: `{"value": [...]}`.
#[derive(Debug, Deserialize)]
struct List<T> {
    value: Vec<T>,
}

/// A message with its marker property expanded (absent when the message has none).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WithMarker {
    #[serde(default)]
    single_value_extended_properties: Vec<ExtendedProperty>,
}

/// A single-value extended property.
#[derive(Debug, Deserialize)]
struct ExtendedProperty {
    id: String,
    #[serde(default)]
    value: Option<String>,
}

/// `[{"id": MARKER_PROPERTY, "value": marker}]`.
fn marker_property(marker: &str) -> Value {
    json!([{"id": MARKER_PROPERTY, "value": marker}])
}

/// Graph's recipient list.
fn recipients(list: &[Addressee<'_>]) -> Value {
    list.iter()
        .map(|r| json!({"emailAddress": {"name": r.name, "address": r.address}}))
        .collect()
}

impl MailboxGraph<'_> {
    /// Path of one message.
    fn message_path(&self, id: &str) -> String {
        self.path(&format!("messages/{}", segment(id)))
    }

    /// Creates a draft carrying the marker `marker` (new mail, or `createReply`,
    /// `createReplyAll`, `createForward` of the original). Made once, never retried.
    pub async fn create_draft(
        &self,
        of: DraftOf<'_>,
        content: &DraftContent<'_>,
        marker: &str,
    ) -> Result<MarkedMessage, CallError> {
        let body = content
            .body
            .map(|b| json!({"contentType": b.content_type, "content": b.content}));
        let call = match of {
            DraftOf::New => {
                let mut message = json!({
                    "subject": content.subject.unwrap_or_default(),
                    "toRecipients": recipients(&content.to), "ccRecipients": recipients(&content.cc),
                    "bccRecipients": recipients(&content.bcc),
                    "singleValueExtendedProperties": marker_property(marker),
                });
                if let Some(b) = body {
                    message["body"] = b;
                }
                Call::post("create_draft", self.path("messages"), message)
            }
            DraftOf::Reply(original) | DraftOf::ReplyAll(original) | DraftOf::Forward(original) => {
                let action = match of {
                    DraftOf::Reply(_) => "createReply",
                    DraftOf::ReplyAll(_) => "createReplyAll",
                    _ => "createForward",
                };
                let mut message = json!({"singleValueExtendedProperties": marker_property(marker)});
                if let Some(b) = body {
                    message["body"] = b;
                }
                for (field, list) in [
                    ("toRecipients", &content.to),
                    ("ccRecipients", &content.cc),
                    ("bccRecipients", &content.bcc),
                ] {
                    if !list.is_empty() {
                        message[field] = recipients(list);
                    }
                }
                let mut payload = json!({"message": message});
                if let Some(c) = content.comment {
                    payload["comment"] = json!(c);
                }
                Call::post(
                    "create_draft",
                    format!("{}/{action}", self.message_path(original)),
                    payload,
                )
            }
        }
        .prefer(IMMUTABLE);
        self.typed(&creating(call)).await
    }

    /// The messages in `folder` marked with `marker` (at most 25).
    pub async fn find_marked(&self, folder: &str, marker: &str) -> Result<Vec<MarkedMessage>, CallError> {
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER_PROPERTY}' and ep/value eq '{}')",
            marker.replace('\'', "''")
        );
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("$filter", &filter)
            .append_pair("$select", "id,internetMessageId,conversationId")
            .append_pair("$top", "25")
            .finish();
        let call = Call::get(
            "find_outbound",
            self.path(&format!("mailFolders/{}/messages?{query}", segment(folder))),
        )
        .prefer(IMMUTABLE);
        Ok(self.typed::<List<MarkedMessage>>(&call).await?.value)
    }

    /// One message by id, with `isDraft`.
    pub async fn outbound_message(&self, id: &str) -> Result<MarkedMessage, CallError> {
        let call = Call::get(
            "get_outbound",
            format!(
                "{}?$select=id,internetMessageId,conversationId,isDraft",
                self.message_path(id)
            ),
        )
        .prefer(IMMUTABLE);
        self.typed(&call).await
    }

    /// True when the message carries the marker property with the value `marker`.
    pub async fn has_marker(&self, id: &str, marker: &str) -> Result<bool, CallError> {
        let expand = format!("singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY}')");
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("$select", "id")
            .append_pair("$expand", &expand)
            .finish();
        let call = Call::get("check_marker", format!("{}?{query}", self.message_path(id))).prefer(IMMUTABLE);
        let got: WithMarker = self.typed(&call).await?;
        Ok(got
            .single_value_extended_properties
            .iter()
            .any(|p| p.id.eq_ignore_ascii_case(MARKER_PROPERTY) && p.value.as_deref() == Some(marker)))
    }

    /// Sets the marker property on a message (`PATCH`: setting the same value again is
    /// harmless, so this one may be retried).
    pub async fn set_marker(&self, id: &str, marker: &str) -> Result<(), CallError> {
        let patch = Call {
            method: Method::PATCH,
            ..Call::post(
                "set_marker",
                self.message_path(id),
                json!({"singleValueExtendedProperties": marker_property(marker)}),
            )
            .prefer(IMMUTABLE)
        };
        self.raw(&patch).await.map(drop)
    }

    /// Deletes a message (soft: it goes to Deleted Items).
    pub async fn delete_message(&self, id: &str) -> Result<(), CallError> {
        let call = Call {
            method: Method::DELETE,
            ..Call::get("delete_draft", self.message_path(id)).prefer(IMMUTABLE)
        };
        self.raw(&call).await.map(drop)
    }

    /// The attachments already on a draft.
    pub async fn attachments(&self, draft: &str) -> Result<Vec<PresentAttachment>, CallError> {
        let call = Call::get(
            "list_attachments",
            format!("{}/attachments?$select=id,name,size", self.message_path(draft)),
        )
        .prefer(IMMUTABLE);
        Ok(self.typed::<List<PresentAttachment>>(&call).await?.value)
    }

    /// Adds a file attachment in one request (`content_base64` as Graph takes it). Made
    /// once, never retried.
    pub async fn add_attachment(
        &self,
        draft: &str,
        attachment: &NewAttachment<'_>,
        content_base64: &str,
    ) -> Result<(), CallError> {
        let mut body = json!({
            "@odata.type": "#microsoft.graph.fileAttachment", "name": attachment.name,
            "contentType": attachment.content_type, "contentBytes": content_base64, "isInline": attachment.is_inline,
        });
        if let Some(cid) = attachment.content_id {
            body["contentId"] = json!(cid);
        }
        let call = Call::post(
            "add_attachment",
            format!("{}/attachments", self.message_path(draft)),
            body,
        )
        .prefer(IMMUTABLE);
        self.raw(&creating(call)).await.map(drop)
    }

    /// Opens an upload session for an attachment of `size` bytes. Made once, never retried.
    /// The chunks are plain PUTs to [`UploadSession::upload_url`], not Graph calls.
    pub async fn create_upload_session(
        &self,
        draft: &str,
        attachment: &NewAttachment<'_>,
        size: usize,
    ) -> Result<UploadSession, CallError> {
        let mut item = json!({
            "attachmentType": "file", "name": attachment.name, "size": size,
            "contentType": attachment.content_type, "isInline": attachment.is_inline,
        });
        if let Some(cid) = attachment.content_id {
            item["contentId"] = json!(cid);
        }
        let call = Call::post(
            "upload_session",
            format!("{}/attachments/createUploadSession", self.message_path(draft)),
            json!({"AttachmentItem": item}),
        )
        .prefer(IMMUTABLE);
        self.typed(&creating(call)).await
    }

    /// Sends a draft. Not idempotent: made once, never retried inside the call.
    pub async fn send_draft(&self, draft: &str) -> Result<(), CallError> {
        let send = Call {
            body: None,
            retry: false,
            ..Call::post("send", format!("{}/send", self.message_path(draft)), Value::Null).prefer(IMMUTABLE)
        };
        self.raw(&send).await.map(drop)
    }

    /// The Inbox's messages of a conversation (at most 50), with their headers and text
    /// bodies: where a non-delivery report about a sent message lands.
    pub async fn inbox_conversation(&self, conversation_id: &str) -> Result<Vec<InboxMessage>, CallError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "$filter",
                &format!("conversationId eq '{}'", conversation_id.replace('\'', "''")),
            )
            .append_pair("$select", "id,subject,body,internetMessageHeaders")
            .append_pair("$top", "50")
            .finish();
        let call = Call::get("find_ndr", self.path(&format!("mailFolders/inbox/messages?{query}")))
            .prefer("outlook.body-content-type=\"text\"");
        Ok(self.typed::<List<InboxMessage>>(&call).await?.value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::graph::mailbox::shaped;

    #[test]
    fn a_marked_message_without_an_id_is_a_shape_error_naming_it() {
        let err = shaped::<List<MarkedMessage>>("find_outbound", json!({"value": [{"internetMessageId": "<a@x>"}]}))
            .unwrap_err();
        assert_eq!(err.operation, "find_outbound");
        assert!(err.detail.contains("missing field `id`"), "{}", err.detail);
        // No list at all is not "nothing found": the caller must not create a second draft.
        let err = shaped::<List<MarkedMessage>>("find_outbound", json!({"@odata.context": "x"})).unwrap_err();
        assert!(err.detail.contains("missing field `value`"), "{}", err.detail);
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_may_be_missing() {
        let found: List<MarkedMessage> = shaped(
            "find_outbound",
            json!({"@odata.context": "x", "value": [{"id": "m1", "conversationId": "c1", "@odata.etag": "e"}]}),
        )
        .unwrap();
        let m = &found.value[0];
        assert_eq!(
            (
                m.id.as_str(),
                m.conversation_id.as_deref(),
                m.internet_message_id.as_deref(),
                m.is_draft
            ),
            ("m1", Some("c1"), None, None)
        );
        let attachments: List<PresentAttachment> = shaped(
            "list_attachments",
            json!({"value": [{"id": "a1", "name": "f.pdf", "size": 10}, {"id": "a2", "size": 3}]}),
        )
        .unwrap();
        assert_eq!(attachments.value[1].name, None);
    }

    #[test]
    fn the_marker_is_read_from_the_expanded_property_only_when_its_value_matches() {
        let with: WithMarker = shaped(
            "check_marker",
            json!({"id": "m1", "singleValueExtendedProperties": [{"id": MARKER_PROPERTY.to_lowercase(), "value": "o1"}]}),
        )
        .unwrap();
        let p = &with.single_value_extended_properties[0];
        assert!(p.id.eq_ignore_ascii_case(MARKER_PROPERTY) && p.value.as_deref() == Some("o1"));
        // Graph leaves the expanded list out when the message has no such property.
        let without: WithMarker = shaped("check_marker", json!({"id": "m1"})).unwrap();
        assert!(without.single_value_extended_properties.is_empty());
        let err = shaped::<UploadSession>("upload_session", json!({"expirationDateTime": "x"})).unwrap_err();
        assert!(err.detail.contains("missing field `uploadUrl`"), "{}", err.detail);
    }
}
