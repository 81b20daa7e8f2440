//! Delta rounds: paging, new/updated/deleted/moved messages, filters, replays and expiry
//! of delta links.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::graph::*;

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
