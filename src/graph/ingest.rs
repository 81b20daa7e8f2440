//! Reading mail: delta pages, `$batch` fetches of what a delta item lacks, and what is
//! done to a message once it is delivered.

use std::time::Duration;

use bytes::Bytes;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::message::{Attachment, DeltaItem, Header, MESSAGE_SELECT, Message};
use super::{Call, CallError, MailboxGraph, segment};
use crate::domain::{MAX_WIRE_WAIT, bounded_secs};

/// Graph's `$batch` limit.
pub const BATCH_MAX: usize = 20;
/// Inside a round, a throttled request waits at most this long; a longer `Retry-After` ends
/// the round, and the mailbox waits it out without holding a shared ingest permit.
pub const MAX_WAIT_IN_ROUND: Duration = Duration::from_secs(10);
/// Messages listed per page when a folder is read message by message.
const LIST_PAGE: u32 = 100;
/// The attachment properties read before deciding whether to fetch the content.
pub const ATTACHMENT_SELECT: &str = "id,name,contentType,size,isInline";
/// Every ingest request asks for ids that survive a move between folders.
pub const IMMUTABLE_IDS: &str = "IdType=\"ImmutableId\"";

/// One page of a delta round.
#[derive(Debug)]
pub struct DeltaPage {
    /// Its entries ([`DeltaItem::read`]).
    pub value: Vec<DeltaItem>,
    /// The next page of this round.
    pub next_link: Option<String>,
    /// The link of the next round (on the last page).
    pub delta_link: Option<String>,
}

/// A delta page as JSON, its entries read as `T`.
#[derive(Deserialize)]
struct PageOf<T> {
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

impl<T> PageOf<T> {
    fn into_page(self, item: impl FnMut(T) -> DeltaItem) -> DeltaPage {
        DeltaPage {
            value: self.value.into_iter().map(item).collect(),
            next_link: self.next_link,
            delta_link: self.delta_link,
        }
    }
}

impl super::Answer for DeltaPage {
    /// A page whose entries are all messages inboxd can read (the usual page) is read in one
    /// pass. Any other (an entry without an id, a field of the wrong type, an invalid escape)
    /// is read again with each entry held as its text, so that entry alone is quarantined.
    fn read(body: &Bytes) -> Result<(Self, bool), serde_json::Error> {
        if let Ok(page) = serde_json::from_slice::<PageOf<Box<Message>>>(body) {
            return Ok((page.into_page(DeltaItem::read_with_page), false));
        }
        let (page, repaired) = super::lenient_json::<PageOf<Box<RawValue>>>(body)?;
        Ok((page.into_page(DeltaItem::text), repaired))
    }
}

/// One page of a folder's message list.
#[derive(Debug, Deserialize)]
pub struct MessageList {
    /// The messages, by id.
    pub value: Vec<Listed>,
    /// The next page.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// A message as the list names it.
#[derive(Debug, Deserialize)]
pub struct Listed {
    /// Its id (an entry without one is skipped).
    #[serde(default)]
    pub id: Option<String>,
}

/// One GET that `$batch` carries: what a delta item lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The whole message.
    Message(String),
    /// The message's headers.
    Headers(String),
    /// The message's attachments, metadata only.
    Attachments(String),
    /// One attachment with its content.
    Attachment {
        /// The message's id.
        message: String,
        /// The attachment's id.
        attachment: String,
    },
}

/// What a part of a `$batch` brought.
#[derive(Debug)]
pub enum Fetched {
    /// [`Fetch::Message`].
    Message(Box<Message>),
    /// [`Fetch::Headers`].
    Headers(Vec<Header>),
    /// [`Fetch::Attachments`].
    Attachments(Vec<Attachment>),
    /// [`Fetch::Attachment`].
    Attachment(Box<Attachment>),
}

/// The answer to one part of a `$batch`.
#[derive(Debug)]
pub struct PartAnswer {
    /// Its HTTP status.
    pub status: u16,
    /// Its own `Retry-After`, bounded.
    pub retry_after: Option<Duration>,
    /// What it brought, or what went wrong in words (the request, the status, Graph's code and
    /// message; or the field its answer lacked).
    pub result: Result<Fetched, String>,
}

impl PartAnswer {
    /// True for a failure worth trying again (429, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self.status, 429 | 500..=599)
    }
}

/// What is done to a delivered message.
#[derive(Debug, Clone, Copy)]
pub enum Disposal<'s> {
    /// Mark it read.
    MarkRead,
    /// Move it to this folder (id or well-known name).
    Move(&'s str),
}

impl Fetch {
    /// The request's path under the mailbox, without its query (for error texts).
    pub fn path(&self) -> String {
        match self {
            Fetch::Message(id) | Fetch::Headers(id) => format!("messages/{}", segment(id)),
            Fetch::Attachments(id) => format!("messages/{}/attachments", segment(id)),
            Fetch::Attachment { message, attachment } => {
                format!("messages/{}/attachments/{}", segment(message), segment(attachment))
            }
        }
    }

    /// The request's path and query under the mailbox.
    fn path_and_query(&self) -> String {
        match self {
            Fetch::Message(_) => format!("{}?$select={MESSAGE_SELECT}", self.path()),
            Fetch::Headers(_) => format!("{}?$select=internetMessageHeaders", self.path()),
            Fetch::Attachments(_) => format!("{}?$select={ATTACHMENT_SELECT}", self.path()),
            Fetch::Attachment { .. } => self.path(),
        }
    }

    /// Reads a successful part's body (its JSON text) as what this request asked for.
    fn read(&self, body: &str) -> Result<Fetched, super::ShapeError> {
        /// The headers of a message.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Headers {
            #[serde(default)]
            internet_message_headers: Option<Vec<Header>>,
        }
        /// A list of attachments.
        #[derive(Deserialize)]
        struct Attachments {
            #[serde(default)]
            value: Option<Vec<Attachment>>,
        }
        use super::mailbox::shaped_text as shaped;
        Ok(match self {
            Fetch::Message(_) => Fetched::Message(Box::new(shaped("message", body)?)),
            Fetch::Headers(_) => Fetched::Headers(
                shaped::<Headers>("headers", body)?
                    .internet_message_headers
                    .unwrap_or_default(),
            ),
            Fetch::Attachments(_) => {
                Fetched::Attachments(shaped::<Attachments>("attachments", body)?.value.unwrap_or_default())
            }
            Fetch::Attachment { .. } => Fetched::Attachment(Box::new(shaped("attachment", body)?)),
        })
    }
}

impl<'a> MailboxGraph<'a> {
    /// The first link of a delta round of `folder`; with `from`, only mail received from then
    /// on (whole seconds, rounded down). Relative to the v1.0 base; nothing is requested.
    pub fn delta_start(&self, folder: &str, from: Option<OffsetDateTime>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("$select", MESSAGE_SELECT);
        received_filter(&mut query, from);
        self.path(&format!(
            "mailFolders/{}/messages/delta?{}",
            segment(folder),
            query.finish()
        ))
    }

    /// One page of a delta round: `link` is [`MailboxGraph::delta_start`]'s or a page's
    /// `next_link` / `delta_link`; `page_size` is what Graph is asked to put in the page.
    pub async fn delta_page(&self, link: &str, page_size: u32) -> Result<DeltaPage, CallError> {
        let call = Call::get("delta", link)
            .prefer(format!("odata.maxpagesize={page_size}"))
            .prefer(IMMUTABLE_IDS)
            .max_retry_wait(MAX_WAIT_IN_ROUND);
        // Boxed: a round waiting here (all first rounds at start-up) then holds a pointer, not
        // the request's whole state machine.
        Box::pin(self.typed(&call)).await
    }

    /// The first page of `folder`'s messages received from `from` on, by id (the list API,
    /// not delta: it serves ids even when a delta page cannot be read).
    pub async fn message_list(&self, folder: &str, from: Option<OffsetDateTime>) -> Result<MessageList, CallError> {
        let query = {
            // Scoped: the serializer is not `Send`, and this future must be.
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("$select", "id,receivedDateTime")
                .append_pair("$top", &LIST_PAGE.to_string());
            received_filter(&mut query, from);
            query.finish()
        };
        let link = self.path(&format!("mailFolders/{}/messages?{query}", segment(folder)));
        self.message_list_page(&link).await
    }

    /// A further page of a message list (its `next_link`).
    pub async fn message_list_page(&self, link: &str) -> Result<MessageList, CallError> {
        let call = Call::get("list", link)
            .prefer(IMMUTABLE_IDS)
            .max_retry_wait(MAX_WAIT_IN_ROUND);
        self.typed(&call).await
    }

    /// One attachment with its content, alone (one too large to share a `$batch`).
    pub async fn attachment(&self, message: &str, attachment: &str) -> Result<Attachment, CallError> {
        let fetch = Fetch::Attachment {
            message: message.to_string(),
            attachment: attachment.to_string(),
        };
        let call = Call::get("attachment", self.path(&fetch.path_and_query()))
            .prefer(IMMUTABLE_IDS)
            .max_retry_wait(MAX_WAIT_IN_ROUND);
        self.typed(&call).await
    }

    /// Up to [`BATCH_MAX`] fetches in one `$batch`, keyed by the caller's ids. A part missing
    /// from Graph's answer is missing from the result; retrying is the caller's choice.
    pub async fn fetch_batch(&self, parts: &[(String, Fetch)]) -> Result<Vec<(String, PartAnswer)>, CallError> {
        let requests: Vec<Value> = parts
            .iter()
            .map(|(id, fetch)| {
                json!({
                    "id": id, "method": "GET", "url": format!("/{}", self.path(&fetch.path_and_query())),
                    "headers": {"Prefer": IMMUTABLE_IDS},
                })
            })
            .collect();
        let mut call = Call::post("batch", "$batch", json!({ "requests": requests })).max_retry_wait(MAX_WAIT_IN_ROUND);
        call.weight = parts.len().min(4) as u32;
        // An answer in another shape, or a part that cannot be read, holds no answer for that
        // part, which the caller retries and then gives up alone.
        let responses = match self.typed::<BatchAnswer>(&call).await {
            Ok(answer) => answer.parts,
            Err(CallError::Shape(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(parts.len());
        for part in responses {
            let Some((id, fetch)) = parts.iter().find(|(id, _)| *id == part.id) else {
                continue;
            };
            let retry_after = part.retry_after();
            let status = part.status;
            let result = if (200..300).contains(&status) {
                fetch
                    .read(part.body_text())
                    .map_err(|e| format!("GET {}: {e}", fetch.path()))
            } else {
                Err(part.error_text(&fetch.path()))
            };
            out.push((
                id.clone(),
                PartAnswer {
                    status,
                    retry_after,
                    result,
                },
            ));
        }
        Ok(out)
    }

    /// Marks read or moves up to [`BATCH_MAX`] delivered messages in one `$batch`; returns
    /// how many parts failed.
    pub async fn dispose(&self, ids: &[String], disposal: Disposal<'_>) -> Result<usize, CallError> {
        let (method, suffix, body) = match disposal {
            Disposal::MarkRead => ("PATCH", "", json!({"isRead": true})),
            Disposal::Move(folder) => ("POST", "/move", json!({"destinationId": folder})),
        };
        let requests: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({
                    "id": id, "method": method,
                    "url": format!("/{}", self.path(&format!("messages/{}{suffix}", segment(id)))),
                    "headers": {"Content-Type": "application/json", "Prefer": IMMUTABLE_IDS},
                    "body": body,
                })
            })
            .collect();
        // Never a long wait while the page holds a shared ingest permit.
        let mut call =
            Call::post("after_ingest", "$batch", json!({ "requests": requests })).max_retry_wait(MAX_WAIT_IN_ROUND);
        call.weight = ids.len().min(4) as u32;
        // Read leniently: the messages are delivered already, an odd answer only counts as failed.
        Ok(match self.typed::<BatchStatuses>(&call).await {
            Ok(a) => a.responses.iter().filter(|p| p.status.is_none_or(|s| s >= 300)).count(),
            Err(CallError::Shape(_)) => ids.len(),
            Err(e) => return Err(e),
        })
    }
}

/// Adds `$filter=receivedDateTime ge {from}` (whole seconds, rounded down) when there is a start.
fn received_filter(query: &mut url::form_urlencoded::Serializer<'_, String>, from: Option<OffsetDateTime>) {
    if let Some(t) = from {
        let at = t
            .replace_nanosecond(0)
            .unwrap_or(t)
            .format(&Rfc3339)
            .unwrap_or_default();
        query.append_pair("$filter", &format!("receivedDateTime ge {at}"));
    }
}

/// A `$batch` answer: its parts, each body held as the answer's bytes until it is read by
/// what its request asked for.
#[derive(Debug)]
struct BatchAnswer {
    parts: Vec<HeldPart>,
}

impl super::Answer for BatchAnswer {
    /// The parts are found in one pass, their bodies kept as slices of the answer, not copied
    /// (an attachment's content is most of a backlog's `$batch` bytes). An answer with a part
    /// that cannot be read (one without an id, say) is read again part by part, each from its
    /// own text, and that part alone is left out.
    fn read(body: &Bytes) -> Result<(Self, bool), serde_json::Error> {
        #[derive(Deserialize)]
        struct Parts<'a> {
            #[serde(default, borrow)]
            responses: Vec<BatchPart<'a>>,
        }
        #[derive(Deserialize)]
        struct Texts {
            #[serde(default)]
            responses: Vec<Box<RawValue>>,
        }
        if let Ok(whole) = serde_json::from_slice::<Parts<'_>>(body) {
            let parts = whole
                .responses
                .into_iter()
                .map(|part| part.held(|raw| body.slice_ref(raw.get().as_bytes())))
                .collect();
            return Ok((BatchAnswer { parts }, false));
        }
        let (texts, repaired) = super::lenient_json::<Texts>(body)?;
        let parts = texts
            .responses
            .iter()
            .filter_map(|text| serde_json::from_str::<BatchPart<'_>>(text.get()).ok())
            .map(|part| part.held(|raw| Bytes::copy_from_slice(raw.get().as_bytes())))
            .collect();
        Ok((BatchAnswer { parts }, repaired))
    }
}

/// One part of a `$batch` answer as JSON.
#[derive(Debug, Deserialize)]
struct BatchPart<'a> {
    id: String,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
}

impl<'a> BatchPart<'a> {
    /// The part with its body held by `hold` (a slice of the answer, or a copy).
    fn held(self, hold: impl FnOnce(&'a RawValue) -> Bytes) -> HeldPart {
        HeldPart {
            id: self.id,
            status: self.status,
            headers: self.headers,
            body: self.body.map(hold),
        }
    }
}

/// One part of a `$batch` answer, its body JSON text held as bytes.
#[derive(Debug)]
struct HeldPart {
    id: String,
    status: u16,
    headers: Option<Map<String, Value>>,
    body: Option<Bytes>,
}

/// A `$batch` answer read for its statuses only.
#[derive(Debug, Deserialize)]
struct BatchStatuses {
    #[serde(default)]
    responses: Vec<PartStatus>,
}

/// A part's status.
#[derive(Debug, Deserialize)]
struct PartStatus {
    #[serde(default)]
    status: Option<u16>,
}

/// Graph's error envelope inside a part.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorDetail>,
}

/// Graph's code and message.
#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl HeldPart {
    /// The body's JSON text (`null` when it has none). It was read from a `&RawValue`, so it is
    /// UTF-8.
    fn body_text(&self) -> &str {
        self.body
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("null")
    }

    /// Its own `Retry-After` (seconds or an HTTP date), bounded.
    fn retry_after(&self) -> Option<Duration> {
        let (_, value) = self
            .headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
        let secs = match value {
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(secs) => secs,
                Err(_) => {
                    let at = httpdate::parse_http_date(s.trim()).ok()?;
                    let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                    return Some(wait.min(MAX_WIRE_WAIT));
                }
            },
            Value::Number(n) => n.as_f64()?,
            _ => return None,
        };
        bounded_secs(secs, MAX_WIRE_WAIT)
    }

    /// A failed part, in words: the request, the status, Graph's code and message.
    fn error_text(self, path: &str) -> String {
        let error = serde_json::from_str::<ErrorBody>(self.body_text())
            .ok()
            .and_then(|b| b.error)
            .unwrap_or_default();
        format!(
            "GET {path} answered {} {} {}",
            self.status,
            error.code.as_deref().unwrap_or(""),
            error.message.as_deref().unwrap_or("")
        )
        .trim_end()
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{BadItem, Change};

    #[test]
    fn a_first_delta_link_is_relative_to_the_base_and_filters_on_whole_seconds() {
        let graph = super::super::Graph::new(
            reqwest::Client::new(),
            &url::Url::parse("https://graph.microsoft.com").unwrap(),
            Duration::from_secs(5),
            crate::metrics::Metrics::new(),
        );
        let gate = super::super::MailboxGate::new("support@contoso.com", 4);
        let now = tokio::time::Instant::now();
        let token = crate::auth::AccessToken::new("t".to_string().into(), now, now);
        let mailbox = MailboxGraph::with_token(&graph, &gate, &token, "support@contoso.com");
        let from = time::macros::datetime!(2026-01-02 03:04:05.678 UTC);
        let link = mailbox.delta_start("inbox", Some(from));
        assert_eq!(
            graph.resolve(&link).unwrap(),
            format!(
                "https://graph.microsoft.com/v1.0/users/support%40contoso.com/mailFolders/inbox/messages/delta?%24select={}&%24filter=receivedDateTime+ge+2026-01-02T03%3A04%3A05Z",
                MESSAGE_SELECT.replace(',', "%2C")
            )
        );
        let all = mailbox.delta_start("inbox", None);
        assert!(!all.contains("filter"), "{all}");
    }

    #[test]
    fn a_part_reads_its_retry_after_and_its_error_in_words() {
        let text = json!({
            "id": "m0", "status": 429, "headers": {"Retry-After": "7"},
            "body": {"error": {"code": "TooManyRequests", "message": "slow down"}},
        })
        .to_string();
        let part = serde_json::from_str::<BatchPart>(&text)
            .unwrap()
            .held(|raw| Bytes::copy_from_slice(raw.get().as_bytes()));
        assert_eq!(part.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            part.error_text("messages/x"),
            "GET messages/x answered 429 TooManyRequests slow down"
        );
        let text = json!({"id": "m1", "status": 404}).to_string();
        let bare = serde_json::from_str::<BatchPart>(&text)
            .unwrap()
            .held(|raw| Bytes::copy_from_slice(raw.get().as_bytes()));
        assert_eq!(bare.retry_after(), None);
        assert_eq!(bare.error_text("messages/y"), "GET messages/y answered 404");
    }

    #[test]
    fn a_batch_answer_keeps_its_parts_bodies_in_place_and_leaves_out_only_a_bad_part() {
        let within = |answer: &Bytes, part: &HeldPart| {
            let (start, at) = (
                answer.as_ptr() as usize,
                part.body.as_ref().map_or(0, |b| b.as_ptr() as usize),
            );
            at >= start && at < start + answer.len()
        };
        let good = Bytes::from(
            json!({"responses": [
                {"id": "a", "status": 200, "body": {"id": "x", "contentBytes": "YWJj"}},
                {"id": "b", "status": 404, "body": {"error": {"code": "ErrorItemNotFound", "message": "gone"}}},
            ]})
            .to_string(),
        );
        let (answer, _) = <BatchAnswer as super::super::Answer>::read(&good).unwrap();
        assert_eq!(answer.parts.len(), 2);
        assert!(answer.parts.iter().all(|p| within(&good, p)), "slices of the answer");
        assert_eq!(answer.parts[0].body_text(), r#"{"contentBytes":"YWJj","id":"x"}"#);
        let gone = answer.parts.into_iter().nth(1).unwrap();
        assert_eq!(
            gone.error_text("messages/b"),
            "GET messages/b answered 404 ErrorItemNotFound gone"
        );

        let mixed = Bytes::from(
            json!({"responses": [{"status": 200, "body": {}}, {"id": "a", "status": 200, "body": {"id": "x"}}]})
                .to_string(),
        );
        let (answer, _) = <BatchAnswer as super::super::Answer>::read(&mixed).unwrap();
        assert_eq!(answer.parts.len(), 1, "the part without an id is left out");
        assert_eq!(
            (answer.parts[0].id.as_str(), answer.parts[0].body_text()),
            ("a", r#"{"id":"x"}"#)
        );
    }

    #[test]
    fn a_fetched_message_without_its_id_names_the_field() {
        let err = Fetch::Message("x".into())
            .read(&json!({"subject": "no id"}).to_string())
            .unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        let Ok(Fetched::Headers(h)) = Fetch::Headers("x".into()).read("{}") else {
            panic!("headers absent are none")
        };
        assert!(h.is_empty());
    }

    fn page(body: &str) -> Vec<(bool, Result<Change, BadItem>)> {
        let (page, _) = <DeltaPage as super::super::Answer>::read(&Bytes::copy_from_slice(body.as_bytes()))
            .expect("a readable page");
        page.value
            .into_iter()
            .map(|i| (i.was_read_with_page(), i.read()))
            .collect()
    }

    #[test]
    fn a_page_of_messages_is_read_in_one_pass_and_any_other_entry_by_entry() {
        let good = r#"{"value":[{"id":"a","subject":"one"},{"id":"b","@removed":{"reason":"deleted"}}],"@odata.deltaLink":"d"}"#;
        let items = page(good);
        assert!(items.iter().all(|(once, _)| *once), "read with the page");
        assert!(matches!(&items[0].1, Ok(Change::Message(m)) if m.id == "a"));
        assert!(matches!(items[1].1, Ok(Change::Removed)));

        // An entry without an id, one with a number for a subject, one with a lone surrogate
        // and a removal without an id: each is read on its own, and only the bad ones fail.
        let mixed = r#"{"value":[{"id":"a"},{"subject":"no id"},{"id":"n","subject":5},{"id":"s","subject":"x \ud800"},{"@removed":{}}]}"#;
        let items = page(mixed);
        assert!(items.iter().all(|(once, _)| !*once), "read entry by entry");
        assert!(matches!(&items[0].1, Ok(Change::Message(m)) if m.id == "a"));
        assert!(matches!(&items[1].1, Err(bad) if bad.id.is_none()));
        assert!(matches!(&items[2].1, Err(bad) if bad.id.as_deref() == Some("n")));
        assert!(matches!(&items[3].1, Ok(Change::Message(m)) if m.subject.as_deref() == Some("x \u{fffd}")));
        assert!(matches!(items[4].1, Ok(Change::Removed)));
    }
}
