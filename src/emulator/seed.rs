//! What the control API, scenarios and the load generator create: apps, mailboxes, mail.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

use super::keys::AppCertificate;
use super::model::{App, Attachment, BodyType, Malformed, Message, Recipient, Secret, World};
use super::util::{guid, item_id, key, parse_time, string_list, unb64};

/// `POST /_emulator/apps`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppSpec {
    /// Directory of the app.
    pub(crate) tenant_id: String,
    /// Application (client) id.
    pub(crate) client_id: String,
    /// Client secret.
    #[serde(default)]
    pub(crate) client_secret: Option<String>,
    /// Certificate (PEM) for client assertions.
    #[serde(default)]
    pub(crate) certificate_pem: Option<String>,
    /// Application permissions (`Mail.ReadWrite`, `Mail.Send`, …): a list or a
    /// space-separated string.
    #[serde(default, deserialize_with = "string_list")]
    pub(crate) roles: Vec<String>,
    /// Display name.
    #[serde(default)]
    pub(crate) display_name: Option<String>,
    /// Allowed redirect URIs (empty: any): a list or a space-separated string.
    #[serde(default, deserialize_with = "string_list")]
    pub(crate) redirect_uris: Vec<String>,
}

/// `POST /_emulator/mailboxes`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailboxSpec {
    /// Tenant of the user.
    pub(crate) tenant_id: String,
    /// SMTP address.
    pub(crate) address: String,
    /// Display name.
    #[serde(default)]
    pub(crate) display_name: Option<String>,
}

/// `{"content_type","content"}`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodySpec {
    /// `text` or `html`.
    pub(crate) content_type: String,
    /// The body.
    pub(crate) content: String,
}

/// `{"name","value"}`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderSpec {
    /// Header name.
    pub(crate) name: String,
    /// Header value.
    pub(crate) value: String,
}

/// An attachment of a delivered message.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachmentSpec {
    /// File name.
    pub(crate) name: String,
    /// MIME type.
    #[serde(default = "octet_stream")]
    pub(crate) content_type: String,
    /// Content, base64.
    pub(crate) content_base64: String,
    /// Inline in the body.
    #[serde(default)]
    pub(crate) is_inline: bool,
    /// `cid:` reference.
    #[serde(default)]
    pub(crate) content_id: Option<String>,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

/// `POST /_emulator/mailboxes/{address}/messages`: mail arriving from outside.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageSpec {
    /// Scenario files name the mailbox here; the control API takes it from the path.
    #[serde(default)]
    pub(crate) mailbox: Option<String>,
    /// Folder (default `inbox`).
    #[serde(default)]
    pub(crate) folder: Option<String>,
    /// Sender.
    pub(crate) from: Recipient,
    /// To.
    #[serde(default)]
    pub(crate) to: Vec<Recipient>,
    /// Cc.
    #[serde(default)]
    pub(crate) cc: Vec<Recipient>,
    /// Reply-To.
    #[serde(default)]
    pub(crate) reply_to: Vec<Recipient>,
    /// Subject.
    #[serde(default)]
    pub(crate) subject: String,
    /// Body.
    pub(crate) body: BodySpec,
    /// Internet headers; Message-ID, In-Reply-To and References set the threading.
    #[serde(default)]
    pub(crate) internet_message_headers: Vec<HeaderSpec>,
    /// Attachments.
    #[serde(default)]
    pub(crate) attachments: Vec<AttachmentSpec>,
    /// Arrival time (RFC 3339); default now.
    #[serde(default)]
    pub(crate) received_at: Option<String>,
    /// Already read.
    #[serde(default)]
    pub(crate) is_read: bool,
    /// Break every JSON rendering of this message (`lone_surrogate` or `truncated`).
    #[serde(default)]
    pub(crate) malformed: Option<Malformed>,
}

/// Registers (or replaces) an app.
pub(crate) fn register_app(world: &mut World, spec: AppSpec) -> Result<(), String> {
    if spec.tenant_id.trim().is_empty() || spec.client_id.trim().is_empty() {
        return Err("tenant_id and client_id are required".into());
    }
    let certificate = spec
        .certificate_pem
        .as_deref()
        .map(AppCertificate::from_pem)
        .transpose()?;
    world.add_domain(&spec.tenant_id, None);
    let client_id = key(&spec.client_id);
    world.apps.insert(
        client_id.clone(),
        App {
            tenant_id: key(&spec.tenant_id),
            display_name: spec.display_name.unwrap_or_else(|| format!("app {client_id}")),
            client_id,
            secrets: spec
                .client_secret
                .into_iter()
                .map(|value| Secret { value, expired: false })
                .collect(),
            certificate,
            roles: spec.roles,
            redirect_uris: spec.redirect_uris,
            object_id: guid(),
        },
    );
    Ok(())
}

/// Creates a mailbox; an existing address is an error.
pub(crate) fn create_mailbox(world: &mut World, spec: &MailboxSpec) -> Result<(String, String), String> {
    let address = spec.address.trim();
    if spec.tenant_id.trim().is_empty() {
        return Err("tenant_id is required".into());
    }
    if !address.contains('@') || address.starts_with('@') || address.ends_with('@') {
        return Err(format!("address '{address}' is not an email address"));
    }
    if world.mailboxes.contains_key(&key(address)) {
        return Err(format!("mailbox '{address}' already exists"));
    }
    let mailbox = world.create_mailbox(&spec.tenant_id, address, spec.display_name.as_deref());
    Ok((mailbox.id.clone(), mailbox.address.clone()))
}

/// Delivers a message into a mailbox folder; returns the stored message.
pub(crate) fn deliver(
    world: &mut World,
    address: &str,
    spec: MessageSpec,
    now: OffsetDateTime,
) -> Result<Message, String> {
    let address = key(address);
    let mailbox = world
        .mailboxes
        .get(&address)
        .ok_or_else(|| format!("no mailbox '{address}'"))?;
    let folder = spec.folder.as_deref().unwrap_or("inbox");
    let folder_id = mailbox
        .folder_id(folder)
        .ok_or_else(|| format!("mailbox '{address}' has no folder '{folder}'"))?;
    let sender_domain = spec
        .from
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| "example.net".into());
    let mut m = Message::new(&folder_id, now, &sender_domain);
    m.body_type = BodyType::parse(&spec.body.content_type)
        .ok_or_else(|| format!("body.content_type '{}' is not text or html", spec.body.content_type))?;
    m.body = spec.body.content;
    m.subject = spec.subject;
    m.from = Some(spec.from);
    m.to = spec.to;
    m.cc = spec.cc;
    m.reply_to = spec.reply_to;
    m.is_read = spec.is_read;
    if spec.malformed.is_some() {
        m.malformed = spec.malformed;
        world.malformed_messages = true;
    }
    if let Some(at) = spec.received_at {
        let t = parse_time(&at).ok_or_else(|| format!("received_at '{at}' is not an RFC 3339 time"))?;
        m.received = t;
        m.sent = Some(t);
        m.created = t;
    }
    for h in spec.internet_message_headers {
        match h.name.to_ascii_lowercase().as_str() {
            "message-id" => m.internet_message_id = h.value,
            "in-reply-to" => m.in_reply_to = Some(h.value),
            "references" => m.references = h.value.split_whitespace().map(str::to_string).collect(),
            _ => m.extra_headers.push((h.name, h.value)),
        }
    }
    m.rethread();
    for a in spec.attachments {
        let bytes =
            unb64(&a.content_base64).ok_or_else(|| format!("attachment '{}': content_base64 is not base64", a.name))?;
        m.attachments.push(Attachment {
            id: item_id("AAMkADAtt"),
            name: a.name,
            content_type: a.content_type,
            bytes: Arc::new(bytes),
            is_inline: a.is_inline,
            content_id: a.content_id,
            modified: now,
        });
    }
    Ok(world.insert_message(&address, m))
}
