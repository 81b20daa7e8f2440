//! Messages, folders and attachments as Graph renders them.

use serde_json::{Map, Value, json};

use crate::emulator::model::{Attachment, BodyType, Folder, Mailbox, Malformed, Message, Recipient};
use crate::emulator::util::{b64, graph_time};

/// Stands in a rendered string for the escape `\ud800`; the answer is patched on its way
/// out, since no JSON serializer writes a lone surrogate. Private-use characters, so no
/// real mail contains it.
pub(crate) const LONE_SURROGATE_MARK: &str = "\u{F8FF}emulator:lone-surrogate\u{F8FF}";
/// The answer is cut at this mark on its way out.
pub(crate) const TRUNCATE_MARK: &str = "\u{F8FF}emulator:truncate\u{F8FF}";

/// How to render a message for one request.
#[derive(Default)]
pub(crate) struct View {
    /// Immutable ids (`Prefer: IdType="ImmutableId"`).
    pub(crate) immutable: bool,
    /// Body conversion (`Prefer: outlook.body-content-type`).
    pub(crate) body_type: Option<BodyType>,
    /// `$select`, lower-cased; `None` = the default property set.
    pub(crate) select: Option<Vec<String>>,
    /// Keep `<script>` and friends.
    pub(crate) allow_unsafe_html: bool,
    /// `$expand=singleValueExtendedProperties($filter=id eq '…')`: which ids (empty = all).
    pub(crate) expand_extended: Option<Vec<String>>,
}

/// `{"emailAddress":{"name","address"}}`.
pub(crate) fn recipient(r: &Recipient) -> Value {
    json!({"emailAddress": {"name": r.name, "address": r.address}})
}

fn recipients(list: &[Recipient]) -> Value {
    Value::Array(list.iter().map(recipient).collect())
}

/// The id a client sees.
pub(crate) fn visible_id(m: &Message, immutable: bool) -> &str {
    if immutable { &m.immutable_id } else { &m.id }
}

/// The message as JSON.
pub(crate) fn message(m: &Message, mailbox: &Mailbox, view: &View) -> Value {
    // Graph answers HTML unless asked otherwise (`Prefer: outlook.body-content-type`).
    let body_type = view.body_type.unwrap_or(BodyType::Html);
    let mut content = convert_body(&m.body, m.body_type, body_type);
    if body_type == BodyType::Html && !view.allow_unsafe_html {
        content = strip_unsafe(&content);
    }
    let text = convert_body(&m.body, m.body_type, BodyType::Text);
    let preview: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(255)
        .collect();
    let mark = match m.malformed {
        Some(Malformed::LoneSurrogate) => LONE_SURROGATE_MARK,
        Some(Malformed::Truncated) => TRUNCATE_MARK,
        None => "",
    };
    content.push_str(mark);
    let subject = format!("{}{mark}", m.subject);
    let id = visible_id(m, view.immutable);
    let mut all = Map::new();
    let mut put = |k: &str, v: Value| {
        all.insert(k.to_string(), v);
    };
    put("@odata.etag", json!(format!("W/\"{}\"", m.change_key)));
    put("id", json!(id));
    put("createdDateTime", json!(graph_time(m.created)));
    put("lastModifiedDateTime", json!(graph_time(m.modified)));
    put("changeKey", json!(m.change_key));
    put("categories", json!(m.categories));
    put("receivedDateTime", json!(graph_time(m.received)));
    put("sentDateTime", json!(m.sent.map(graph_time)));
    put("hasAttachments", json!(m.has_attachments()));
    put("internetMessageId", json!(m.internet_message_id));
    put("subject", json!(subject));
    put("bodyPreview", json!(preview));
    put("importance", json!(m.importance));
    put("parentFolderId", json!(m.folder_id));
    put("conversationId", json!(m.conversation_id));
    put("conversationIndex", json!(b64(m.conversation_id.as_bytes())));
    put("isDeliveryReceiptRequested", json!(false));
    put("isReadReceiptRequested", json!(false));
    put("isRead", json!(m.is_read));
    put("isDraft", json!(m.is_draft));
    put(
        "webLink",
        json!(format!(
            "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem",
            urlencode(&m.id)
        )),
    );
    put("inferenceClassification", json!("focused"));
    put("body", json!({"contentType": body_type.as_str(), "content": content}));
    let from = m.from.clone().unwrap_or_else(|| Recipient {
        name: mailbox.display_name.clone(),
        address: mailbox.address.clone(),
    });
    put("sender", recipient(&from));
    put("from", recipient(&from));
    put("toRecipients", recipients(&m.to));
    put("ccRecipients", recipients(&m.cc));
    put("bccRecipients", recipients(&m.bcc));
    put("replyTo", recipients(&m.reply_to));
    put("flag", json!({"flagStatus": "notFlagged"}));
    let defaults = all.clone();
    let mut out = match &view.select {
        None => defaults,
        Some(select) => {
            let mut picked = Map::new();
            for (k, v) in &defaults {
                if k == "@odata.etag" || k == "id" || select.contains(&k.to_ascii_lowercase()) {
                    picked.insert(k.clone(), v.clone());
                }
            }
            if select.iter().any(|s| s == "internetmessageheaders") {
                picked.insert("internetMessageHeaders".into(), headers_json(m));
            }
            if select.iter().any(|s| s == "uniquebody") {
                picked.insert(
                    "uniqueBody".into(),
                    json!({"contentType": body_type.as_str(), "content": content}),
                );
            }
            picked
        }
    };
    if let Some(ids) = &view.expand_extended {
        let props: Vec<Value> = m
            .extended
            .iter()
            .filter(|(id, _)| ids.is_empty() || ids.iter().any(|i| i.eq_ignore_ascii_case(id)))
            .map(|(id, value)| json!({"id": id, "value": value}))
            .collect();
        out.insert("singleValueExtendedProperties".into(), Value::Array(props));
    }
    Value::Object(out)
}

/// The internet headers Graph returns when `internetMessageHeaders` is selected.
fn headers_json(m: &Message) -> Value {
    Value::Array(
        internet_headers(m)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect(),
    )
}

/// Header list of a message (drafts only carry what the client set).
pub(crate) fn internet_headers(m: &Message) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = Vec::new();
    if !m.is_draft {
        let addr = |r: &Recipient| {
            if r.name.is_empty() {
                r.address.clone()
            } else {
                format!("\"{}\" <{}>", r.name, r.address)
            }
        };
        let list = |rs: &[Recipient]| rs.iter().map(addr).collect::<Vec<_>>().join(", ");
        if let Some(from) = &m.from {
            h.push(("From".into(), addr(from)));
        }
        h.push(("To".into(), list(&m.to)));
        if !m.cc.is_empty() {
            h.push(("CC".into(), list(&m.cc)));
        }
        h.push(("Subject".into(), m.subject.clone()));
        h.push(("Date".into(), rfc2822(m.sent.unwrap_or(m.received))));
        h.push(("Message-ID".into(), m.internet_message_id.clone()));
        if let Some(irt) = &m.in_reply_to {
            h.push(("In-Reply-To".into(), irt.clone()));
        }
        if !m.references.is_empty() {
            h.push(("References".into(), m.references.join(" ")));
        }
        h.push(("MIME-Version".into(), "1.0".into()));
        let ct = if m.body_type == BodyType::Html {
            "text/html"
        } else {
            "text/plain"
        };
        h.push(("Content-Type".into(), format!("{ct}; charset=\"utf-8\"")));
    }
    h.extend(m.extra_headers.iter().cloned());
    h
}

/// The message as MIME (`$value`).
pub(crate) fn mime(m: &Message) -> String {
    let mut out = String::new();
    let boundary = format!(
        "_000_{}_",
        &m.change_key
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    );
    for (name, value) in internet_headers(m) {
        if name.eq_ignore_ascii_case("Content-Type") && !m.attachments.is_empty() {
            continue;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let (ct, body) = match m.body_type {
        BodyType::Html => ("text/html", m.body.clone()),
        BodyType::Text => ("text/plain", m.body.clone()),
    };
    if m.attachments.is_empty() {
        if m.is_draft {
            out.push_str(&format!("Content-Type: {ct}; charset=\"utf-8\"\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        return out;
    }
    out.push_str(&format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: {ct}; charset=\"utf-8\"\r\n\r\n{body}\r\n"
    ));
    for a in &m.attachments {
        let disposition = if a.is_inline { "inline" } else { "attachment" };
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: {}; name=\"{}\"\r\nContent-Disposition: {disposition}; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n",
            a.content_type, a.name, a.name
        ));
        if let Some(cid) = &a.content_id {
            out.push_str(&format!("Content-ID: <{cid}>\r\n"));
        }
        out.push_str("\r\n");
        let encoded = b64(&a.bytes);
        for chunk in encoded.as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

/// A file attachment as JSON; `with_bytes` adds `contentBytes`.
pub(crate) fn attachment(a: &Attachment, with_bytes: bool) -> Value {
    let mut v = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "@odata.mediaContentType": a.content_type,
        "id": a.id,
        "lastModifiedDateTime": graph_time(a.modified),
        "name": a.name,
        "contentType": a.content_type,
        "size": a.bytes.len(),
        "isInline": a.is_inline,
        "contentId": a.content_id,
        "contentLocation": null,
    });
    if with_bytes {
        v["contentBytes"] = json!(b64(&a.bytes));
    }
    v
}

/// A folder as JSON.
pub(crate) fn folder(f: &Folder, mailbox: &Mailbox) -> Value {
    let in_folder = mailbox.messages.values().filter(|m| m.folder_id == f.id);
    let (total, unread) = in_folder.fold((0, 0), |(t, u), m| (t + 1, u + usize::from(!m.is_read)));
    let root = mailbox
        .folders
        .iter()
        .find(|x| x.well_known.as_deref() == Some("msgfolderroot"))
        .map(|x| x.id.clone());
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": if f.well_known.as_deref() == Some("msgfolderroot") { None } else { root },
        "childFolderCount": 0,
        "unreadItemCount": unread,
        "totalItemCount": total,
        "sizeInBytes": 0,
        "isHidden": false,
        "wellKnownName": f.well_known,
    })
}

/// Converts a body between text and HTML.
pub(crate) fn convert_body(content: &str, from: BodyType, to: BodyType) -> String {
    match (from, to) {
        (a, b) if a == b => content.to_string(),
        (BodyType::Html, BodyType::Text) => html_to_text(content),
        _ => format!(
            "<html><head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n<div>{}</div>\r\n</body>\r\n</html>\r\n",
            escape_html(content).replace('\n', "<br>\r\n")
        ),
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut tag = String::new();
    let mut skip = false;
    for c in html.chars() {
        match (in_tag, c) {
            (false, '<') => {
                in_tag = true;
                tag.clear();
            }
            (true, '>') => {
                in_tag = false;
                let name = tag
                    .trim_start_matches('/')
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if matches!(name.as_str(), "style" | "script" | "head") {
                    skip = !tag.starts_with('/');
                }
                if matches!(name.as_str(), "br" | "p" | "div" | "tr" | "li") && !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            (true, c) => tag.push(c),
            (false, c) if !skip => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

/// Removes `<script>` elements and `on…=` handlers, as Outlook does by default.
fn strip_unsafe(html: &str) -> String {
    let mut out = html.to_string();
    while let Some(start) = out.to_ascii_lowercase().find("<script") {
        let lower = out.to_ascii_lowercase();
        let end = lower[start..]
            .find("</script>")
            .map(|e| start + e + "</script>".len())
            .unwrap_or(out.len());
        out.replace_range(start..end, "");
    }
    out
}

/// RFC 2822 date for MIME headers.
fn rfc2822(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
