//! Ingest against Graph behaviour Microsoft documents and kinder emulators skip: unreadable
//! JSON in one message, duplicates within a round, partial items for updates, failing parts
//! inside `$batch`, and the item cap of a filtered delta.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{API_TOKEN, Env, with_api_token, with_microsoft};

fn message(address: &str, subject: &str) -> Value {
    json!({
        "from": {"name": "Customer", "address": "customer@example.net"},
        "to": [{"name": "", "address": address}],
        "subject": subject,
        "body": {"content_type": "text", "content": format!("Body of {subject}")},
    })
}

#[tokio::test]
async fn a_message_with_a_lone_surrogate_neither_blocks_nor_loses_the_others() {
    let env = Env::new().await;
    let mailbox = "surrogate@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    for (n, malformed) in [(0, false), (1, false), (2, true), (3, false), (4, false)] {
        let mut m = message(&mailbox, &format!("message {n}"));
        if malformed {
            m["malformed"] = json!("lone_surrogate");
        }
        env.control(&format!("/_emulator/mailboxes/{mailbox}/messages"), m)
            .await;
    }
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")))
        .await;
    let events = env.wait_for_events(5, Duration::from_secs(30)).await;
    assert_eq!(
        events.len(),
        5,
        "{:?}",
        events.iter().map(|e| &e.subject).collect::<Vec<_>>()
    );
    let odd = events.iter().find(|e| e.subject.starts_with("message 2")).unwrap();
    assert!(
        odd.subject.contains('\u{fffd}'),
        "the bad escape is replaced: {:?}",
        odd.subject
    );
    let active = crate::support::eventually(Duration::from_secs(10), || async {
        daemon.state(&mailbox).await == "active"
    })
    .await;
    assert!(active, "the mailbox is not held back by the odd message");
    daemon.stop().await;
}

#[tokio::test]
async fn an_item_twice_in_one_round_is_delivered_once() {
    let env = Env::new().await;
    env.settings(json!({"delta_duplicates": true, "delta_page_size": 2}))
        .await;
    let mailbox = "twice@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    for n in 0..5 {
        env.deliver(&mailbox, &format!("message {n}")).await;
    }
    let daemon = env.start(&env.config(std::slice::from_ref(&mailbox), "1s")).await;
    let events = env.wait_for_events(5, Duration::from_secs(30)).await;
    // One more round, to be sure nothing else arrives.
    env.deliver(&mailbox, "marker").await;
    let events_after = env.wait_for_events(6, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 5);
    let keys: HashSet<&str> = events_after.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(events_after.len(), 6, "each message once");
    assert_eq!(keys.len(), 6);
    daemon.stop().await;
}

#[tokio::test]
async fn a_partial_item_is_fetched_whole_instead_of_quarantined() {
    let env = Env::new().await;
    let mailbox = "partial@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let first = env.deliver(&mailbox, "changed later").await;
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s"));
    let daemon = env.start(&toml).await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await.len(), 1);
    daemon.stop().await;
    // The delivered key is gone (as after its retention), and the message is then read
    // elsewhere: the next round announces it with only `id`, `isRead` and `parentFolderId`.
    let db = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("DELETE FROM delivered_keys").execute(&pool).await.unwrap();
    pool.close().await;
    let id = first["id"].as_str().unwrap();
    let resp = env
        .http
        .patch(format!("{}/_emulator/mailboxes/{mailbox}/messages/{id}", env.url))
        .json(&json!({"is_read": true}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "marker").await;
    let events = env.wait_for_events(3, Duration::from_secs(30)).await;
    let again = events
        .iter()
        .filter(|e| e.subject == "changed later")
        .collect::<Vec<_>>();
    assert_eq!(again.len(), 2, "{events:?}");
    assert_eq!(
        again[1].body.text.as_deref(),
        Some("Body of changed later"),
        "a whole event"
    );
    assert_eq!(again[0].dedup_key, again[1].dedup_key);
    assert!(daemon.quarantine().await.is_empty(), "nothing quarantined");
    daemon.stop().await;
}

/// A message with one attachment; returns its id.
async fn with_attachment(env: &Env, mailbox: &str, subject: &str) -> String {
    let mut m = message(mailbox, subject);
    m["attachments"] = json!([{"name": "a.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}]);
    env.control(&format!("/_emulator/mailboxes/{mailbox}/messages"), m)
        .await["immutable_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn failing_parts_inside_batch_are_retried_with_their_own_retry_after_even_a_bad_one() {
    let env = Env::new().await;
    let mailbox = "batchretry@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    with_attachment(&env, &mailbox, "with attachment").await;
    // Two failures of the attachment listing inside $batch, one with a Retry-After that is
    // not a number.
    env.fault_for_mailbox(
        &mailbox,
        json!({"path_suffix": "/attachments", "status": 503, "retry_after_raw": "NaN", "times": 1}),
    )
    .await;
    env.fault_for_mailbox(
        &mailbox,
        json!({"path_suffix": "/attachments", "status": 429, "retry_after": 0.2, "times": 1}),
    )
    .await;
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")))
        .await;
    let events = env.wait_for_events(1, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].attachments.len(), 1, "the event is complete");
    assert_eq!(
        events[0].attachments[0]
            .content_base64
            .as_ref()
            .map(inboxd::event::Base64Text::as_str),
        Some("aGVsbG8=")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_message_whose_parts_keep_failing_is_quarantined_not_delivered_half() {
    let env = Env::new().await;
    let mailbox = "batchfail@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let id = with_attachment(&env, &mailbox, "attachments gone").await;
    env.deliver(&mailbox, "plain").await;
    env.fault_for_mailbox(
        &mailbox,
        json!({"path_suffix": "/attachments", "status": 404, "times": 1}),
    )
    .await;
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")))
        .await;
    let events = env.wait_for_events(1, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject, "plain", "the other message goes on");
    let entries = daemon.quarantine().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["graph_id"], id.as_str());
    assert!(entries[0]["reason"].as_str().unwrap().contains("404"), "{entries:?}");
    // Replayed once the cause is gone: delivered whole.
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/quarantine/{}/replay",
            daemon.addr,
            entries[0]["id"].as_str().unwrap()
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let events = env.wait_for_events(2, Duration::from_secs(30)).await;
    assert_eq!(events[1].subject, "attachments gone");
    assert_eq!(events[1].attachments.len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_filtered_delta_that_reaches_the_cap_is_split_and_skips_nothing() {
    let env = Env::new().await;
    env.settings(json!({"filtered_delta_cap": 3, "delta_page_size": 2}))
        .await;
    let mailbox = "capped@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let now = env.emulator_now().await;
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    for n in 0..8i64 {
        let at = now - time::Duration::hours(10) + time::Duration::minutes(n);
        env.deliver_received(&mailbox, &format!("message {n}"), at).await;
    }
    let toml = with_microsoft(
        &env.config(std::slice::from_ref(&mailbox), "1s"),
        "filtered_delta_cap = 3",
    )
    .replace(
        "start_at = \"all\"",
        &format!("start_at = \"{}\"", fmt(now - time::Duration::days(1))),
    );
    let daemon = env.start(&toml).await;
    let events = env.wait_for_events(8, Duration::from_secs(30)).await;
    let subjects: HashSet<String> = events.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects.len(), 8, "{subjects:?}");
    assert_eq!(events.len(), 8, "no duplicates either");
    daemon.stop().await;
}

#[tokio::test]
async fn a_message_that_breaks_every_page_is_quarantined_and_the_others_delivered() {
    let env = Env::new().await;
    let mailbox = "truncated@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let mut bad_id = String::new();
    for (n, malformed) in [(0, false), (1, false), (2, true), (3, false), (4, false)] {
        let mut m = message(&mailbox, &format!("message {n}"));
        if malformed {
            m["malformed"] = json!("truncated");
        }
        let created = env
            .control(&format!("/_emulator/mailboxes/{mailbox}/messages"), m)
            .await;
        if malformed {
            bad_id = created["immutable_id"].as_str().unwrap().to_string();
        }
    }
    let daemon = env
        .start(&with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")))
        .await;
    let events = env.wait_for_events(4, Duration::from_secs(60)).await;
    let subjects: HashSet<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        subjects,
        HashSet::from(["message 0", "message 1", "message 3", "message 4"]),
        "every readable message arrives"
    );
    let entries = daemon.quarantine().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["graph_id"], bad_id.as_str(), "quarantined with its id");
    assert!(
        entries[0]["reason"].as_str().unwrap().contains("unreadable"),
        "{entries:?}"
    );
    // Mail goes on flowing after the detour.
    env.deliver(&mailbox, "after").await;
    let events = env.wait_for_events(5, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 5, "{events:?}");
    daemon.stop().await;
}
