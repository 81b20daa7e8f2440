//! Mail folders: the well-known ones, and paging through a folder's messages.

use std::collections::HashSet;

use reqwest::StatusCode;

use crate::support::graph::*;

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
