//! Reading attachments: listed and fetched with their bytes; inline-only messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::graph::*;

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
