//! The control API (`/_emulator/…`, docs/emulator.md).

use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT, status_json};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const NOBODY: &str = "nobody@contoso.example";

/// Messages of a folder, from the control API.
async fn folder(emu: &Emu, address: &str, folder: &str) -> Vec<Value> {
    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{address}/folders/{folder}/messages"))
        .await;
    assert_eq!(status, StatusCode::OK, "folder {folder} of {address}: {body}");
    body.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("folder listing is an array: {body}"))
}

/// A raw token request; status and body.
async fn token_request(emu: &Emu, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = emu
        .http
        .post(emu.at(&format!("/{tenant}/oauth2/v2.0/token")))
        .form(form)
        .send()
        .await
        .unwrap();
    status_json(resp).await
}

async fn secret_request(emu: &Emu, client: &str, secret: &str) -> (StatusCode, Value) {
    token_request(
        emu,
        TENANT,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", GRAPH_SCOPE),
        ],
    )
    .await
}

async fn refresh_request(emu: &Emu, refresh_token: &str) -> (StatusCode, Value) {
    token_request(
        emu,
        TENANT,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// Issues a delegated refresh token through the control API.
async fn issue_refresh_token(emu: &Emu, address: &str) -> String {
    let (status, body) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "address": address,
                   "scopes": "Mail.ReadWrite Mail.Send offline_access"}),
        )
        .await;
    assert!(status.is_success(), "refresh-tokens: {status} {body}");
    body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("refresh_token: {body}"))
        .to_string()
}

/// Asserts an identity error carries the AADSTS code.
fn assert_aadsts(status: StatusCode, body: &Value, expected_status: StatusCode, error: &str, code: u64) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(
        body["error_codes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|v| v == code)),
        "error_codes has {code}: {body}"
    );
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!("AADSTS{code}:")),
        "error_description: {body}"
    );
}

async fn advance_clock(emu: &Emu, secs: i64) -> (StatusCode, Value) {
    emu.post("/_emulator/clock", json!({"advance_secs": secs})).await
}

fn rfc3339(value: &Value) -> OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("a time string: {value}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// A control error: 4xx with a JSON body whose text names `needle` (case-insensitive).
fn assert_control_error(status: StatusCode, body: &Value, needles: &[&str]) {
    assert!(status.is_client_error(), "expected 4xx, got {status}: {body}");
    assert!(!body.is_null(), "the error body is JSON");
    let text = body.to_string().to_lowercase();
    assert!(
        needles.iter().any(|n| text.contains(&n.to_lowercase())),
        "the error names the problem ({needles:?}): {body}"
    );
}

#[tokio::test]
async fn apps_register_and_issue_tokens() {
    let emu = Emu::start().await;
    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                   "roles": ["Mail.ReadWrite", "Mail.Send"], "display_name": "Contoso daemon"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["client_id"], CLIENT, "{body}");

    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].is_string());

    let (status, body) = secret_request(&emu, "00000000-0000-0000-0000-00000000beef", SECRET).await;
    assert_ne!(status, StatusCode::OK, "an unregistered app gets no token: {body}");
}

#[tokio::test]
async fn mailboxes_have_the_well_known_folders() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let (status, body) = emu
        .post(
            "/_emulator/mailboxes",
            json!({"tenant_id": TENANT, "address": ALICE, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert_eq!(body["address"], ALICE, "{body}");
    let user_id = body["id"].as_str().unwrap().to_string();

    let token = emu.default_token().await;
    let (status, _, folders) = emu.graph_get(&token, &format!("/v1.0/users/{ALICE}/mailFolders")).await;
    assert_eq!(status, StatusCode::OK, "{folders}");
    let names: Vec<&str> = folders["value"]
        .as_array()
        .unwrap_or_else(|| panic!("value array: {folders}"))
        .iter()
        .filter_map(|f| f["displayName"].as_str())
        .collect();
    for expected in ["Inbox", "Drafts", "Sent Items", "Deleted Items"] {
        assert!(names.contains(&expected), "{expected} among {names:?}");
    }

    // The mailbox answers by its id too.
    let (status, _, inbox) = emu
        .graph_get(&token, &format!("/v1.0/users/{user_id}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["displayName"], "Inbox");
    for well_known in ["sentitems", "drafts", "deleteditems", "junkemail", "archive"] {
        assert!(
            folder(&emu, ALICE, well_known).await.is_empty(),
            "{well_known} starts empty"
        );
    }
}

#[tokio::test]
async fn deliver_and_list_messages() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;

    let simple = emu.deliver(ALICE, "Order 1234").await;
    for field in ["id", "immutable_id", "internet_message_id", "conversation_id"] {
        assert!(
            simple[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {simple}"
        );
    }
    let inbox = folder(&emu, ALICE, "inbox").await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    let listed = &inbox[0];
    assert_eq!(listed["id"], simple["id"]);
    assert_eq!(listed["internet_message_id"], simple["internet_message_id"]);
    assert_eq!(listed["subject"], "Order 1234");
    assert_eq!(listed["from"]["address"], "customer@example.net", "{listed}");
    assert_eq!(listed["is_read"], false, "{listed}");
    assert_eq!(listed["is_draft"], false, "{listed}");

    // Explicit folder, headers, attachment, read flag.
    let (status, rich) = emu
        .post(
            &format!("/_emulator/mailboxes/{ALICE}/messages"),
            json!({
                "folder": "junkemail",
                "from": {"name": "Spammer", "address": "spam@example.net"},
                "to": [{"name": "Alice", "address": ALICE}],
                "subject": "Cheap stuff",
                "body": {"content_type": "html", "content": "<p>buy</p>"},
                "internet_message_headers": [{"name": "X-Ticket", "value": "T-42"}],
                "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}],
                "is_read": true
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rich}");
    assert_eq!(
        folder(&emu, ALICE, "inbox").await.len(),
        1,
        "the junk message is not in the inbox"
    );
    let junk = folder(&emu, ALICE, "junkemail").await;
    assert_eq!(junk.len(), 1, "{junk:?}");
    let listed = &junk[0];
    assert_eq!(listed["id"], rich["id"]);
    assert_eq!(listed["is_read"], true, "{listed}");
    let attachments = listed["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("attachments: {listed}"));
    assert_eq!(attachments.len(), 1, "{listed}");
    assert_eq!(attachments[0]["name"], "a.txt");
    assert!(attachments[0]["size"].as_u64().is_some_and(|s| s >= 5), "{listed}");
    let headers = listed["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("headers: {listed}"));
    assert!(
        headers.iter().any(|h| h["name"] == "X-Ticket" && h["value"] == "T-42"),
        "custom header kept: {listed}"
    );

    // Graph sees the same message; the folder listing also accepts the folder id.
    let token = emu.default_token().await;
    let id = rich["id"].as_str().unwrap();
    let (status, _, message) = emu
        .graph_get(&token, &format!("/v1.0/users/{ALICE}/messages/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["subject"], "Cheap stuff");
    assert_eq!(message["internetMessageId"], rich["internet_message_id"]);
    let (status, _, junk_folder) = emu
        .graph_get(&token, &format!("/v1.0/users/{ALICE}/mailFolders/junkemail"))
        .await;
    assert_eq!(status, StatusCode::OK, "{junk_folder}");
    let folder_id = junk_folder["id"].as_str().unwrap();
    let by_id = folder(&emu, ALICE, folder_id).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["id"], rich["id"]);
}

#[tokio::test]
async fn refresh_tokens_redeem_for_delegated_access() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;

    let refresh_token = issue_refresh_token(&emu, ALICE).await;
    let (status, body) = refresh_request(&emu, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["scope"].is_string(), "delegated answers carry scope: {body}");
    let rotated = body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a new refresh token: {body}"))
        .to_string();
    let access = body["access_token"].as_str().unwrap().to_string();

    let (status, _, inbox) = emu.graph_get(&access, "/v1.0/me/mailFolders/inbox").await;
    assert_eq!(status, StatusCode::OK, "delegated token reads /me: {inbox}");

    // Rotation keeps the old one valid (Entra keeps it until it expires), and the new one works.
    for token in [&refresh_token, &rotated] {
        let (status, body) = refresh_request(&emu, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn revoke_refresh_tokens() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    let alice = issue_refresh_token(&emu, ALICE).await;
    let bob = issue_refresh_token(&emu, BOB).await;

    let (status, body) = emu
        .post("/_emulator/revoke", json!({"address": ALICE, "aadsts": 50173}))
        .await;
    assert!(status.is_success(), "revoke: {status} {body}");
    let (status, body) = refresh_request(&emu, &alice).await;
    assert_aadsts(status, &body, StatusCode::BAD_REQUEST, "invalid_grant", 50173);
    let (status, body) = refresh_request(&emu, &bob).await;
    assert_eq!(status, StatusCode::OK, "another user's token still works: {body}");

    let (status, body) = emu
        .post("/_emulator/revoke", json!({"client_id": CLIENT, "aadsts": 700082}))
        .await;
    assert!(status.is_success(), "revoke: {status} {body}");
    let (status, body) = refresh_request(&emu, &bob).await;
    assert_aadsts(status, &body, StatusCode::BAD_REQUEST, "invalid_grant", 700082);
}

#[tokio::test]
async fn secret_expired_and_rotated() {
    let emu = Emu::start().await;
    emu.default_app().await;
    let other = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
    emu.app(TENANT, other, "old-secret", &["Mail.ReadWrite"]).await;

    let (status, body) = emu
        .post(&format!("/_emulator/apps/{CLIENT}/secret"), json!({"expired": true}))
        .await;
    assert!(status.is_success(), "expire: {status} {body}");
    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert_aadsts(status, &body, StatusCode::UNAUTHORIZED, "invalid_client", 7000222);

    let (status, body) = emu
        .post(
            &format!("/_emulator/apps/{other}/secret"),
            json!({"rotate_to": "new-secret"}),
        )
        .await;
    assert!(status.is_success(), "rotate: {status} {body}");
    let (status, body) = secret_request(&emu, other, "new-secret").await;
    assert_eq!(status, StatusCode::OK, "the new secret works: {body}");
    let (status, body) = secret_request(&emu, other, "old-secret").await;
    assert_aadsts(status, &body, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
}

#[tokio::test]
async fn access_deny_blocks_app_only_calls() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{ALICE}/access"), json!({"deny": true}))
        .await;
    assert!(status.is_success(), "deny: {status} {body}");
    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Access to OData is disabled")),
        "{body}"
    );
    let (status, _, body) = emu
        .graph_get(&token, &format!("/v1.0/users/{BOB}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK, "other mailboxes are not denied: {body}");

    // Delegated access is not an application access policy matter.
    let refresh_token = issue_refresh_token(&emu, ALICE).await;
    let (status, body) = refresh_request(&emu, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delegated = body["access_token"].as_str().unwrap();
    let (status, _, body) = emu.graph_get(delegated, "/v1.0/me/mailFolders/inbox").await;
    assert_eq!(status, StatusCode::OK, "delegated calls are unaffected: {body}");

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{ALICE}/access"), json!({"deny": false}))
        .await;
    assert!(status.is_success(), "allow: {status} {body}");
    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(status, StatusCode::OK, "lifted: {body}");
}

#[tokio::test]
async fn an_access_policy_denial_uses_the_documented_wording_and_rbac_its_own() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");
    for (via, message) in [
        (json!("policy"), "Access to OData is disabled."),
        (
            json!("rbac"),
            "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
        ),
    ] {
        let (status, body) = emu
            .post(
                &format!("/_emulator/mailboxes/{ALICE}/access"),
                json!({"deny": true, "via": via}),
            )
            .await;
        assert!(status.is_success(), "deny via {via}: {status} {body}");
        let (status, _, body) = emu.graph_get(&token, &inbox).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
        assert_eq!(body["error"]["message"], message, "{body}");
    }
    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{ALICE}/access"),
            json!({"deny": true, "via": "firewall"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn changed_roles_reach_tokens_issued_afterwards() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    let before = emu.default_token().await;
    let (status, body) = emu
        .post(
            &format!("/_emulator/apps/{CLIENT}/roles"),
            json!({"roles": "Mail.Read"}),
        )
        .await;
    assert!(status.is_success(), "roles: {status} {body}");
    assert_eq!(body["roles"], json!(["Mail.Read"]), "{body}");
    let after = emu.default_token().await;
    let roles = |token: &str| -> Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["roles"].clone()
    };
    assert_eq!(roles(&after), json!(["Mail.Read"]));
    // Reading still works; writing needs Mail.ReadWrite, which the new token lacks.
    let (status, _, _) = emu
        .graph_get(&after, &format!("/v1.0/users/{ALICE}/mailFolders/inbox"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let draft = json!({"subject": "x"});
    let (status, _, body) = emu
        .graph_post(&after, &format!("/v1.0/users/{ALICE}/messages"), draft.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A token issued before the change keeps its roles until it expires, as in Entra.
    let (status, _, body) = emu
        .graph_post(&before, &format!("/v1.0/users/{ALICE}/messages"), draft)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = emu
        .post("/_emulator/apps/no-such-app/roles", json!({"roles": []}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn faults_endpoint_creates_lists_and_clears() {
    let emu = Emu::start().await;
    let (status, body) = emu
        .post("/_emulator/faults", json!({"path_prefix": "/v1.0/", "status": 500}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body["id"].is_null(), "{body}");
    let (status, listed) = emu.get("/_emulator/faults").await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed.to_string().contains("/v1.0/"), "{listed}");
    let resp = emu.http.delete(emu.at("/_emulator/faults")).send().await.unwrap();
    assert!(resp.status().is_success());
    let (_, listed) = emu.get("/_emulator/faults").await;
    assert!(!listed.to_string().contains("/v1.0/"), "cleared: {listed}");
}

/// The log entry answering a request whose path is `path`, the latest one.
fn entry<'a>(log: &'a [Value], method: &str, path: &str) -> &'a Value {
    log.iter()
        .rev()
        .find(|e| e["method"] == method && e["path"] == path)
        .unwrap_or_else(|| panic!("{method} {path} logged: {log:#?}"))
}

fn as_seconds(value: &Value) -> Option<f64> {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

#[tokio::test]
async fn request_log_records_what_happened() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.mailbox(TENANT, BOB).await;
    emu.settings(json!({"token_lifetime_secs": 300})).await;
    let token = emu.default_token().await;
    let alice_inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");
    let bob_inbox = format!("/v1.0/users/{BOB}/mailFolders/inbox");

    let crid = uuid::Uuid::new_v4().to_string();
    let resp = emu
        .http
        .get(emu.at(&alice_inbox))
        .bearer_auth(&token)
        .header("client-request-id", &crid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = emu
        .http
        .get(emu.at(&format!("/v1.0/users/{ALICE}/messages?$top=1")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = emu
        .http
        .get(emu.at(&bob_inbox))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = emu.http.get(emu.at(&bob_inbox)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (status, body) = emu
        .post(
            "/_emulator/faults",
            json!({"path_prefix": bob_inbox, "status": 429, "retry_after": "7", "times": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = emu.graph_get(&token, &bob_inbox).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    let (status, body) = advance_clock(&emu, 400).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = emu.graph_get(&token, &alice_inbox).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired token: {body}");

    let log = emu.requests().await;
    assert!(
        log.iter()
            .all(|e| !e["path"].as_str().unwrap_or("").starts_with("/_emulator")),
        "control calls are not logged"
    );

    let token_entry = entry(&log, "POST", &format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(token_entry["status"], 200, "{token_entry}");
    assert_eq!(token_entry["app"], CLIENT, "token request names the app: {token_entry}");

    let ok = log
        .iter()
        .find(|e| e["path"] == alice_inbox.as_str() && e["status"] == 200)
        .unwrap_or_else(|| panic!("successful inbox read: {log:#?}"));
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["app"], CLIENT, "{ok}");
    assert_eq!(ok["mailbox"], ALICE, "{ok}");
    assert_eq!(ok["token"], "valid", "{ok}");
    assert_eq!(ok["headers"]["client-request-id"], crid.as_str(), "{ok}");
    assert!(ok["retry_after"].is_null(), "{ok}");
    assert!(ok["batch"].is_null(), "{ok}");
    assert!(ok["seq"].is_u64(), "{ok}");
    assert!(ok["duration_ms"].is_number(), "{ok}");
    rfc3339(&ok["time"]);

    let with_query = entry(&log, "GET", &format!("/v1.0/users/{ALICE}/messages"));
    assert!(
        with_query["query"].as_str().is_some_and(|q| q.contains("top=1")),
        "query recorded: {with_query}"
    );

    let bob_entries: Vec<&Value> = log.iter().filter(|e| e["path"] == bob_inbox.as_str()).collect();
    assert_eq!(bob_entries.len(), 3, "{bob_entries:#?}");
    assert_eq!(bob_entries[0]["token"], "invalid", "{:?}", bob_entries[0]);
    assert_eq!(bob_entries[0]["status"], 401);
    assert_eq!(bob_entries[1]["token"], "none", "{:?}", bob_entries[1]);
    assert_eq!(bob_entries[2]["status"], 429);
    assert_eq!(
        as_seconds(&bob_entries[2]["retry_after"]),
        Some(7.0),
        "{:?}",
        bob_entries[2]
    );

    let expired = log.last().unwrap();
    assert_eq!(expired["path"], alice_inbox.as_str());
    assert_eq!(expired["status"], 401);
    assert_eq!(expired["token"], "expired", "{expired}");

    // Sequence numbers grow; filters.
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq grows: {seqs:?}");
    let last = *seqs.last().unwrap();
    emu.graph_get(&token, &bob_inbox).await;
    let (_, since) = emu.get(&format!("/_emulator/requests?since={last}")).await;
    let since = since["requests"].as_array().cloned().unwrap_or_default();
    assert!(
        !since.is_empty() && since.iter().all(|e| e["seq"].as_u64().unwrap() >= last),
        "since: {since:#?}"
    );
    assert!(
        since.iter().any(|e| e["seq"].as_u64().unwrap() > last),
        "the newer request is returned"
    );
    let (_, only_bob) = emu
        .get(&format!("/_emulator/requests?path_prefix=/v1.0/users/{BOB}"))
        .await;
    let only_bob = only_bob["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(only_bob.len(), 4, "{only_bob:#?}");
    assert!(only_bob.iter().all(|e| e["path"] == bob_inbox.as_str()));
}

#[tokio::test]
async fn reset_forgets_everything() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.deliver(ALICE, "Before reset").await;
    emu.default_token().await;
    emu.settings(json!({"latency_ms": 5, "delta_page_size": 3})).await;
    let (status, _) = emu
        .post("/_emulator/faults", json!({"path_prefix": "/v1.0/", "status": 500}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = emu.post("/_emulator/reset", json!({})).await;
    assert!(status.is_success(), "reset: {status} {body}");

    assert!(emu.requests().await.is_empty(), "the request log is empty");
    let (status, settings) = emu.get("/_emulator/settings").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        settings["latency_ms"].as_f64(),
        Some(0.0),
        "settings back to defaults: {settings}"
    );
    assert_eq!(settings["delta_page_size"].as_f64(), Some(10.0), "{settings}");
    let (_, faults) = emu.get("/_emulator/faults").await;
    assert!(!faults.to_string().contains("/v1.0/"), "faults cleared: {faults}");
    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{ALICE}/folders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the mailbox is gone: {body}");

    let (status, body) = secret_request(&emu, CLIENT, SECRET).await;
    assert!(status.is_client_error(), "the old app is gone: {status} {body}");
    assert!(body["error"].is_string(), "identity error body: {body}");
}

#[tokio::test]
async fn settings_defaults_and_partial_updates() {
    let emu = Emu::start().await;
    let (status, settings) = emu.get("/_emulator/settings").await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    let defaults = json!({
        "token_lifetime_secs": null,
        "ext_expires_extra_secs": 3600,
        "refresh_in_secs": null,
        "consent": "allow",
        "delta_page_size": 10,
        "delta_replay": false,
        "delta_max_generations": 16,
        "delta_max_age_secs": null,
        "throttle_concurrency": 4,
        "throttle_requests": 10000,
        "throttle_window_secs": 600,
        "throttle_retry_after_secs": 2.5,
        "latency_ms": 0
    });
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    };
    for (key, expected) in defaults.as_object().unwrap() {
        let actual = settings
            .get(key)
            .unwrap_or_else(|| panic!("settings lack {key}: {settings}"));
        assert!(
            same(actual, expected),
            "default {key}: expected {expected}, got {actual}"
        );
    }

    emu.settings(json!({"latency_ms": 7, "consent": "deny", "throttle_retry_after_secs": 1.25}))
        .await;
    let (_, changed) = emu.get("/_emulator/settings").await;
    for (key, expected) in defaults.as_object().unwrap() {
        let expected = match key.as_str() {
            "latency_ms" => json!(7),
            "consent" => json!("deny"),
            "throttle_retry_after_secs" => json!(1.25),
            _ => expected.clone(),
        };
        assert!(
            same(&changed[key], &expected),
            "after update {key}: expected {expected}, got {}",
            changed[key]
        );
    }
}

#[tokio::test]
async fn clock_moves_forward_only_and_expires_tokens() {
    let emu = Emu::start().await;
    emu.default_app().await;
    emu.mailbox(TENANT, ALICE).await;
    emu.settings(json!({"token_lifetime_secs": 300})).await;
    let token = emu.default_token().await;
    let inbox = format!("/v1.0/users/{ALICE}/mailFolders/inbox");

    let before = OffsetDateTime::now_utc();
    let (status, body) = advance_clock(&emu, 3600).await;
    let after = OffsetDateTime::now_utc();
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = rfc3339(&body["now"]);
    let hour = time::Duration::seconds(3600);
    let slack = time::Duration::seconds(1);
    assert!(
        first >= before + hour - slack && first <= after + hour + slack,
        "now {first} ≈ real time + 1 h"
    );

    let (status, _, body) = emu.graph_get(&token, &inbox).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the 300 s token expired on the emulator clock: {body}"
    );
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken", "{body}");

    let (status, body) = advance_clock(&emu, 60).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = rfc3339(&body["now"]);
    assert!(
        second >= first + time::Duration::seconds(60) - slack,
        "{second} is a minute after {first}"
    );

    let (status, body) = advance_clock(&emu, -600).await;
    if status.is_success() {
        assert!(rfc3339(&body["now"]) >= second, "the clock never goes back: {body}");
    } else {
        assert!(status.is_client_error(), "{status} {body}");
    }

    // A token issued now lives on the advanced clock.
    let fresh = emu.default_token().await;
    let (status, _, body) = emu.graph_get(&fresh, &inbox).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Finds mailbox addresses of `domain` named in a load answer.
fn addresses_in(value: &Value, domain: &str, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.ends_with(&format!("@{domain}")) && !out.contains(s) => {
            out.push(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| addresses_in(v, domain, out)),
        Value::Object(map) => map.values().for_each(|v| addresses_in(v, domain, out)),
        _ => {}
    }
}

/// Runs the load generator; returns the addresses of the mailboxes it made.
///
/// The docs name neither the answer nor the address scheme: take the addresses the
/// answer names; if it names fewer than were asked for, continue the numbering of the
/// first one (`{prefix}{n}@{domain}`).
pub(crate) async fn load(emu: &Emu, request: Value) -> Vec<String> {
    let (status, body) = emu.post("/_emulator/load", request.clone()).await;
    assert!(status.is_success(), "load: {status} {body}");
    let domain = request["domain"].as_str().expect("tests name the domain");
    let prefix = request["address_prefix"].as_str().expect("tests name the prefix");
    let wanted = request["mailboxes"].as_u64().expect("tests name the count") as usize;
    let mut found = Vec::new();
    addresses_in(&body, domain, &mut found);
    found.sort();
    if found.len() < wanted {
        let first = found
            .first()
            .unwrap_or_else(|| panic!("the load answer names no mailbox of {domain}: {body}"));
        let start: usize = first
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(&format!("@{domain}")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{first} is not {prefix}<n>@{domain}"));
        found = (start..start + wanted)
            .map(|n| format!("{prefix}{n}@{domain}"))
            .collect();
    }
    found
}

#[tokio::test]
async fn load_generator_fills_mailboxes() {
    let emu = Emu::start().await;
    let addresses = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 3, "messages_per_mailbox": 5, "body_bytes": 1024,
               "attachment_share": 0.4, "attachment_bytes": 2048,
               "address_prefix": "load", "domain": "load.example"}),
    )
    .await;
    assert_eq!(
        addresses.len(),
        3,
        "the answer names the three mailboxes: {addresses:?}"
    );

    for address in &addresses {
        let inbox = folder(&emu, address, "inbox").await;
        assert_eq!(inbox.len(), 5, "{address}: {inbox:#?}");
        for message in &inbox {
            let content = message["body"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("body content: {message}"));
            assert!(
                (900..=4096).contains(&content.len()),
                "about 1 KB body, got {} bytes",
                content.len()
            );
            for attachment in message["attachments"].as_array().into_iter().flatten() {
                assert!(attachment["size"].as_u64().is_some_and(|s| s > 0), "{attachment}");
            }
        }
    }

    // The app exists and reads the generated mail over Graph.
    let token = emu.default_token().await;
    let (status, _, page) = emu
        .graph_get(
            &token,
            &format!("/v1.0/users/{}/mailFolders/inbox/messages", addresses[0]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["value"].as_array().map(Vec::len), Some(5), "{page}");
}

#[tokio::test]
async fn load_generator_attachment_share_extremes() {
    let emu = Emu::start().await;
    let all = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 2, "messages_per_mailbox": 3, "attachment_share": 1.0,
               "address_prefix": "with", "domain": "with.example"}),
    )
    .await;
    let none = load(
        &emu,
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
               "mailboxes": 2, "messages_per_mailbox": 3, "attachment_share": 0.0,
               "address_prefix": "without", "domain": "without.example"}),
    )
    .await;
    assert_eq!((all.len(), none.len()), (2, 2), "{all:?} {none:?}");
    for address in &all {
        for message in folder(&emu, address, "inbox").await {
            let count = message["attachments"].as_array().map_or(0, Vec::len);
            assert!(count >= 1, "share 1.0: every message has an attachment: {message}");
        }
    }
    for address in &none {
        for message in folder(&emu, address, "inbox").await {
            let count = message["attachments"].as_array().map_or(0, Vec::len);
            assert_eq!(count, 0, "share 0.0: no attachments: {message}");
        }
    }
}

#[tokio::test]
async fn bad_control_input_is_a_json_error_naming_the_problem() {
    let emu = Emu::start().await;
    emu.default_app().await;

    let (status, body) = emu.post("/_emulator/mailboxes", json!({"tenant_id": TENANT})).await;
    assert_control_error(status, &body, &["address"]);

    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{NOBODY}/messages"),
            json!({"from": {"name": "A", "address": "a@example.net"}, "to": [{"name": "N", "address": NOBODY}],
                   "subject": "x", "body": {"content_type": "text", "content": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{NOBODY}/folders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{NOBODY}/access"), json!({"deny": true}))
        .await;
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .post("/_emulator/apps/no-such-app/secret", json!({"expired": true}))
        .await;
    assert_control_error(status, &body, &["no-such-app", "app", "client"]);

    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_secret": "x", "roles": []}),
        )
        .await;
    assert_control_error(status, &body, &["client_id"]);

    let (status, body) = emu.post("/_emulator/faults", json!({"status": 500})).await;
    assert_control_error(status, &body, &["path_prefix"]);
}
