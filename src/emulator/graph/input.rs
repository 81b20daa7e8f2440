//! Reads the message JSON clients send (create, PATCH, sendMail, reply overrides).

use std::sync::Arc;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::GraphError;
use crate::emulator::model::{Attachment, BodyType, Message, Recipient};
use crate::emulator::util::{item_id, unb64};

/// Properties a client may write on a message; anything else is refused like Graph does.
const WRITABLE: &[&str] = &[
    "subject",
    "body",
    "torecipients",
    "ccrecipients",
    "bccrecipients",
    "replyto",
    "from",
    "sender",
    "importance",
    "categories",
    "isread",
    "internetmessageheaders",
    "internetmessageid",
    "singlevalueextendedproperties",
    "attachments",
    "flag",
    "inferenceclassification",
    "isdeliveryreceiptrequested",
    "isreadreceiptrequested",
    "@odata.type",
];
/// Properties only a draft may change.
const DRAFT_ONLY: &[&str] = &[
    "subject",
    "body",
    "torecipients",
    "ccrecipients",
    "bccrecipients",
    "replyto",
    "from",
    "sender",
    "internetmessageid",
    "internetmessageheaders",
];
/// Largest attachment that may be sent inline in a request (bigger ones need an upload session).
pub(crate) const INLINE_ATTACHMENT_MAX: usize = 3 * 1024 * 1024;

/// Parses a JSON body into an object.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GraphError::bad_body("The request body must be a JSON object.")),
        Err(e) => Err(GraphError::bad_body(format!("Invalid JSON in the request body: {e}"))),
    }
}

/// Reads `[{"emailAddress":{"name","address"}}]`.
pub(crate) fn recipients(v: &Value, field: &str) -> Result<Vec<Recipient>, GraphError> {
    let Some(items) = v.as_array() else {
        return Err(GraphError::bad_body(format!(
            "'{field}' must be an array of recipients."
        )));
    };
    items
        .iter()
        .map(|item| {
            let address = item["emailAddress"]["address"].as_str().unwrap_or_default().trim();
            if !address.contains('@') || address.starts_with('@') || address.ends_with('@') {
                return Err(GraphError::bad_request(
                    "ErrorInvalidRecipients",
                    format!("At least one recipient is not valid., Recipient '{address}' is not resolved. All recipients must be resolved before a message can be submitted."),
                ));
            }
            Ok(Recipient { name: item["emailAddress"]["name"].as_str().unwrap_or_default().to_string(), address: address.to_string() })
        })
        .collect()
}

/// Reads `{"contentType","content"}`.
pub(crate) fn body(v: &Value) -> Result<(BodyType, String), GraphError> {
    let content_type = v["contentType"].as_str().unwrap_or("text");
    let kind = BodyType::parse(content_type)
        .ok_or_else(|| GraphError::bad_body(format!("Body contentType '{content_type}' is not text or html.")))?;
    Ok((kind, v["content"].as_str().unwrap_or_default().to_string()))
}

/// Reads a `#microsoft.graph.fileAttachment`.
pub(crate) fn file_attachment(v: &Value, now: OffsetDateTime) -> Result<Attachment, GraphError> {
    let kind = v["@odata.type"].as_str().unwrap_or_default();
    if !kind.eq_ignore_ascii_case("#microsoft.graph.fileAttachment") {
        return Err(GraphError::bad_body(format!(
            "Attachment @odata.type '{kind}' is not supported; use #microsoft.graph.fileAttachment."
        )));
    }
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| GraphError::bad_body("An attachment needs a name."))?;
    let bytes = unb64(v["contentBytes"].as_str().unwrap_or_default())
        .ok_or_else(|| GraphError::bad_request("ErrorInvalidRequest", "contentBytes is not valid base64."))?;
    if bytes.len() > INLINE_ATTACHMENT_MAX {
        return Err(GraphError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The attachment is larger than 3 MB; use an upload session.",
        ));
    }
    Ok(Attachment {
        id: item_id("AAMkADAtt"),
        name: name.to_string(),
        content_type: v["contentType"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_string(),
        bytes: Arc::new(bytes),
        is_inline: v["isInline"].as_bool().unwrap_or(false),
        content_id: v["contentId"].as_str().map(str::to_string),
        modified: now,
    })
}

/// Applies client-written properties to a message; draft-only ones are refused on sent mail.
pub(crate) fn apply(m: &mut Message, props: &Map<String, Value>, now: OffsetDateTime) -> Result<(), GraphError> {
    for (key, value) in props {
        let k = key.to_ascii_lowercase();
        if !WRITABLE.contains(&k.as_str()) {
            return Err(GraphError::bad_body(format!(
                "The property '{key}' does not exist on type 'microsoft.graph.message'. Make sure to only use property names that are defined by the type or mark the type as open type."
            )));
        }
        if !m.is_draft && DRAFT_ONLY.contains(&k.as_str()) {
            return Err(GraphError::bad_request(
                "ErrorInvalidPropertyUpdateSentMessage",
                "Update operation is not supported for this property on a sent message.",
            ));
        }
        match k.as_str() {
            "subject" => m.subject = value.as_str().unwrap_or_default().to_string(),
            "body" => (m.body_type, m.body) = body(value)?,
            "torecipients" => m.to = recipients(value, key)?,
            "ccrecipients" => m.cc = recipients(value, key)?,
            "bccrecipients" => m.bcc = recipients(value, key)?,
            "replyto" => m.reply_to = recipients(value, key)?,
            "from" | "sender" => m.from = recipients(&Value::Array(vec![value.clone()]), key)?.into_iter().next(),
            "importance" => m.importance = value.as_str().unwrap_or("normal").to_ascii_lowercase(),
            "categories" => {
                m.categories = value
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            }
            "isread" => {
                m.is_read = value
                    .as_bool()
                    .ok_or_else(|| GraphError::bad_body("isRead must be a boolean."))?
            }
            "internetmessageid" => m.internet_message_id = value.as_str().unwrap_or_default().to_string(),
            "internetmessageheaders" => m.extra_headers = headers(value)?,
            "singlevalueextendedproperties" => {
                for p in value.as_array().into_iter().flatten() {
                    let (Some(id), Some(v)) = (p["id"].as_str(), p["value"].as_str()) else {
                        return Err(GraphError::bad_body(
                            "singleValueExtendedProperties entries need 'id' and 'value'.",
                        ));
                    };
                    m.extended.retain(|(existing, _)| !existing.eq_ignore_ascii_case(id));
                    m.extended.push((id.to_string(), v.to_string()));
                }
            }
            "attachments" => {
                for a in value.as_array().into_iter().flatten() {
                    m.attachments.push(file_attachment(a, now)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The Graph properties of the rendered message that a write of `props` changes.
pub(crate) fn changed_properties(props: &Map<String, Value>) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for key in props.keys() {
        let names: &[&'static str] = match key.to_ascii_lowercase().as_str() {
            "subject" => &["subject"],
            "body" => &["body", "bodyPreview", "uniqueBody"],
            "torecipients" => &["toRecipients"],
            "ccrecipients" => &["ccRecipients"],
            "bccrecipients" => &["bccRecipients"],
            "replyto" => &["replyTo"],
            "from" | "sender" => &["from", "sender"],
            "importance" => &["importance"],
            "categories" => &["categories"],
            "isread" => &["isRead"],
            "internetmessageheaders" => &["internetMessageHeaders"],
            "internetmessageid" => &["internetMessageId"],
            "attachments" => &["hasAttachments"],
            "flag" => &["flag"],
            "inferenceclassification" => &["inferenceClassification"],
            "isdeliveryreceiptrequested" => &["isDeliveryReceiptRequested"],
            "isreadreceiptrequested" => &["isReadReceiptRequested"],
            _ => &[],
        };
        for n in names {
            if !out.contains(n) {
                out.push(n);
            }
        }
    }
    out
}

/// Custom internet headers: names must start with `x-`.
fn headers(v: &Value) -> Result<Vec<(String, String)>, GraphError> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let name = h["name"].as_str().unwrap_or_default();
            if !name.to_ascii_lowercase().starts_with("x-") {
                return Err(GraphError::bad_request(
                    "InvalidInternetMessageHeader",
                    format!("The internet message header name '{name}' should start with 'x-' or 'X-'."),
                ));
            }
            Ok((name.to_string(), h["value"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// `(id, value)` pairs asked for by `singleValueExtendedProperties/Any(ep: ep/id eq '…' and ep/value eq '…')`.
pub(crate) fn extended_filter(filter: &str) -> Option<(String, Option<String>)> {
    let lower = filter.to_ascii_lowercase();
    if !lower.contains("singlevalueextendedproperties/any(") {
        return None;
    }
    let quoted_after = |marker: &str| -> Option<String> {
        let start = lower.find(marker)? + marker.len();
        let rest = &filter[start..];
        let rest = rest.trim_start().strip_prefix('\'')?;
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    };
    Some((quoted_after("/id eq")?, quoted_after("/value eq")))
}
