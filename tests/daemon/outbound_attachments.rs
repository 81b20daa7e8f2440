//! Attachments arrive byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::outbound::*;
use crate::support::{Env, log_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_arrive_intact() {
    const SIZES: [(&str, usize); 3] = [
        ("one-kilobyte.bin", 1024),
        ("three-and-a-half-megabytes.bin", 3 * 1024 * 1024 + 512 * 1024),
        ("twenty-megabytes.bin", 20 * 1024 * 1024),
    ];
    /// Upload chunk size: ten times Graph's 320 KiB unit.
    const CHUNK: usize = 10 * 320 * 1024;
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Send me the logs").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let files: Vec<(&str, Vec<u8>)> = SIZES
        .iter()
        .map(|(name, size)| {
            let mut bytes = vec![0u8; *size];
            fastrand::fill(&mut bytes);
            (*name, bytes)
        })
        .collect();
    let attachments: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| {
            json!({"name": name, "content_type": "application/octet-stream", "content_base64": STANDARD.encode(bytes)})
        })
        .collect();
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "attachments-1",
            &json!({"body": {"content_type": "html", "content": "<p>Logs attached.</p>"}, "attachments": attachments}),
        )
        .await;
    api.wait_sent(&id).await;

    let received = exactly_one(&env, ANN, "inbox", "RE: Send me the logs").await;
    let sent = exactly_one(&env, SUPPORT, "sentitems", "RE: Send me the logs").await;
    for (copy, whose) in [(&received, "Ann's copy"), (&sent, "the Sent Items copy")] {
        let got = copy["attachments"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            files.len(),
            "{whose} has attachments {:?}",
            got.iter().map(|a| (&a["name"], &a["size"])).collect::<Vec<_>>()
        );
        for (name, bytes) in &files {
            let a = got
                .iter()
                .find(|a| a["name"] == *name)
                .unwrap_or_else(|| panic!("{whose} lacks {name}"));
            let content = STANDARD
                .decode(a["content_base64"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{whose}: {name} content: {e}"));
            assert_eq!(content.len(), bytes.len(), "{whose}: size of {name}");
            assert_eq!(sha256(&content), sha256(bytes), "{whose}: sha256 of {name}");
        }
    }

    // Up to 3 MB in one request; beyond, an upload session in 3.2 MB chunks, in order.
    let simple = support_requests(&env, "POST", "/attachments").await;
    assert_eq!(simple.len(), 1, "attachments added directly: {simple:?}");
    let sessions = support_requests(&env, "POST", "/attachments/createUploadSession").await;
    assert_eq!(sessions.len(), 2, "upload sessions: {sessions:?}");
    let puts: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| e["method"] == "PUT" && log_path(e).starts_with("/_upload/"))
        .collect();
    for (_, size) in &SIZES[1..] {
        let ranges: Vec<(usize, usize)> = puts
            .iter()
            .filter_map(|e| {
                let range = e["headers"]["content-range"].as_str()?.strip_prefix("bytes ")?;
                let (span, total) = range.split_once('/')?;
                let (a, b) = span.split_once('-')?;
                if total.parse::<usize>().ok()? != *size {
                    return None;
                }
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        assert_eq!(
            ranges.len(),
            size.div_ceil(CHUNK),
            "chunks of the {size}-byte file: {ranges:?}"
        );
        for (i, (start, end)) in ranges.iter().enumerate() {
            assert_eq!(*start, i * CHUNK, "chunk {i} of the {size}-byte file: {ranges:?}");
            assert_eq!(*end, ((i + 1) * CHUNK).min(*size) - 1, "chunk {i}: {ranges:?}");
        }
    }
    assert!(
        puts.iter().all(|e| e["status"] == 200 || e["status"] == 201),
        "a chunk was refused: {puts:?}"
    );
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    daemon.stop().await;
}
