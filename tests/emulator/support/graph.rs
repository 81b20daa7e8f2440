//! Graph v1.0 helpers shared by the Graph tests: calls with a token, the error envelope,
//! mailboxes and messages set up through the control API, delta rounds.

use std::collections::HashSet;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Emu, TENANT};

/// The support mailbox most tests read.
pub const SUPPORT: &str = "support@contoso.example";
/// A second mailbox of the same tenant (a customer who is also an emulator mailbox).
pub const ALICE: &str = "alice@contoso.example";
/// A third mailbox of the same tenant (cc'd on threads).
pub const CAROL: &str = "carol@contoso.example";

/// Another tenant, with its own app and mailbox.
pub const OTHER_TENANT: &str = "c3e0a4d2-6b1f-4d8e-9f3a-0b5c7d9e1f20";
pub const OTHER_CLIENT: &str = "e8b7c6d5-4a3b-4c2d-8e1f-0a9b8c7d6e5f";
pub const OTHER_SECRET: &str = "other-tenant-secret~value";
pub const BOB: &str = "bob@fabrikam.example";

/// One HTTP answer, kept whole so tests can look at status, headers and body.
pub struct Resp {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body parsed as JSON (Null when empty or not JSON).
    pub body: Value,
    /// Body as text, for `$value` and for assertion messages.
    pub text: String,
}

impl Resp {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Turns a reqwest response into a [`Resp`].
pub async fn into_resp(resp: reqwest::Response) -> Resp {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    Resp {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sends a request to a path (or an absolute URL, for opaque links).
pub async fn call(
    emu: &Emu,
    method: Method,
    token: Option<&str>,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let url = if target.starts_with("http") {
        target.to_string()
    } else {
        emu.at(target)
    };
    let mut req = emu.http.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    into_resp(req.send().await.unwrap()).await
}

/// Graph GET.
pub async fn gget(emu: &Emu, token: &str, target: &str) -> Resp {
    call(emu, Method::GET, Some(token), target, &[], None).await
}

/// Graph GET with extra headers.
pub async fn gget_h(emu: &Emu, token: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    call(emu, Method::GET, Some(token), target, headers, None).await
}

/// Graph POST with a JSON body.
pub async fn gpost(emu: &Emu, token: &str, target: &str, body: Value) -> Resp {
    call(emu, Method::POST, Some(token), target, &[], Some(&body)).await
}

/// Graph PATCH with a JSON body.
pub async fn gpatch(emu: &Emu, token: &str, target: &str, body: Value) -> Resp {
    call(emu, Method::PATCH, Some(token), target, &[], Some(&body)).await
}

/// Graph DELETE.
pub async fn gdelete(emu: &Emu, token: &str, target: &str) -> Resp {
    call(emu, Method::DELETE, Some(token), target, &[], None).await
}

/// `/v1.0/users/{address}`.
pub fn user(address: &str) -> String {
    format!("/v1.0/users/{address}")
}

/// Percent-encodes a query value (spaces as `%20`).
pub fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A fresh emulator with the default app, the support mailbox and an app token.
pub async fn setup() -> (Emu, String) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, SUPPORT).await;
    let token = emu.default_token().await;
    (emu, token)
}

/// Delivers a message described in control-API form; returns the control API answer.
pub async fn deliver_with(emu: &Emu, address: &str, message: Value) -> Value {
    let (status, answer) = emu
        .post(&format!("/_emulator/mailboxes/{address}/messages"), message)
        .await;
    assert_eq!(status, StatusCode::CREATED, "deliver: {answer}");
    answer
}

/// A text message from `from` to `to`, in control-API form.
pub fn message_from(from: &str, to: &str, subject: &str) -> Value {
    json!({
        "from": {"name": "Sender", "address": from},
        "to": [{"name": "Recipient", "address": to}],
        "subject": subject,
        "body": {"content_type": "text", "content": format!("Body of {subject}")}
    })
}

/// The messages of a folder as the control API sees them.
pub async fn control_folder(emu: &Emu, address: &str, folder: &str) -> Vec<Value> {
    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{address}/folders/{folder}/messages"))
        .await;
    assert_eq!(status, StatusCode::OK, "control folder {address}/{folder}: {body}");
    match body {
        Value::Array(items) => items,
        other => other
            .get("messages")
            .or_else(|| other.get("value"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("control folder answer is not a list: {other}")),
    }
}

/// The lower-cased addresses in a recipient list, whatever its shape
/// (`[{"address"}]`, `[{"emailAddress":{"address"}}]` or plain strings).
pub fn addresses(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    item.as_str()
                        .or_else(|| item["address"].as_str())
                        .or_else(|| item["emailAddress"]["address"].as_str())
                        .map(str::to_ascii_lowercase)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the Graph error envelope and the id headers, and returns the error code.
pub fn assert_graph_error(resp: &Resp, status: StatusCode) -> String {
    assert_eq!(resp.status, status, "status; body: {}", resp.text);
    let error = &resp.body["error"];
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error.code in {}", resp.text));
    assert!(!code.is_empty(), "empty error.code");
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error.message in {}", resp.text));
    assert!(!message.is_empty(), "empty error.message");
    let inner = &error["innerError"];
    let date = inner["date"]
        .as_str()
        .unwrap_or_else(|| panic!("innerError.date in {}", resp.text));
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    assert!(
        date.len() >= 19 && time::PrimitiveDateTime::parse(&date[..19], &format).is_ok(),
        "innerError.date is an ISO date-time: {date}"
    );
    let request_id = inner["request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("innerError.request-id in {}", resp.text));
    assert!(!request_id.is_empty());
    assert_eq!(
        resp.header("request-id"),
        Some(request_id),
        "request-id header matches the envelope"
    );
    let client_request_id = inner["client-request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("innerError.client-request-id in {}", resp.text));
    assert!(!client_request_id.is_empty());
    assert_eq!(
        resp.header("client-request-id"),
        Some(client_request_id),
        "client-request-id header matches the envelope"
    );
    code.to_string()
}

/// One complete delta round: every page up to the one carrying the deltaLink.
pub struct Round {
    /// The `value` array of each page, in order.
    pub pages: Vec<Vec<Value>>,
    /// The final page's `@odata.deltaLink`.
    pub delta_link: String,
}

impl Round {
    /// Every item of every page.
    pub fn items(&self) -> Vec<&Value> {
        self.pages.iter().flatten().collect()
    }

    /// Items that are not `@removed`.
    pub fn live(&self) -> Vec<&Value> {
        self.items()
            .into_iter()
            .filter(|item| item.get("@removed").is_none())
            .collect()
    }

    /// Ids of `@removed` items.
    pub fn removed_ids(&self) -> HashSet<String> {
        self.items()
            .into_iter()
            .filter(|item| item.get("@removed").is_some())
            .map(|item| item["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Subjects of the live items.
    pub fn subjects(&self) -> HashSet<String> {
        self.live()
            .iter()
            .filter_map(|item| item["subject"].as_str().map(str::to_string))
            .collect()
    }

    /// Id of the live item with this subject.
    pub fn id_of(&self, subject: &str) -> String {
        self.live()
            .iter()
            .find(|item| item["subject"] == subject)
            .and_then(|item| item["id"].as_str())
            .unwrap_or_else(|| panic!("no item {subject:?} in the round"))
            .to_string()
    }
}

/// Follows nextLinks (as opaque absolute URLs) until the deltaLink.
pub async fn delta_round(emu: &Emu, token: &str, start: &str, headers: &[(&str, &str)]) -> Round {
    let mut url = start.to_string();
    let mut pages = Vec::new();
    for _ in 0..100 {
        let resp = gget_h(emu, token, &url, headers).await;
        assert_eq!(resp.status, StatusCode::OK, "delta page {url}: {}", resp.text);
        let value = resp.body["value"]
            .as_array()
            .unwrap_or_else(|| panic!("value in {}", resp.text))
            .clone();
        pages.push(value);
        if let Some(next) = resp.body["@odata.nextLink"].as_str() {
            assert!(
                next.starts_with(&emu.url),
                "nextLink is an absolute emulator URL: {next}"
            );
            assert!(
                resp.body.get("@odata.deltaLink").is_none(),
                "a page has one link, not both"
            );
            url = next.to_string();
        } else {
            let link = resp.body["@odata.deltaLink"]
                .as_str()
                .unwrap_or_else(|| panic!("last page carries @odata.deltaLink: {}", resp.text));
            assert!(
                link.starts_with(&emu.url),
                "deltaLink is an absolute emulator URL: {link}"
            );
            return Round {
                pages,
                delta_link: link.to_string(),
            };
        }
    }
    panic!("delta round did not end within 100 pages");
}

/// The delta URL of a folder of the support mailbox.
pub fn folder_delta(folder: &str) -> String {
    format!("{}/mailFolders/{folder}/messages/delta", user(SUPPORT))
}

/// The inbox delta URL of the support mailbox.
pub fn inbox_delta() -> String {
    folder_delta("inbox")
}

pub const MAX2: (&str, &str) = ("Prefer", "odata.maxpagesize=2");
