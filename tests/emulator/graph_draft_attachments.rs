//! Draft attachments, small and by upload session.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Emu;
use crate::support::compose::*;
use crate::support::graph::{ALICE, control_folder, gget, gpost, setup, user};

/// Starts an upload session on a draft; returns the answer after checking its shape.
async fn upload_session(emu: &Emu, token: &str, draft: &str, name: &str, size: usize) -> Value {
    let resp = gpost(
        emu,
        token,
        &format!("{}/attachments/createUploadSession", msg(draft)),
        json!({"AttachmentItem": {"attachmentType": "file", "name": name, "size": size}}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "createUploadSession: {}", resp.text);
    let url = resp.body["uploadUrl"].as_str().expect("uploadUrl");
    assert!(url.starts_with(&emu.url), "uploadUrl on the emulator: {url}");
    assert!(
        resp.body["expirationDateTime"].as_str().is_some_and(|t| !t.is_empty()),
        "expirationDateTime"
    );
    assert_eq!(resp.body["nextExpectedRanges"], json!(["0-"]));
    resp.body
}

#[tokio::test]
async fn draft_attachments_small_and_by_upload_session_reach_the_recipient() {
    let (emu, token) = setup_team().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Big file", "body": {"contentType": "text", "content": "see attached"}, "toRecipients": [recipient(ALICE)]}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();

    let note = b"a small note".to_vec();
    let small = gpost(
        &emu,
        &token,
        &format!("{}/attachments", msg(draft_id)),
        json!({"@odata.type": "#microsoft.graph.fileAttachment", "name": "note.txt", "contentType": "text/plain", "contentBytes": B64.encode(&note)}),
    )
    .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text);
    assert_eq!(small.body["name"], "note.txt");
    assert!(small.body["id"].as_str().is_some());

    const TOTAL: usize = 5 * 1024 * 1024;
    const CHUNK: usize = 2 * 1024 * 1024;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "big.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let mut start = 0;
    while start + CHUNK < TOTAL {
        let end = start + CHUNK;
        let range = format!("bytes {start}-{}/{TOTAL}", end - 1);
        let resp = put_chunk(&emu, url, &range, &data[start..end]).await;
        assert_eq!(resp.status, StatusCode::OK, "{range}: {}", resp.text);
        let next = resp.body["nextExpectedRanges"][0].as_str().expect("nextExpectedRanges");
        assert!(next.starts_with(&format!("{end}-")), "next range: {next}");
        start = end;
    }
    let range = format!("bytes {start}-{}/{TOTAL}", TOTAL - 1);
    let last = put_chunk(&emu, url, &range, &data[start..]).await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);
    assert!(last.header("location").is_some(), "Location header on the final chunk");

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let big = items
        .iter()
        .find(|a| a["name"] == "big.bin")
        .expect("big.bin on the draft");
    assert_eq!(big["size"], TOTAL);

    let sent = send_draft(&emu, &token, draft_id).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);

    let alice = control_folder(&emu, ALICE, "inbox").await;
    assert_eq!(alice.len(), 1);
    let attachments = alice[0]["attachments"].as_array().unwrap();
    assert!(
        attachments.iter().any(|a| a["name"] == "big.bin" && a["size"] == TOTAL),
        "{attachments:?}"
    );

    let inbox = gget(&emu, &token, &format!("{}/mailFolders/inbox/messages", user(ALICE))).await;
    let received = inbox.body["value"][0]["id"].as_str().unwrap();
    let got = gget(
        &emu,
        &token,
        &format!("{}/messages/{received}/attachments", user(ALICE)),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let got = got.body["value"].as_array().unwrap();
    let bytes_of = |name: &str| {
        let item = got
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} received"));
        B64.decode(item["contentBytes"].as_str().unwrap()).unwrap()
    };
    assert!(bytes_of("big.bin") == data, "the recipient gets identical bytes");
    assert_eq!(bytes_of("note.txt"), note);
}

#[tokio::test]
async fn upload_session_refuses_a_wrong_content_range() {
    let (emu, token) = setup().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Ranges", "body": {"contentType": "text", "content": "x"}}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();
    const TOTAL: usize = 4 * 1024 * 1024;
    const HALF: usize = TOTAL / 2;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "ranges.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let skipped = put_chunk(&emu, url, &format!("bytes 100-199/{TOTAL}"), &data[100..200]).await;
    assert!(
        skipped.status.is_client_error(),
        "a chunk that skips bytes: {} {}",
        skipped.status,
        skipped.text
    );
    let short = put_chunk(&emu, url, &format!("bytes 0-99/{TOTAL}"), &data[..50]).await;
    assert!(
        short.status.is_client_error(),
        "range longer than the body: {} {}",
        short.status,
        short.text
    );
    let wrong_total = put_chunk(&emu, url, "bytes 0-99/1000", &data[..100]).await;
    assert!(
        wrong_total.status.is_client_error(),
        "total differs from the session: {}",
        wrong_total.status
    );
    let garbled = put_chunk(&emu, url, "items 0-99", &data[..100]).await;
    assert!(
        garbled.status.is_client_error(),
        "unparseable Content-Range: {}",
        garbled.status
    );

    // The session is intact after the refusals.
    let first = put_chunk(&emu, url, &format!("bytes 0-{}/{TOTAL}", HALF - 1), &data[..HALF]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert!(
        first.body["nextExpectedRanges"][0]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{HALF}-")))
    );
    let last = put_chunk(&emu, url, &format!("bytes {HALF}-{}/{TOTAL}", TOTAL - 1), &data[HALF..]).await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one attachment, no fragments: {items:?}");
    assert_eq!(items[0]["size"], TOTAL);
}

#[tokio::test]
async fn upload_session_accepts_chunks_just_under_4_mb() {
    let (emu, token) = setup().await;
    let draft = create_draft(
        &emu,
        &token,
        json!({"subject": "Large chunks", "body": {"contentType": "text", "content": "x"}}),
    )
    .await;
    let draft_id = draft["id"].as_str().unwrap();
    // The docs only ask that each chunk stay under 4 MB.
    const CHUNK: usize = 4 * 1024 * 1024 - 64 * 1024;
    const TOTAL: usize = CHUNK + 1024 * 1024;
    let data = pattern(TOTAL);
    let session = upload_session(&emu, &token, draft_id, "large.bin", TOTAL).await;
    let url = session["uploadUrl"].as_str().unwrap();

    let first = put_chunk(&emu, url, &format!("bytes 0-{}/{TOTAL}", CHUNK - 1), &data[..CHUNK]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let last = put_chunk(
        &emu,
        url,
        &format!("bytes {CHUNK}-{}/{TOTAL}", TOTAL - 1),
        &data[CHUNK..],
    )
    .await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);

    let list = gget(&emu, &token, &format!("{}/attachments", msg(draft_id))).await;
    let items = list.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["size"], TOTAL);
    assert!(B64.decode(items[0]["contentBytes"].as_str().unwrap()).unwrap() == data);
}
