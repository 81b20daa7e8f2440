//! Graph v1.0 mail, reading side: access-token checks, the error envelope, mailbox
//! lookup, folders, delta rounds, message reads and attachments.
//! The helpers at the top are shared with `graph_compose`.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{CLIENT, Emu, SECRET, TENANT, status_json};

/// The support mailbox most tests read.
pub(super) const SUPPORT: &str = "support@contoso.example";
/// A second mailbox of the same tenant (a customer who is also an emulator mailbox).
pub(super) const ALICE: &str = "alice@contoso.example";
/// A third mailbox of the same tenant (cc'd on threads).
pub(super) const CAROL: &str = "carol@contoso.example";

/// Another tenant, with its own app and mailbox.
const OTHER_TENANT: &str = "c3e0a4d2-6b1f-4d8e-9f3a-0b5c7d9e1f20";
const OTHER_CLIENT: &str = "e8b7c6d5-4a3b-4c2d-8e1f-0a9b8c7d6e5f";
const OTHER_SECRET: &str = "other-tenant-secret~value";
const BOB: &str = "bob@fabrikam.example";

/// One HTTP answer, kept whole so tests can look at status, headers and body.
pub(super) struct Resp {
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
pub(super) async fn into_resp(resp: reqwest::Response) -> Resp {
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
pub(super) async fn call(
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
pub(super) async fn gget(emu: &Emu, token: &str, target: &str) -> Resp {
    call(emu, Method::GET, Some(token), target, &[], None).await
}

/// Graph GET with extra headers.
pub(super) async fn gget_h(emu: &Emu, token: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    call(emu, Method::GET, Some(token), target, headers, None).await
}

/// Graph POST with a JSON body.
pub(super) async fn gpost(emu: &Emu, token: &str, target: &str, body: Value) -> Resp {
    call(emu, Method::POST, Some(token), target, &[], Some(&body)).await
}

/// Graph PATCH with a JSON body.
pub(super) async fn gpatch(emu: &Emu, token: &str, target: &str, body: Value) -> Resp {
    call(emu, Method::PATCH, Some(token), target, &[], Some(&body)).await
}

/// Graph DELETE.
pub(super) async fn gdelete(emu: &Emu, token: &str, target: &str) -> Resp {
    call(emu, Method::DELETE, Some(token), target, &[], None).await
}

/// `/v1.0/users/{address}`.
pub(super) fn user(address: &str) -> String {
    format!("/v1.0/users/{address}")
}

/// Percent-encodes a query value (spaces as `%20`).
pub(super) fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A fresh emulator with the default app, the support mailbox and an app token.
pub(super) async fn setup() -> (Emu, String) {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, SUPPORT).await;
    let token = emu.default_token().await;
    (emu, token)
}

/// Delivers a message described in control-API form; returns the control API answer.
pub(super) async fn deliver_with(emu: &Emu, address: &str, message: Value) -> Value {
    let (status, answer) = emu
        .post(&format!("/_emulator/mailboxes/{address}/messages"), message)
        .await;
    assert_eq!(status, StatusCode::CREATED, "deliver: {answer}");
    answer
}

/// A text message from `from` to `to`, in control-API form.
pub(super) fn message_from(from: &str, to: &str, subject: &str) -> Value {
    json!({
        "from": {"name": "Sender", "address": from},
        "to": [{"name": "Recipient", "address": to}],
        "subject": subject,
        "body": {"content_type": "text", "content": format!("Body of {subject}")}
    })
}

/// The messages of a folder as the control API sees them.
pub(super) async fn control_folder(emu: &Emu, address: &str, folder: &str) -> Vec<Value> {
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
pub(super) fn addresses(list: &Value) -> Vec<String> {
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
pub(super) fn assert_graph_error(resp: &Resp, status: StatusCode) -> String {
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
pub(super) struct Round {
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
pub(super) async fn delta_round(emu: &Emu, token: &str, start: &str, headers: &[(&str, &str)]) -> Round {
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
fn folder_delta(folder: &str) -> String {
    format!("{}/mailFolders/{folder}/messages/delta", user(SUPPORT))
}

/// The inbox delta URL of the support mailbox.
fn inbox_delta() -> String {
    folder_delta("inbox")
}

const MAX2: (&str, &str) = ("Prefer", "odata.maxpagesize=2");

// ---------------------------------------------------------------------------
// Access tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_garbage_or_tampered_token_is_401_with_challenge() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders", user(SUPPORT));

    let none = call(&emu, Method::GET, None, &path, &[], None).await;
    let garbage = gget(&emu, "not-a-jwt", &path).await;
    // Flip one character in the middle of the signature.
    let mut tampered = token.clone().into_bytes();
    let dot = token.rfind('.').unwrap();
    let mid = dot + (token.len() - dot) / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = gget(&emu, &String::from_utf8(tampered).unwrap(), &path).await;

    for resp in [&none, &garbage, &tampered] {
        let code = assert_graph_error(resp, StatusCode::UNAUTHORIZED);
        assert_eq!(code, "InvalidAuthenticationToken");
        let challenge = resp.header("www-authenticate").expect("WWW-Authenticate header on 401");
        assert!(challenge.starts_with("Bearer"), "challenge: {challenge}");
    }
    assert_eq!(
        gget(&emu, &token, &path).await.status,
        StatusCode::OK,
        "the untampered token works"
    );
}

#[tokio::test]
async fn expired_token_is_401() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders/inbox/messages", user(SUPPORT));
    assert_eq!(gget(&emu, &token, &path).await.status, StatusCode::OK);

    let (status, body) = emu.post("/_emulator/clock", json!({"advance_secs": 7200})).await;
    assert_eq!(status, StatusCode::OK, "clock: {body}");

    let resp = gget(&emu, &token, &path).await;
    assert_eq!(
        assert_graph_error(&resp, StatusCode::UNAUTHORIZED),
        "InvalidAuthenticationToken"
    );
    assert!(
        resp.header("www-authenticate").is_some(),
        "WWW-Authenticate on an expired token"
    );

    let fresh = emu.default_token().await;
    assert_eq!(
        gget(&emu, &fresh, &path).await.status,
        StatusCode::OK,
        "a new token works"
    );
}

#[tokio::test]
async fn app_without_mail_roles_is_403() {
    let (emu, _) = setup().await;
    let client = "0d9c8b7a-6f5e-4d3c-8b2a-1f0e9d8c7b6a";
    emu.app(TENANT, client, "no-roles-secret", &[]).await;
    let token = emu.app_token(TENANT, client, "no-roles-secret").await;

    let resp = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(SUPPORT))).await;
    assert_graph_error(&resp, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_of_another_tenant_is_refused() {
    let (emu, token) = setup().await;
    emu.app(
        OTHER_TENANT,
        OTHER_CLIENT,
        OTHER_SECRET,
        &["Mail.ReadWrite", "Mail.Send"],
    )
    .await;
    emu.mailbox(OTHER_TENANT, BOB).await;
    let other = emu.app_token(OTHER_TENANT, OTHER_CLIENT, OTHER_SECRET).await;

    let own = gget(&emu, &other, &format!("{}/mailFolders/inbox/messages", user(BOB))).await;
    assert_eq!(
        own.status,
        StatusCode::OK,
        "the other tenant's app reads its own mailbox: {}",
        own.text
    );

    for (token, mailbox) in [(&other, SUPPORT), (&token, BOB)] {
        let resp = gget(&emu, token, &format!("{}/mailFolders/inbox/messages", user(mailbox))).await;
        assert!(
            resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::FORBIDDEN,
            "cross-tenant read of {mailbox} refused, got {}: {}",
            resp.status,
            resp.text
        );
        assert_graph_error(&resp, resp.status);
    }
}

/// Exchanges an emulator-issued refresh token for a delegated access token of `address`.
async fn delegated_token(emu: &Emu, address: &str) -> String {
    let (status, body) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({
                "tenant_id": TENANT,
                "client_id": CLIENT,
                "address": address,
                "scopes": "offline_access Mail.ReadWrite Mail.Send"
            }),
        )
        .await;
    assert!(status.is_success(), "refresh-tokens: {status} {body}");
    let refresh = body["refresh_token"].as_str().expect("refresh_token").to_string();
    let resp = emu
        .http
        .post(emu.at(&format!("/{TENANT}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "refresh grant: {body}");
    body["access_token"].as_str().expect("access_token").to_string()
}

#[tokio::test]
async fn delegated_token_reads_only_its_own_mailbox() {
    let (emu, _) = setup().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.deliver(SUPPORT, "For support").await;
    emu.deliver(ALICE, "For alice").await;
    let token = delegated_token(&emu, SUPPORT).await;

    for path in [
        "/v1.0/me/mailFolders/inbox/messages".to_string(),
        format!("{}/mailFolders/inbox/messages", user(SUPPORT)),
    ] {
        let resp = gget(&emu, &token, &path).await;
        assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text);
        let subjects: Vec<&str> = resp.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["subject"].as_str())
            .collect();
        assert_eq!(subjects, vec!["For support"], "{path}");
    }
    let me_folders = gget(&emu, &token, "/v1.0/me/mailFolders").await;
    assert_eq!(me_folders.status, StatusCode::OK, "{}", me_folders.text);

    let other = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(ALICE))).await;
    assert_graph_error(&other, StatusCode::FORBIDDEN);
    assert!(!other.text.contains("For alice"));
}

// ---------------------------------------------------------------------------
// Error envelope, mailbox lookup, access policy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn errors_use_the_envelope_and_echo_client_request_id() {
    let (emu, token) = setup().await;
    let path = format!("{}/mailFolders", user(SUPPORT));

    let sent_id = "3f1c2b7e-client-chosen-id";
    let resp = call(&emu, Method::GET, None, &path, &[("client-request-id", sent_id)], None).await;
    assert_graph_error(&resp, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.header("client-request-id"),
        Some(sent_id),
        "header echoes the client's id"
    );
    assert_eq!(
        resp.body["error"]["innerError"]["client-request-id"], sent_id,
        "envelope echoes the client's id"
    );

    // Without a client id the emulator makes one up; request ids differ per request.
    let first = gget(&emu, &token, &format!("{}/messages/AAMkAGnotAnId=", user(SUPPORT))).await;
    assert_graph_error(&first, StatusCode::NOT_FOUND);
    let second = gget(&emu, &token, &format!("{}/messages/AAMkAGnotAnId=", user(SUPPORT))).await;
    assert_graph_error(&second, StatusCode::NOT_FOUND);
    assert_ne!(
        first.header("request-id"),
        second.header("request-id"),
        "each request gets its own request-id"
    );
}

#[tokio::test]
async fn unknown_mailbox_is_404() {
    let (emu, token) = setup().await;
    let created = emu.mailbox(TENANT, ALICE).await;

    let unknown_guid = uuid::Uuid::new_v4().to_string();
    for who in ["nobody@contoso.example", unknown_guid.as_str()] {
        let resp = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(who))).await;
        let code = assert_graph_error(&resp, StatusCode::NOT_FOUND);
        assert!(
            code == "MailboxNotEnabledForRESTAPI" || code == "ResourceNotFound",
            "unknown mailbox {who}: code {code}"
        );
    }

    // A known mailbox can be named by its id as well as its address.
    let id = created["id"].as_str().expect("mailbox id");
    let by_id = gget(&emu, &token, &format!("{}/mailFolders/inbox", user(id))).await;
    assert_eq!(by_id.status, StatusCode::OK, "mailbox by id: {}", by_id.text);
}

#[tokio::test]
async fn access_policy_denial_is_403_until_lifted() {
    let (emu, token) = setup().await;
    emu.deliver(SUPPORT, "Behind the policy").await;
    let path = format!("{}/mailFolders/inbox/messages", user(SUPPORT));

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{SUPPORT}/access"), json!({"deny": true}))
        .await;
    assert!(status.is_success(), "deny: {status} {body}");
    let denied = gget(&emu, &token, &path).await;
    assert_eq!(assert_graph_error(&denied, StatusCode::FORBIDDEN), "ErrorAccessDenied");
    let message = denied.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Access to OData is disabled"), "message: {message}");
    assert!(!denied.text.contains("Behind the policy"));

    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{SUPPORT}/access"),
            json!({"deny": false}),
        )
        .await;
    assert!(status.is_success(), "lift: {status} {body}");
    let allowed = gget(&emu, &token, &path).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text);
    assert_eq!(allowed.body["value"][0]["subject"], "Behind the policy");
}

// ---------------------------------------------------------------------------
// Folders
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mail_folders_list_contains_the_well_known_folders() {
    let (emu, token) = setup().await;

    let mut listed = Vec::new();
    let mut url = format!("{}/mailFolders", user(SUPPORT));
    for _ in 0..20 {
        let resp = gget(&emu, &token, &url).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        listed.extend(resp.body["value"].as_array().unwrap().iter().cloned());
        match resp.body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    for folder in &listed {
        assert!(
            folder["id"].as_str().is_some_and(|id| !id.is_empty()),
            "folder id: {folder}"
        );
        assert!(
            folder["displayName"].as_str().is_some_and(|n| !n.is_empty()),
            "displayName: {folder}"
        );
    }

    let mut ids = HashSet::new();
    for name in ["inbox", "sentitems", "drafts", "deleteditems"] {
        let resp = gget(&emu, &token, &format!("{}/mailFolders/{name}", user(SUPPORT))).await;
        assert_eq!(resp.status, StatusCode::OK, "mailFolders/{name}: {}", resp.text);
        let id = resp.body["id"].as_str().unwrap().to_string();
        let in_list = listed
            .iter()
            .find(|f| f["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{name} ({id}) is in the list"));
        assert_eq!(in_list["displayName"], resp.body["displayName"], "{name}");
        // The folder can also be addressed by its id.
        let by_id = gget(&emu, &token, &format!("{}/mailFolders/{id}", user(SUPPORT))).await;
        assert_eq!(by_id.body["id"], id.as_str(), "{name} by id");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 4, "well-known folders have distinct ids");
}

// ---------------------------------------------------------------------------
// Delta
// ---------------------------------------------------------------------------

#[tokio::test]
async fn delta_first_round_pages_through_everything_and_honours_select() {
    let (emu, token) = setup().await;
    let mut subjects = HashSet::new();
    for i in 0..5 {
        let subject = format!("Delta {i}");
        emu.deliver(SUPPORT, &subject).await;
        subjects.insert(subject);
    }
    let start = format!("{}?$select=subject,isRead", inbox_delta());

    let first = gget_h(&emu, &token, &start, &[MAX2]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let context = first.body["@odata.context"].as_str().unwrap_or_default();
    assert!(
        context.contains("$metadata#Collection(message)"),
        "@odata.context: {context}"
    );

    let round = delta_round(&emu, &token, &start, &[MAX2]).await;
    assert!(
        round.pages.len() >= 3,
        "5 items at 2 per page need 3 pages, got {}",
        round.pages.len()
    );
    for page in &round.pages {
        assert!(page.len() <= 2, "odata.maxpagesize=2 honoured: {page:?}");
    }
    assert_eq!(round.items().len(), 5, "no duplicates without replay");
    assert_eq!(round.subjects(), subjects);

    let allowed: HashSet<&str> = ["id", "@odata.type", "@odata.etag", "subject", "isRead"].into();
    for item in round.items() {
        let keys: HashSet<&str> = item.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(keys.is_subset(&allowed), "only selected properties: {item}");
        for key in ["id", "@odata.type", "@odata.etag", "subject"] {
            assert!(keys.contains(key), "{key} present: {item}");
        }
        assert_eq!(item["@odata.type"], "#microsoft.graph.message");
    }
}

#[tokio::test]
async fn delta_next_rounds_return_only_new_and_updated_messages() {
    let (emu, token) = setup().await;
    for subject in ["Old A", "Old B", "Old C"] {
        emu.deliver(SUPPORT, subject).await;
    }
    let first = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    assert_eq!(first.subjects().len(), 3);

    emu.deliver(SUPPORT, "New D").await;
    let second = delta_round(&emu, &token, &first.delta_link, &[]).await;
    assert_eq!(
        second.subjects(),
        HashSet::from(["New D".to_string()]),
        "only the new message"
    );
    assert!(second.removed_ids().is_empty());

    let id_a = first.id_of("Old A");
    let patched = gpatch(
        &emu,
        &token,
        &format!("{}/messages/{id_a}", user(SUPPORT)),
        json!({"isRead": true}),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let third = delta_round(&emu, &token, &second.delta_link, &[]).await;
    let live = third.live();
    assert_eq!(live.len(), 1, "only the updated message: {:?}", third.pages);
    assert_eq!(live[0]["id"], id_a.as_str());
    if let Some(read) = live[0].get("isRead") {
        assert_eq!(read, true);
    }

    let fourth = delta_round(&emu, &token, &third.delta_link, &[]).await;
    assert!(fourth.items().is_empty(), "nothing changed: {:?}", fourth.pages);
}

#[tokio::test]
async fn delta_reports_deleted_and_moved_messages() {
    let (emu, token) = setup().await;
    for subject in ["Stays", "Gets deleted", "Gets moved"] {
        emu.deliver(SUPPORT, subject).await;
    }
    let inbox = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    let archive = delta_round(&emu, &token, &folder_delta("archive"), &[]).await;
    assert!(archive.items().is_empty(), "archive starts empty");
    let deleted = inbox.id_of("Gets deleted");
    let moved = inbox.id_of("Gets moved");

    let resp = gdelete(&emu, &token, &format!("{}/messages/{deleted}", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    let resp = gpost(
        &emu,
        &token,
        &format!("{}/messages/{moved}/move", user(SUPPORT)),
        json!({"destinationId": "archive"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let moved_new_id = resp.body["id"].as_str().unwrap().to_string();

    let inbox2 = delta_round(&emu, &token, &inbox.delta_link, &[]).await;
    assert_eq!(inbox2.removed_ids(), HashSet::from([deleted.clone(), moved.clone()]));
    assert!(
        inbox2.live().is_empty(),
        "nothing else changed in the inbox: {:?}",
        inbox2.pages
    );
    for item in inbox2.items() {
        assert_eq!(item["@removed"], json!({"reason": "deleted"}), "{item}");
    }

    let archive2 = delta_round(&emu, &token, &archive.delta_link, &[]).await;
    assert_eq!(archive2.subjects(), HashSet::from(["Gets moved".to_string()]));
    assert_eq!(
        archive2.id_of("Gets moved"),
        moved_new_id,
        "the destination reports the new id"
    );
}

#[tokio::test]
async fn delta_filter_on_received_date_limits_the_initial_round() {
    let (emu, token) = setup().await;
    for (subject, at) in [
        ("January one", "2024-01-10T08:00:00Z"),
        ("January two", "2024-01-20T08:00:00Z"),
        ("March one", "2024-03-10T08:00:00Z"),
        ("March two", "2024-03-20T08:00:00Z"),
    ] {
        let mut message = message_from("customer@example.net", SUPPORT, subject);
        message["received_at"] = json!(at);
        deliver_with(&emu, SUPPORT, message).await;
    }
    let start = format!(
        "{}?$filter={}",
        inbox_delta(),
        enc("receivedDateTime ge 2024-02-01T00:00:00Z")
    );
    let first = delta_round(&emu, &token, &start, &[]).await;
    assert_eq!(
        first.subjects(),
        HashSet::from(["March one".to_string(), "March two".to_string()])
    );
    let received = first.live().iter().find(|m| m["subject"] == "March one").unwrap()["receivedDateTime"].clone();
    assert!(
        received.as_str().is_some_and(|r| r.starts_with("2024-03-10T08:00:00")),
        "receivedDateTime: {received}"
    );

    emu.deliver(SUPPORT, "Arrives now").await;
    let second = delta_round(&emu, &token, &first.delta_link, &[]).await;
    assert_eq!(second.subjects(), HashSet::from(["Arrives now".to_string()]));
}

#[tokio::test]
async fn delta_replay_repeats_an_item_across_pages() {
    let (emu, token) = setup().await;
    emu.settings(json!({"delta_replay": true})).await;
    for i in 0..5 {
        emu.deliver(SUPPORT, &format!("Replay {i}")).await;
    }
    let round = delta_round(&emu, &token, &inbox_delta(), &[MAX2]).await;
    assert_eq!(round.subjects().len(), 5, "every message arrives");
    assert!(
        round.items().len() > 5,
        "at least one item is repeated: {:?}",
        round.pages
    );
}

#[tokio::test]
async fn expire_delta_control_makes_links_410_until_a_fresh_start() {
    let (emu, token) = setup().await;
    for subject in ["One", "Two", "Three"] {
        emu.deliver(SUPPORT, subject).await;
    }
    let round = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    let page = gget_h(&emu, &token, &inbox_delta(), &[("Prefer", "odata.maxpagesize=1")]).await;
    let next = page.body["@odata.nextLink"]
        .as_str()
        .expect("a nextLink at one item per page")
        .to_string();

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{SUPPORT}/expire-delta"), json!({}))
        .await;
    assert!(status.is_success(), "expire-delta: {status} {body}");

    for link in [&round.delta_link, &next] {
        let gone = gget(&emu, &token, link).await;
        assert_eq!(
            assert_graph_error(&gone, StatusCode::GONE),
            "SyncStateNotFound",
            "{link}"
        );
    }

    let fresh = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    assert_eq!(fresh.subjects().len(), 3, "a request without a token starts over");
}

#[tokio::test]
async fn delta_link_expires_by_age() {
    let (emu, token) = setup().await;
    emu.settings(json!({"delta_max_age_secs": 60})).await;
    emu.deliver(SUPPORT, "Aging").await;
    let first = delta_round(&emu, &token, &inbox_delta(), &[]).await;

    let (status, _) = emu.post("/_emulator/clock", json!({"advance_secs": 30})).await;
    assert_eq!(status, StatusCode::OK);
    let second = delta_round(&emu, &token, &first.delta_link, &[]).await;

    let (status, _) = emu.post("/_emulator/clock", json!({"advance_secs": 61})).await;
    assert_eq!(status, StatusCode::OK);
    let gone = gget(&emu, &token, &second.delta_link).await;
    assert_eq!(assert_graph_error(&gone, StatusCode::GONE), "SyncStateNotFound");
}

#[tokio::test]
async fn delta_link_expires_after_newer_generations() {
    let (emu, token) = setup().await;
    emu.settings(json!({"delta_max_generations": 2})).await;
    emu.deliver(SUPPORT, "Gen 0").await;
    let mut links = vec![delta_round(&emu, &token, &inbox_delta(), &[]).await.delta_link];
    for generation in 1..=3 {
        emu.deliver(SUPPORT, &format!("Gen {generation}")).await;
        let round = delta_round(&emu, &token, links.last().unwrap(), &[]).await;
        assert_eq!(round.subjects(), HashSet::from([format!("Gen {generation}")]));
        links.push(round.delta_link);
    }

    let oldest = gget(&emu, &token, &links[0]).await;
    assert_eq!(
        assert_graph_error(&oldest, StatusCode::GONE),
        "SyncStateNotFound",
        "a link 3 generations old"
    );
    let newest = gget(&emu, &token, &links[3]).await;
    assert_eq!(
        newest.status,
        StatusCode::OK,
        "the newest link still works: {}",
        newest.text
    );
}

// ---------------------------------------------------------------------------
// Reading messages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn message_body_is_html_by_default() {
    let (emu, token) = setup().await;
    // Delivered as plain text: without a Prefer header Graph still answers HTML.
    let plain = emu.deliver(SUPPORT, "Plain one").await;
    let path = format!("{}/messages/{}", user(SUPPORT), plain["id"].as_str().unwrap());
    let default = gget(&emu, &token, &path).await;
    assert_eq!(default.status, StatusCode::OK, "{}", default.text);
    assert_eq!(default.body["body"]["contentType"], "html", "{}", default.body["body"]);
    assert!(
        default.body["body"]["content"]
            .as_str()
            .unwrap()
            .contains("Body of Plain one")
    );

    let html = gget_h(&emu, &token, &path, &[("Prefer", "outlook.body-content-type=\"html\"")]).await;
    assert_eq!(html.body["body"]["contentType"], "html");
    let applied = html.header("preference-applied").expect("Preference-Applied header");
    assert!(
        applied.contains("outlook.body-content-type=\"html\""),
        "Preference-Applied: {applied}"
    );
}

#[tokio::test]
async fn prefer_text_body_is_applied_and_echoed() {
    let (emu, token) = setup().await;
    let plain = emu.deliver(SUPPORT, "Plain one").await;
    let mut html = message_from("customer@example.net", SUPPORT, "Html one");
    html["body"] =
        json!({"content_type": "html", "content": "<html><body><p>Hello <b>bold</b> world</p></body></html>"});
    let html = deliver_with(&emu, SUPPORT, html).await;
    let prefer = ("Prefer", "outlook.body-content-type=\"text\"");

    let path = format!("{}/messages/{}", user(SUPPORT), plain["id"].as_str().unwrap());
    let text = gget_h(&emu, &token, &path, &[prefer]).await;
    assert_eq!(text.status, StatusCode::OK, "{}", text.text);
    assert_eq!(text.body["body"]["contentType"], "text");
    assert!(
        text.body["body"]["content"]
            .as_str()
            .unwrap()
            .contains("Body of Plain one")
    );
    let applied = text.header("preference-applied").expect("Preference-Applied header");
    assert!(
        applied.contains("outlook.body-content-type=\"text\""),
        "Preference-Applied: {applied}"
    );

    let html_path = format!("{}/messages/{}", user(SUPPORT), html["id"].as_str().unwrap());
    let default = gget(&emu, &token, &html_path).await;
    assert_eq!(default.body["body"]["contentType"], "html");
    assert!(
        default.body["body"]["content"]
            .as_str()
            .unwrap()
            .contains("<b>bold</b>")
    );
    let as_text = gget_h(&emu, &token, &html_path, &[prefer]).await;
    let content = as_text.body["body"]["content"].as_str().unwrap();
    assert_eq!(as_text.body["body"]["contentType"], "text");
    assert!(
        content.contains("bold") && !content.contains("<b>"),
        "html converted to text: {content}"
    );
}

#[tokio::test]
async fn internet_message_headers_only_when_selected() {
    let (emu, token) = setup().await;
    let mut message = message_from("customer@example.net", SUPPORT, "Headers");
    message["internet_message_headers"] = json!([{"name": "X-Ticket", "value": "T-42"}]);
    let answer = deliver_with(&emu, SUPPORT, message).await;
    let path = format!("{}/messages/{}", user(SUPPORT), answer["id"].as_str().unwrap());

    let plain = gget(&emu, &token, &path).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
    assert!(
        plain.body.get("internetMessageHeaders").is_none(),
        "not returned without $select"
    );
    assert_eq!(plain.body["internetMessageId"], answer["internet_message_id"]);

    let selected = gget(&emu, &token, &format!("{path}?$select=subject,internetMessageHeaders")).await;
    assert_eq!(selected.status, StatusCode::OK, "{}", selected.text);
    assert!(selected.body.get("body").is_none(), "$select leaves out body");
    let headers = selected.body["internetMessageHeaders"]
        .as_array()
        .expect("internetMessageHeaders");
    let find = |name: &str| {
        headers
            .iter()
            .find(|h| h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|h| h["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(find("Message-ID").as_deref(), answer["internet_message_id"].as_str());
    assert_eq!(find("X-Ticket").as_deref(), Some("T-42"));
}

#[tokio::test]
async fn immutable_id_survives_a_move_while_the_regular_id_changes() {
    let (emu, token) = setup().await;
    let answer = emu.deliver(SUPPORT, "Immutable").await;
    let id = answer["id"].as_str().unwrap();
    let immutable = answer["immutable_id"].as_str().expect("immutable_id");
    let prefer = ("Prefer", "IdType=\"ImmutableId\"");

    let before = gget_h(&emu, &token, &format!("{}/messages/{id}", user(SUPPORT)), &[prefer]).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    assert_eq!(before.body["id"], immutable);

    let moved = gpost(
        &emu,
        &token,
        &format!("{}/messages/{id}/move", user(SUPPORT)),
        json!({"destinationId": "archive"}),
    )
    .await;
    assert_eq!(moved.status, StatusCode::CREATED, "{}", moved.text);
    let new_id = moved.body["id"].as_str().unwrap();
    assert_ne!(new_id, id, "the regular id changes on move");

    let after = gget_h(&emu, &token, &format!("{}/messages/{new_id}", user(SUPPORT)), &[prefer]).await;
    assert_eq!(after.body["id"], immutable, "the immutable id stays: {}", after.text);
    let by_immutable = gget_h(
        &emu,
        &token,
        &format!("{}/messages/{immutable}", user(SUPPORT)),
        &[prefer],
    )
    .await;
    assert_eq!(by_immutable.status, StatusCode::OK, "{}", by_immutable.text);
    assert_eq!(by_immutable.body["subject"], "Immutable");

    let moved_again = call(
        &emu,
        Method::POST,
        Some(&token),
        &format!("{}/messages/{new_id}/move", user(SUPPORT)),
        &[prefer],
        Some(&json!({"destinationId": "deleteditems"})),
    )
    .await;
    assert_eq!(moved_again.status, StatusCode::CREATED, "{}", moved_again.text);
    assert_eq!(
        moved_again.body["id"], immutable,
        "move with ImmutableId answers the same id"
    );
}

#[tokio::test]
async fn mime_value_has_headers_then_body() {
    let (emu, token) = setup().await;
    let answer = emu.deliver(SUPPORT, "Mime check").await;
    let path = format!("{}/messages/{}/$value", user(SUPPORT), answer["id"].as_str().unwrap());
    let resp = gget(&emu, &token, &path).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);

    let mime = resp.text.replace("\r\n", "\n");
    let (head, body) = mime
        .split_once("\n\n")
        .expect("a blank line separates headers and body");
    let header = |name: &str| {
        head.lines().find_map(|line| {
            line.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    assert_eq!(header("Subject").as_deref(), Some("Mime check"));
    assert_eq!(header("Message-ID").as_deref(), answer["internet_message_id"].as_str());
    assert!(body.contains("Body of Mime check"), "body after the headers: {mime}");
}

#[tokio::test]
async fn attachments_are_listed_and_fetched_with_their_bytes() {
    let (emu, token) = setup().await;
    let report = b"Quarterly numbers".to_vec();
    let logo: Vec<u8> = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3, 255];
    let mut message = message_from("customer@example.net", SUPPORT, "With files");
    message["attachments"] = json!([
        {"name": "report.txt", "content_type": "text/plain", "content_base64": B64.encode(&report)},
        {"name": "logo.png", "content_type": "image/png", "content_base64": B64.encode(&logo), "is_inline": true, "content_id": "logo-1"}
    ]);
    let answer = deliver_with(&emu, SUPPORT, message).await;
    let message_path = format!("{}/messages/{}", user(SUPPORT), answer["id"].as_str().unwrap());

    let msg = gget(&emu, &token, &message_path).await;
    assert_eq!(msg.body["hasAttachments"], true, "a non-inline attachment counts");

    let list = gget(&emu, &token, &format!("{message_path}/attachments")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let by_name = |name: &str| {
        items
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };

    let file = by_name("report.txt");
    assert_eq!(file["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(file["contentType"], "text/plain");
    assert_eq!(file["size"], report.len());
    assert_eq!(file["isInline"], false);
    assert_eq!(B64.decode(file["contentBytes"].as_str().unwrap()).unwrap(), report);

    let inline = by_name("logo.png");
    assert_eq!(inline["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(inline["isInline"], true);
    assert_eq!(inline["contentType"], "image/png");
    assert_eq!(
        inline["contentId"].as_str().map(|c| c.trim_matches(['<', '>'])),
        Some("logo-1")
    );
    assert_eq!(B64.decode(inline["contentBytes"].as_str().unwrap()).unwrap(), logo);

    let one = gget(
        &emu,
        &token,
        &format!("{message_path}/attachments/{}", file["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["name"], "report.txt");
    assert_eq!(one.body["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(B64.decode(one.body["contentBytes"].as_str().unwrap()).unwrap(), report);

    let missing = gget(
        &emu,
        &token,
        &format!("{message_path}/attachments/AAMkAnoSuchAttachment="),
    )
    .await;
    assert_graph_error(&missing, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn has_attachments_is_false_with_only_inline_attachments() {
    let (emu, token) = setup().await;
    let mut message = message_from("customer@example.net", SUPPORT, "Inline only");
    message["body"] = json!({"content_type": "html", "content": "<p><img src=\"cid:sig-1\"></p>"});
    message["attachments"] = json!([
        {"name": "sig.png", "content_type": "image/png", "content_base64": B64.encode([1u8, 2, 3]), "is_inline": true, "content_id": "sig-1"}
    ]);
    let answer = deliver_with(&emu, SUPPORT, message).await;
    let path = format!("{}/messages/{}", user(SUPPORT), answer["id"].as_str().unwrap());

    let msg = gget(&emu, &token, &path).await;
    assert_eq!(msg.status, StatusCode::OK, "{}", msg.text);
    assert_eq!(msg.body["hasAttachments"], false);
    let list = gget(&emu, &token, &format!("{path}/attachments")).await;
    assert_eq!(
        list.body["value"].as_array().map(Vec::len),
        Some(1),
        "the inline attachment is still listed"
    );
}

#[tokio::test]
async fn folder_messages_page_with_top_and_next_link() {
    let (emu, token) = setup().await;
    for i in 0..5 {
        emu.deliver(SUPPORT, &format!("Listed {i}")).await;
    }
    let mut url = format!("{}/mailFolders/inbox/messages?$top=2", user(SUPPORT));
    let mut subjects = Vec::new();
    let mut pages = 0;
    loop {
        let resp = gget(&emu, &token, &url).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        let value = resp.body["value"].as_array().unwrap();
        assert!(value.len() <= 2, "$top=2 honoured");
        subjects.extend(value.iter().map(|m| m["subject"].as_str().unwrap().to_string()));
        pages += 1;
        match resp.body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&emu.url), "nextLink is absolute: {next}");
                url = next.to_string();
            }
            None => break,
        }
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(pages, 3, "5 messages at 2 per page");
    let distinct: HashSet<&String> = subjects.iter().collect();
    assert_eq!(
        (subjects.len(), distinct.len()),
        (5, 5),
        "every message exactly once: {subjects:?}"
    );
}
