use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::event::{Base64Text, EmailAddress, EventAttachment, EventBody, MESSAGE_SCHEMA, MessageEvent};

/// A realistic event whose serialised length does not depend on `n` (for n < 10,000).
pub(crate) fn sample_event(n: u32) -> MessageEvent {
    let addr = |name: &str, address: &str| EmailAddress {
        name: name.into(),
        address: address.into(),
    };
    MessageEvent {
        schema: MESSAGE_SCHEMA.into(),
        event_id: format!("00000000-0000-4000-8000-00000000{n:04}"),
        dedup_key: format!("support@contoso.com/AAMkAD{n:04}"),
        mailbox: "support@contoso.com".into(),
        folder: "inbox".into(),
        graph_id: format!("AAMkAD{n:04}"),
        internet_message_id: format!("<msg-{n:04}@fabrikam.com>"),
        conversation_id: "AAQkADconv".into(),
        in_reply_to: Some("<root@fabrikam.com>".into()),
        references: vec!["<root@fabrikam.com>".into()],
        subject: format!("Order {n:04} – \"late\" délivery"),
        from: Some(addr("Ann Customer", "ann@fabrikam.com")),
        to: vec![addr("Support", "support@contoso.com")],
        cc: vec![],
        reply_to: vec![addr("", "ann+reply@fabrikam.com")],
        received_at: "2025-03-01T10:00:00Z".into(),
        body: EventBody {
            text: Some("Hello,\nwhere is it?".into()),
            html: Some("<p>Hello,<br>where is it?</p>".into()),
        },
        attachments: vec![
            EventAttachment {
                name: "invoice.pdf".into(),
                content_type: "application/pdf".into(),
                size: 3,
                is_inline: false,
                content_id: None,
                sha256: "ab".repeat(32),
                content_base64: Some(Base64Text::try_from("YWJj".to_string()).unwrap()),
            },
            EventAttachment {
                name: "huge.zip".into(),
                content_type: "application/zip".into(),
                size: 50_000_000,
                is_inline: false,
                content_id: None,
                sha256: "cd".repeat(32),
                content_base64: None,
            },
        ],
    }
}

fn line_len() -> u64 {
    serde_json::to_vec(&sample_event(0)).unwrap().len() as u64 + 1
}

/// Every line of a file, parsed; panics on a torn or invalid line.
pub(crate) fn read_events(path: &Path) -> Vec<MessageEvent> {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends with a torn line",
        path.display()
    );
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn all_ok(outcomes: &[Result<(), SinkError>]) -> bool {
    outcomes.iter().all(Result::is_ok)
}

#[tokio::test]
async fn lines_parse_back_to_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/inbound.ndjson");
    let sink = FileSink::open(path.clone(), None).await.unwrap();
    let events: Vec<_> = (0..3).map(sample_event).collect();

    let outcomes = sink.deliver(&events).await;

    assert_eq!(outcomes.len(), 3);
    assert!(all_ok(&outcomes));
    assert_eq!(read_events(&path), events);
    // A reopened sink appends; it never truncates acknowledged lines.
    drop(sink);
    let sink = FileSink::open(path.clone(), None).await.unwrap();
    assert!(all_ok(&sink.deliver(&[sample_event(3)]).await));
    assert_eq!(read_events(&path), (0..4).map(sample_event).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_never_interleave_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let sink = Arc::new(FileSink::open(path.clone(), None).await.unwrap());
    let tasks: Vec<_> = (0..20u32)
        .map(|t| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let batch: Vec<_> = (0..5).map(|i| sample_event(t * 5 + i)).collect();
                sink.deliver(&batch).await
            })
        })
        .collect();
    for task in tasks {
        assert!(all_ok(&task.await.unwrap()));
    }

    let got: BTreeSet<_> = read_events(&path).into_iter().map(|e| e.dedup_key).collect();
    let want: BTreeSet<_> = (0..100).map(|n| sample_event(n).dedup_key).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn rotates_at_the_threshold_without_losing_or_splitting_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let len = line_len();
    // Room for 3 lines and a half: the 4th line must go to a new file.
    let sink = FileSink::open(path.clone(), Some(3 * len + len / 2)).await.unwrap();

    // Single events, then one batch that has to rotate twice in the middle.
    for n in 0..5 {
        assert!(all_ok(&sink.deliver(&[sample_event(n)]).await));
    }
    let batch: Vec<_> = (5..14).map(sample_event).collect();
    assert!(all_ok(&sink.deliver(&batch).await));

    let mut rotated: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &path)
        .collect();
    rotated.sort();
    assert_eq!(
        rotated.len(),
        4,
        "14 lines at 3 per file: 4 full rotated files and a live one"
    );
    let mut seen = Vec::new();
    for file in &rotated {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("inbound.") && name.ends_with("Z.ndjson"), "{name}");
        let events = read_events(file);
        assert_eq!(events.len(), 3, "{name} rotated at the threshold");
        assert!(fs::metadata(file).unwrap().len() <= 3 * len + len / 2);
        seen.extend(events);
    }
    let live = read_events(&path);
    assert_eq!(live.len(), 2);
    seen.extend(live);
    assert_eq!(
        seen,
        (0..14).map(sample_event).collect::<Vec<_>>(),
        "no line lost, duplicated or reordered"
    );
}

#[tokio::test]
async fn a_line_larger_than_the_threshold_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let sink = FileSink::open(path.clone(), Some(10)).await.unwrap();

    assert!(all_ok(&sink.deliver(&[sample_event(0), sample_event(1)]).await));

    assert_eq!(read_events(&path), vec![sample_event(1)]);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_rotated_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let now = time::macros::datetime!(2025-03-01 10:00:00.5 UTC);

    let first = rotated_name(&path, now).unwrap();
    assert_eq!(first.file_name().unwrap(), "inbound.20250301T100000.500000Z.ndjson");
    fs::write(&first, "taken\n").unwrap();
    let second = rotated_name(&path, now).unwrap();
    assert_eq!(second.file_name().unwrap(), "inbound.20250301T100000.500000Z.1.ndjson");
    fs::write(&second, "taken\n").unwrap();
    assert_eq!(
        rotated_name(&path, now).unwrap().file_name().unwrap(),
        "inbound.20250301T100000.500000Z.2.ndjson"
    );
}

#[tokio::test]
async fn a_failed_write_acknowledges_nothing_and_leaves_no_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let sink = FileSink::open(path.clone(), None).await.unwrap();
    assert!(all_ok(&sink.deliver(&[sample_event(0)]).await));

    // Two lines get through, the third tears.
    sink.state.lock().await.fail_after_lines = Some(2);
    let outcomes = sink.deliver(&(1..5).map(sample_event).collect::<Vec<_>>()).await;

    assert_eq!(outcomes.len(), 4);
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(SinkError::Unavailable(m)) if m.contains("injected")),
            "{outcome:?}"
        );
    }
    assert_eq!(
        read_events(&path),
        vec![sample_event(0)],
        "the failed batch is truncated away"
    );

    // Once the fault is gone the batch goes through whole.
    sink.state.lock().await.fail_after_lines = None;
    assert!(all_ok(
        &sink.deliver(&(1..5).map(sample_event).collect::<Vec<_>>()).await
    ));
    assert_eq!(read_events(&path), (0..5).map(sample_event).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_real_io_error_is_unavailable_for_the_whole_batch() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let sink = FileSink::open(PathBuf::from("/dev/full"), None).await.unwrap();

    let outcomes = sink.deliver(&[sample_event(0), sample_event(1)]).await;

    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(SinkError::Unavailable(_)))),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_torn_line_from_a_crash_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let mut content = serde_json::to_vec(&sample_event(0)).unwrap();
    content.push(b'\n');
    content.extend_from_slice(br#"{"schema":"inboxd.message.v1","event_id":"tor"#);
    fs::write(&path, &content).unwrap();

    let sink = FileSink::open(path.clone(), None).await.unwrap();
    assert!(all_ok(&sink.deliver(&[sample_event(1)]).await));

    assert_eq!(read_events(&path), vec![sample_event(0), sample_event(1)]);
}

/// Bytes of `path` in the page cache, as util-linux's `fincore` reports them.
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a byte count")
}

#[tokio::test]
async fn only_the_files_last_32_mib_stay_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let sink = FileSink::open(path.clone(), None).await.unwrap();
    let mut event = sample_event(0);
    event.body.text = Some("x".repeat(1024 * 1024));
    for _ in 0..48 {
        assert!(all_ok(&sink.deliver(std::slice::from_ref(&event)).await));
    }
    // Then small batches, each far less than a page: what falls behind the tail still goes.
    event.body.text = Some("y".repeat(3000));
    for _ in 0..2000 {
        assert!(all_ok(&sink.deliver(std::slice::from_ref(&event)).await));
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 54 * 1024 * 1024);
    let cached = cached_bytes(&path);
    // The tail past the last drop (under one line) may stay too.
    assert!(
        cached <= CACHED_TAIL + 2 * 1024 * 1024,
        "{cached} of {len} bytes cached"
    );
}
