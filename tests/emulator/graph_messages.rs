//! Reading messages: body type, headers, immutable ids and MIME.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::graph::*;

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
