//! Behaviours Microsoft documents that clients must survive: partial updated items and
//! duplicates in delta, `$batch` requests failing one by one, the cap on filtered delta
//! rounds, one message whose JSON no strict parser accepts, every URL form Graph takes,
//! and control fields that take a list or a space-separated string.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::graph::{SUPPORT, call, deliver_with, delta_round, enc, gget, gpatch, message_from, setup, user};
use crate::support::{CLIENT, Emu, SECRET, TENANT, status_json};

const MAX2: (&str, &str) = ("Prefer", "odata.maxpagesize=2");

fn inbox_delta() -> String {
    format!("{}/mailFolders/inbox/messages/delta", user(SUPPORT))
}

fn keys(item: &Value) -> HashSet<String> {
    item.as_object()
        .unwrap_or_else(|| panic!("item is an object: {item}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Partial updated items
// ---------------------------------------------------------------------------

#[tokio::test]
async fn delta_update_rounds_carry_only_id_parent_folder_and_the_changed_properties() {
    let (emu, token) = setup().await;
    emu.deliver(SUPPORT, "First").await;
    emu.deliver(SUPPORT, "Second").await;
    let start = format!(
        "{}?$select=subject,isRead,receivedDateTime,internetMessageHeaders",
        inbox_delta()
    );
    let first = delta_round(&emu, &token, &start, &[]).await;
    for item in first.items() {
        assert!(item.get("subject").is_some(), "new items are whole: {item}");
        assert!(item.get("internetMessageHeaders").is_some(), "{item}");
    }
    let id = first.id_of("First");
    let before = gget(&emu, &token, &format!("{}/messages/{id}", user(SUPPORT))).await;

    // A read toggle through Graph: the next round sends id, isRead, parentFolderId only.
    let patched = gpatch(
        &emu,
        &token,
        &format!("{}/messages/{id}", user(SUPPORT)),
        json!({"isRead": true}),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let second = delta_round(&emu, &token, &first.delta_link, &[]).await;
    let items = second.items();
    assert_eq!(items.len(), 1, "{:?}", second.pages);
    assert_eq!(
        keys(items[0]),
        set(&["@odata.type", "@odata.etag", "id", "isRead", "parentFolderId"]),
        "{}",
        items[0]
    );
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["isRead"], true);
    assert_eq!(items[0]["parentFolderId"], before.body["parentFolderId"]);
    let after = gget(&emu, &token, &format!("{}/messages/{id}", user(SUPPORT))).await;
    assert_eq!(
        after.body["lastModifiedDateTime"], before.body["lastModifiedDateTime"],
        "a read toggle leaves lastModifiedDateTime alone"
    );
    assert_ne!(
        after.body["changeKey"], before.body["changeKey"],
        "but changes the changeKey"
    );

    // A change made elsewhere, through the control API.
    let (status, answer) = emu
        .http
        .patch(emu.at(&format!("/_emulator/mailboxes/{SUPPORT}/messages/{id}")))
        .json(&json!({"subject": "First, renamed", "is_read": false}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    let answer = answer.json::<Value>().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["immutable_id"].as_str().is_some(), "{answer}");
    let third = delta_round(&emu, &token, &second.delta_link, &[]).await;
    let items = third.items();
    assert_eq!(items.len(), 1, "{:?}", third.pages);
    assert_eq!(
        keys(items[0]),
        set(&[
            "@odata.type",
            "@odata.etag",
            "id",
            "isRead",
            "subject",
            "parentFolderId"
        ]),
        "lastModifiedDateTime changed but is not selected: {}",
        items[0]
    );
    assert_eq!(items[0]["subject"], "First, renamed");
    assert_eq!(items[0]["isRead"], false);

    // Unknown message and unknown fields are refused.
    let resp = emu
        .http
        .patch(emu.at(&format!("/_emulator/mailboxes/{SUPPORT}/messages/AAMkADnope")))
        .json(&json!({"is_read": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = emu
        .http
        .patch(emu.at(&format!("/_emulator/mailboxes/{SUPPORT}/messages/{id}")))
        .json(&json!({"flagged": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn partial_updates_can_be_switched_off_and_new_items_stay_whole() {
    let (emu, token) = setup().await;
    emu.deliver(SUPPORT, "Old").await;
    let first = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    let id = first.id_of("Old");
    emu.settings(json!({"delta_partial_updates": false})).await;
    gpatch(
        &emu,
        &token,
        &format!("{}/messages/{id}", user(SUPPORT)),
        json!({"isRead": true}),
    )
    .await;
    let second = delta_round(&emu, &token, &first.delta_link, &[]).await;
    assert_eq!(second.items().len(), 1);
    assert_eq!(second.items()[0]["subject"], "Old", "whole item: {:?}", second.pages);

    emu.settings(json!({"delta_partial_updates": true})).await;
    // Delivered and then changed within one round: it is new to the client, so whole.
    let new = emu.deliver(SUPPORT, "New").await;
    let (status, _) = emu
        .http
        .patch(emu.at(&format!(
            "/_emulator/mailboxes/{SUPPORT}/messages/{}",
            new["id"].as_str().unwrap()
        )))
        .json(&json!({"is_read": true}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let third = delta_round(&emu, &token, &second.delta_link, &[]).await;
    assert_eq!(third.items().len(), 1);
    assert_eq!(third.items()[0]["subject"], "New", "{:?}", third.pages);
    assert_eq!(third.items()[0]["isRead"], true);
}

// ---------------------------------------------------------------------------
// Duplicates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn delta_duplicates_put_an_item_twice_in_one_page() {
    let (emu, token) = setup().await;
    emu.settings(json!({"delta_duplicates": true})).await;
    emu.deliver(SUPPORT, "Only one").await;
    let round = delta_round(&emu, &token, &inbox_delta(), &[]).await;
    assert_eq!(round.pages.len(), 1, "one page: {:?}", round.pages);
    let ids: Vec<&str> = round.pages[0].iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ids[1], "the same item twice in one page");

    // Across pages as well: every page repeats its first item.
    for i in 0..3 {
        emu.deliver(SUPPORT, &format!("More {i}")).await;
    }
    let round = delta_round(&emu, &token, &round.delta_link, &[MAX2]).await;
    assert_eq!(round.subjects().len(), 3);
    for page in &round.pages {
        let ids: Vec<&str> = page.iter().map(|i| i["id"].as_str().unwrap()).collect();
        let distinct: HashSet<&str> = ids.iter().copied().collect();
        if !ids.is_empty() {
            assert_eq!(distinct.len() + 1, ids.len(), "one repeat per page: {ids:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// $batch requests that fail on their own
// ---------------------------------------------------------------------------

#[tokio::test]
async fn fault_on_an_inner_batch_request_fails_only_that_part_with_its_retry_after() {
    let (emu, token) = setup().await;
    let a = emu.deliver(SUPPORT, "A").await["id"].as_str().unwrap().to_string();
    let b = emu.deliver(SUPPORT, "B").await["id"].as_str().unwrap().to_string();
    let (status, _) = emu
        .post(
            "/_emulator/faults",
            json!({"path_prefix": format!("/v1.0/users/{SUPPORT}/messages/{a}"), "status": 429,
                   "retry_after_raw": "NaN", "times": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = emu
        .post(
            "/_emulator/faults",
            json!({"path_prefix": format!("/v1.0/users/{SUPPORT}/messages/{b}"), "status": 503,
                   "retry_after_raw": "99999999999999999999", "times": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let requests = json!({"requests": [
        {"id": "a", "method": "GET", "url": format!("/users/{SUPPORT}/messages/{a}?$select=subject")},
        {"id": "b", "method": "GET", "url": format!("/users/{SUPPORT}/messages/{b}?$select=subject")},
        {"id": "c", "method": "GET", "url": format!("/users/{SUPPORT}/mailFolders/inbox")},
    ]});
    let part = |body: &Value, id: &str| -> Value {
        body["responses"]
            .as_array()
            .unwrap_or_else(|| panic!("responses: {body}"))
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("part {id} in {body}"))
    };
    let retry_after = |p: &Value| -> Option<String> {
        p["headers"].as_object().and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.as_str().map(str::to_string))
        })
    };

    let (status, _, body) = emu.graph_post(&token, "/v1.0/$batch", requests.clone()).await;
    assert_eq!(status, StatusCode::OK, "the batch itself succeeds: {body}");
    let (pa, pb, pc) = (part(&body, "a"), part(&body, "b"), part(&body, "c"));
    assert_eq!(pa["status"], 429, "{pa}");
    assert_eq!(retry_after(&pa).as_deref(), Some("NaN"), "{pa}");
    assert_eq!(pa["body"]["error"]["code"], "TooManyRequests", "{pa}");
    assert_eq!(pb["status"], 503, "{pb}");
    assert_eq!(retry_after(&pb).as_deref(), Some("99999999999999999999"), "{pb}");
    assert_eq!(pc["status"], 200, "{pc}");
    assert_eq!(retry_after(&pc), None);

    let (_, _, body) = emu.graph_post(&token, "/v1.0/$batch", requests.clone()).await;
    assert_eq!(part(&body, "a")["status"], 200, "times: 1 used up: {body}");
    assert_eq!(part(&body, "a")["body"]["subject"], "A");
    assert_eq!(part(&body, "b")["status"], 503, "second of two: {body}");

    let (_, _, body) = emu.graph_post(&token, "/v1.0/$batch", requests).await;
    for id in ["a", "b", "c"] {
        assert_eq!(part(&body, id)["status"], 200, "{body}");
    }
    let logged: Vec<Value> = emu
        .requests()
        .await
        .into_iter()
        .filter(|r| r["batch"].is_u64() && r["status"] == 503)
        .collect();
    assert_eq!(logged.len(), 2, "inner failures are logged: {logged:?}");
    assert_eq!(logged[0]["retry_after"], "99999999999999999999");
}

#[tokio::test]
async fn raw_retry_after_on_a_plain_request() {
    let (emu, token) = setup().await;
    let (status, _) = emu
        .post(
            "/_emulator/faults",
            json!({"path_prefix": format!("/v1.0/users/{SUPPORT}/mailFolders"), "status": 429,
                   "retry_after_raw": "Wed, 21 Oct 2015 07:28:00 GMT", "times": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let resp = gget(&emu, &token, &format!("{}/mailFolders", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.header("retry-after"), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
}

// ---------------------------------------------------------------------------
// Filtered delta cap
// ---------------------------------------------------------------------------

#[tokio::test]
async fn filtered_delta_round_ends_at_the_cap() {
    let (emu, token) = setup().await;
    assert_eq!(emu.get("/_emulator/settings").await.1["filtered_delta_cap"], 5000);
    emu.settings(json!({"filtered_delta_cap": 3})).await;
    for day in 1..=5 {
        let mut m = message_from("customer@example.net", SUPPORT, &format!("Day {day}"));
        m["received_at"] = json!(format!("2024-05-0{day}T08:00:00Z"));
        deliver_with(&emu, SUPPORT, m).await;
    }
    let start = format!(
        "{}?$filter={}",
        inbox_delta(),
        enc("receivedDateTime ge 2024-01-01T00:00:00Z")
    );
    let capped = delta_round(&emu, &token, &start, &[MAX2]).await;
    assert_eq!(capped.items().len(), 3, "{:?}", capped.pages);
    assert_eq!(capped.subjects().len(), 3);

    let unfiltered = delta_round(&emu, &token, &inbox_delta(), &[MAX2]).await;
    assert_eq!(unfiltered.items().len(), 5, "no cap without a filter");

    emu.deliver(SUPPORT, "Later").await;
    let next = delta_round(&emu, &token, &capped.delta_link, &[]).await;
    assert_eq!(
        next.subjects(),
        HashSet::from(["Later".to_string()]),
        "the next round goes on from the capped one"
    );
}

// ---------------------------------------------------------------------------
// A message whose JSON strict parsers reject
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lone_surrogate_message_breaks_every_rendering_unless_subject_and_body_are_left_out() {
    let (emu, token) = setup().await;
    emu.deliver(SUPPORT, "Fine").await;
    let mut m = message_from("customer@example.net", SUPPORT, "Broken");
    m["malformed"] = json!("lone_surrogate");
    let id = deliver_with(&emu, SUPPORT, m).await["id"].as_str().unwrap().to_string();

    let strict_fails = |text: &str| serde_json::from_str::<Value>(text).is_err();
    let get = gget(&emu, &token, &format!("{}/messages/{id}", user(SUPPORT))).await;
    assert_eq!(get.status, StatusCode::OK);
    assert!(get.text.contains("Broken\\ud800"), "{}", get.text);
    assert!(strict_fails(&get.text), "serde_json rejects it");

    let list = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(SUPPORT))).await;
    assert!(list.text.contains("\\ud800") && strict_fails(&list.text));

    let delta = gget(&emu, &token, &inbox_delta()).await;
    assert_eq!(delta.status, StatusCode::OK);
    assert!(strict_fails(&delta.text), "{}", delta.text);

    // Without subject and body the client can still learn the id.
    let selected = delta_round(
        &emu,
        &token,
        &format!("{}?$select=isRead,receivedDateTime", inbox_delta()),
        &[],
    )
    .await;
    let ids: HashSet<&str> = selected.items().iter().filter_map(|i| i["id"].as_str()).collect();
    assert!(ids.contains(id.as_str()), "{:?}", selected.pages);
    let one = gget(
        &emu,
        &token,
        &format!("{}/messages/{id}?$select=internetMessageId,from", user(SUPPORT)),
    )
    .await;
    assert_eq!(one.body["id"], id.as_str(), "{}", one.text);

    // Inside a batch the whole answer is unreadable, as it would be from Graph.
    let resp = emu
        .http
        .post(emu.at("/v1.0/$batch"))
        .bearer_auth(&token)
        .json(&json!({"requests": [{"id": "1", "method": "GET", "url": format!("/users/{SUPPORT}/messages/{id}")}]}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.contains("\\ud800") && strict_fails(&text), "{text}");

    // The control API shows the message as stored.
    let (_, listed) = emu
        .get(&format!("/_emulator/mailboxes/{SUPPORT}/folders/inbox/messages"))
        .await;
    assert!(listed.as_array().unwrap().iter().any(|m| m["subject"] == "Broken"));
}

#[tokio::test]
async fn truncated_message_cuts_the_answer() {
    let (emu, token) = setup().await;
    let mut m = message_from("customer@example.net", SUPPORT, "Cut here");
    m["malformed"] = json!("truncated");
    let id = deliver_with(&emu, SUPPORT, m).await["id"].as_str().unwrap().to_string();
    let get = gget(&emu, &token, &format!("{}/messages/{id}", user(SUPPORT))).await;
    assert_eq!(get.status, StatusCode::OK);
    assert!(get.body.is_null(), "not JSON: {}", get.text);
    assert!(!get.text.trim_end().ends_with('}'), "{}", get.text);
    let fine = gget(&emu, &token, &format!("{}/messages/{id}?$select=isRead", user(SUPPORT))).await;
    assert_eq!(fine.body["id"], id.as_str(), "{}", fine.text);
    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{SUPPORT}/messages"),
            json!({"from": {"address": "a@example.net"}, "body": {"content_type": "text", "content": "x"}, "malformed": "sometimes"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

// ---------------------------------------------------------------------------
// URL forms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_url_form_graph_accepts() {
    let (emu, token) = setup().await;
    let id = emu.deliver(SUPPORT, "Forms").await["id"].as_str().unwrap().to_string();
    let encoded = SUPPORT.replace('@', "%40");
    let forms = [
        format!("/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta()"),
        format!("/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/microsoft.graph.delta()"),
        format!("/v1.0/users/{SUPPORT}/mailFolders('inbox')/messages/delta()"),
        format!("/v1.0/users/{SUPPORT}/mailFolders/Inbox/messages/delta"),
        format!("/v1.0/users/{SUPPORT}/mailFolders/INBOX/messages"),
        format!("/v1.0/users/{encoded}/mailFolders/inbox/messages/delta()"),
        format!("/v1.0/users('{SUPPORT}')/messages"),
        format!("/v1.0/users/{encoded}/messages/{id}"),
    ];
    for form in forms {
        let resp = gget(&emu, &token, &form).await;
        assert_eq!(resp.status, StatusCode::OK, "{form}: {}", resp.text);
        let found = resp.body["id"] == id.as_str()
            || resp.body["value"]
                .as_array()
                .is_some_and(|v| v.iter().any(|m| m["id"] == id.as_str()));
        assert!(found, "{form}: {}", resp.text);
    }
    // The delta links answered to the function-call form work as well.
    let round = delta_round(
        &emu,
        &token,
        &format!("/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta()"),
        &[],
    )
    .await;
    let next = gget(&emu, &token, &round.delta_link).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    let reply = call(
        &emu,
        Method::POST,
        Some(&token),
        &format!("/v1.0/users/{encoded}/messages/{id}/microsoft.graph.reply"),
        &[],
        Some(&json!({"comment": "Thanks"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
}

// ---------------------------------------------------------------------------
// List-valued control fields
// ---------------------------------------------------------------------------

async fn redeem(emu: &Emu, refresh: &str) -> Value {
    let resp = emu
        .http
        .post(emu.at(&format!("/{TENANT}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "refresh grant: {body}");
    body
}

#[tokio::test]
async fn list_fields_take_a_json_list_or_a_spaced_string() {
    let emu = Emu::start().await;
    // Roles as one OAuth-style string.
    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                   "roles": "Mail.ReadWrite Mail.Send", "redirect_uris": "http://localhost/a http://localhost/b"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    emu.mailbox(TENANT, SUPPORT).await;
    let token = emu.default_token().await;
    let resp = gget(&emu, &token, &format!("{}/mailFolders", user(SUPPORT))).await;
    assert_eq!(resp.status, StatusCode::OK, "roles from a string: {}", resp.text);

    for scopes in [
        json!(["offline_access", "Mail.ReadWrite"]),
        json!("offline_access Mail.ReadWrite"),
    ] {
        let (status, body) = emu
            .post(
                "/_emulator/refresh-tokens",
                json!({"tenant_id": TENANT, "client_id": CLIENT, "address": SUPPORT, "scopes": scopes}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer = redeem(&emu, body["refresh_token"].as_str().unwrap()).await;
        let granted = answer["scope"].as_str().unwrap_or_default().to_string();
        assert!(granted.contains("Mail.ReadWrite"), "{scopes}: {answer}");
        let me = gget(
            &emu,
            answer["access_token"].as_str().unwrap(),
            "/v1.0/me/mailFolders/inbox/messages",
        )
        .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    }
    let (status, _) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "address": SUPPORT, "scopes": 42}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
