//! Helpers of the control-API tests (`/_emulator/…`, docs/emulator.md): token requests,
//! folders, the clock, and the load generator.

use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const ALICE: &str = "alice@contoso.example";
pub const BOB: &str = "bob@contoso.example";
pub const NOBODY: &str = "nobody@contoso.example";

/// Messages of a folder, from the control API.
pub async fn folder(emu: &Emu, address: &str, folder: &str) -> Vec<Value> {
    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{address}/folders/{folder}/messages"))
        .await;
    assert_eq!(status, StatusCode::OK, "folder {folder} of {address}: {body}");
    body.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("folder listing is an array: {body}"))
}

pub async fn secret_request(emu: &Emu, client: &str, secret: &str) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret),
                ("scope", GRAPH_SCOPE),
            ],
        )
        .await;
    (status, body)
}

pub async fn refresh_request(emu: &Emu, refresh_token: &str) -> (StatusCode, Value) {
    let (status, _, body) = emu
        .token_request(
            TENANT,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("refresh_token", refresh_token),
            ],
        )
        .await;
    (status, body)
}

/// Issues a delegated refresh token through the control API.
pub async fn issue_refresh_token(emu: &Emu, address: &str) -> String {
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
pub fn assert_aadsts(status: StatusCode, body: &Value, expected_status: StatusCode, error: &str, code: u64) {
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

pub async fn advance_clock(emu: &Emu, secs: i64) -> (StatusCode, Value) {
    emu.post("/_emulator/clock", json!({"advance_secs": secs})).await
}

pub fn rfc3339(value: &Value) -> OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("a time string: {value}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// A control error: 4xx with a JSON body whose text names `needle` (case-insensitive).
pub fn assert_control_error(status: StatusCode, body: &Value, needles: &[&str]) {
    assert!(status.is_client_error(), "expected 4xx, got {status}: {body}");
    assert!(!body.is_null(), "the error body is JSON");
    let text = body.to_string().to_lowercase();
    assert!(
        needles.iter().any(|n| text.contains(&n.to_lowercase())),
        "the error names the problem ({needles:?}): {body}"
    );
}

/// Finds mailbox addresses of `domain` named in a load answer.
pub fn addresses_in(value: &Value, domain: &str, out: &mut Vec<String>) {
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
pub async fn load(emu: &Emu, request: Value) -> Vec<String> {
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
