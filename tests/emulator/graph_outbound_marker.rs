//! The idempotency marker: an extended-property filter finds the draft, then the sent item.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Emu;
use crate::support::compose::*;
use crate::support::graph::{ALICE, SUPPORT, control_folder, enc, gget, user};

/// The `$filter` that finds a message by its OutboundId value.
fn outbound_filter(value: &str) -> String {
    enc(&format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{OUTBOUND_PROP}' and ep/value eq '{value}')"
    ))
}

/// Messages in a support folder whose OutboundId is `value`.
async fn find_outbound(emu: &Emu, token: &str, folder: &str, value: &str) -> Vec<Value> {
    let path = format!(
        "{}/mailFolders/{folder}/messages?$filter={}",
        user(SUPPORT),
        outbound_filter(value)
    );
    let resp = gget(emu, token, &path).await;
    assert_eq!(resp.status, StatusCode::OK, "{folder} filter: {}", resp.text);
    resp.body["value"].as_array().unwrap().clone()
}

#[tokio::test]
async fn outbound_id_extended_property_finds_the_draft_then_the_sent_item() {
    let (emu, token) = setup_team().await;
    let key = uuid::Uuid::new_v4().to_string();
    let other_key = uuid::Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for (subject, value) in [("Marked A", &key), ("Marked B", &other_key)] {
        let draft = create_draft(
            &emu,
            &token,
            json!({
                "subject": subject,
                "body": {"contentType": "text", "content": "marked"},
                "toRecipients": [recipient(ALICE)],
                "singleValueExtendedProperties": [{"id": OUTBOUND_PROP, "value": value}]
            }),
        )
        .await;
        ids.push(draft["id"].as_str().unwrap().to_string());
    }

    let found = find_outbound(&emu, &token, "drafts", &key).await;
    assert_eq!(found.len(), 1, "exactly the marked draft: {found:?}");
    assert_eq!(found[0]["id"], ids[0].as_str());
    assert!(
        find_outbound(&emu, &token, "drafts", &uuid::Uuid::new_v4().to_string())
            .await
            .is_empty()
    );
    assert!(
        find_outbound(&emu, &token, "sentitems", &key).await.is_empty(),
        "not sent yet"
    );

    let sent = send_draft(&emu, &token, &ids[0]).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);

    assert!(
        find_outbound(&emu, &token, "drafts", &key).await.is_empty(),
        "gone from Drafts"
    );
    let in_sent = find_outbound(&emu, &token, "sentitems", &key).await;
    assert_eq!(in_sent.len(), 1, "the property survived the move to Sent Items");
    assert_eq!(in_sent[0]["subject"], "Marked A");
    assert_eq!(
        find_outbound(&emu, &token, "drafts", &other_key).await.len(),
        1,
        "the other draft stays"
    );

    let control = control_folder(&emu, SUPPORT, "sentitems").await;
    let props = &with_subject(&control, "Marked A")[0]["extended_properties"];
    assert!(
        props
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == OUTBOUND_PROP && p["value"] == key.as_str()),
        "control API shows the property: {props}"
    );
}
