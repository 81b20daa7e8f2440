//! Precise refusals that store nothing.

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::outbound::*;
use crate::support::{Env, eventually, log_path};

/// A request that must be refused: path, `Idempotency-Key`, body, status, error code, and
/// the words its message must contain.
type Refusal = (
    String,
    Option<&'static str>,
    Value,
    u16,
    &'static str,
    Vec<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_precisely() {
    let blocked = "blocked@contoso.test";
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into(), blocked.into()]).await;
    let original = from_ann(&env, "Help").await;
    let blocked_original = deliver_from(&env, ANN, &[blocked], &[], "Help too", json!([])).await;
    let blocked_original = blocked_original["immutable_id"].as_str().unwrap().to_string();
    env.control(&format!("/_emulator/mailboxes/{blocked}/access"), json!({"deny": true}))
        .await;
    let daemon = env.start(&config(&env, &[SUPPORT, blocked])).await;
    let api = Api::at(daemon.addr);
    let reply = format!("/v1/mailboxes/{SUPPORT}/messages/{original}/reply");
    let forward = format!("/v1/mailboxes/{SUPPORT}/messages/{original}/forward");
    let send = format!("/v1/mailboxes/{SUPPORT}/send");
    let text = json!({"content_type": "text", "content": "Hello"});

    let cases: Vec<Refusal> = vec![
        (
            format!("/v1/mailboxes/nobody@contoso.test/messages/{original}/reply"),
            Some("k-unknown"),
            json!({"comment": "hi"}),
            404,
            "unknown_mailbox",
            vec!["nobody@contoso.test"],
        ),
        (
            reply.clone(),
            Some("k-both"),
            json!({"comment": "hi", "body": text}),
            400,
            "invalid_request",
            vec!["comment", "body"],
        ),
        (
            reply.clone(),
            None,
            json!({"comment": "hi"}),
            400,
            "idempotency_key_missing",
            vec!["Idempotency-Key"],
        ),
        (
            reply.clone(),
            Some("k-base64"),
            json!({"comment": "hi", "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_base64": "not base64!"}]}),
            400,
            "invalid_request",
            vec!["attachments[0].content_base64"],
        ),
        (
            reply.clone(),
            Some("k-base64-2"),
            json!({"comment": "hi", "attachments": [
                {"name": "ok.txt", "content_base64": STANDARD.encode(b"fine")},
                {"name": "b.txt", "content_base64": "QUJD*"},
            ]}),
            400,
            "invalid_request",
            vec!["attachments[1].content_base64"],
        ),
        (
            send.clone(),
            Some("k-to"),
            json!({"to": ["ok@customer.test", "not-an-address"], "subject": "s", "body": text}),
            400,
            "invalid_request",
            vec!["to[1]"],
        ),
        (
            forward.clone(),
            Some("k-cc"),
            json!({"to": ["dave@customer.test"], "cc": [{"name": "X", "address": "x@@customer"}]}),
            400,
            "invalid_request",
            vec!["cc[0]"],
        ),
        (
            forward.clone(),
            Some("k-forward-nobody"),
            json!({"comment": "fyi"}),
            400,
            "invalid_request",
            vec!["to"],
        ),
        (
            reply.clone(),
            Some("k-content-type"),
            json!({"body": {"content_type": "markdown", "content": "*hi*"}}),
            400,
            "invalid_request",
            vec!["body.content_type"],
        ),
        (
            format!("/v1/mailboxes/{blocked}/messages/{blocked_original}/reply"),
            Some("k-flagged"),
            json!({"comment": "hi"}),
            409,
            "mailbox_flagged",
            vec![blocked, "access_denied", "queue=true"],
        ),
    ];

    // The flagged mailbox must be known as such first.
    let flagged = eventually(LIMIT, || async { daemon.state(blocked).await == "access_denied" }).await;
    assert!(
        flagged,
        "{blocked} never became access_denied: {}",
        daemon.state(blocked).await
    );

    let mut failures = Vec::new();
    for (path, key, body, status, code, words) in &cases {
        let (got, answer) = api.post(path, *key, body).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        if got != *status
            || answer["error"]["code"] != *code
            || !words.iter().all(|w| message.contains(w))
            || answer.get("id").is_some()
        {
            failures.push(format!(
                "{path} key {key:?} {body}: expected {status} {code} naming {words:?}, got {got} {answer}"
            ));
        }
    }
    // Without the bearer token: 401, before anything else.
    let resp = reqwest::Client::new()
        .post(format!("{}{reply}", api.base))
        .header("Idempotency-Key", "k-no-token")
        .json(&json!({"comment": "hi"}))
        .send()
        .await
        .unwrap();
    if resp.status() != 401 {
        failures.push(format!("no bearer token: {}", resp.status()));
    }
    // Attachments over Graph's 150 MB per message: 413 (zero bytes, built without a copy).
    let groups = inboxd::outbound::request::MAX_ATTACHMENTS_BYTES / 3 + 1;
    let oversized = format!(
        r#"{{"comment":"hi","attachments":[{{"name":"huge.bin","content_base64":"{}"}}]}}"#,
        "AAAA".repeat(groups)
    );
    let started = Instant::now();
    let (got, answer) = api.post_bytes(&reply, Some("k-huge"), oversized.into_bytes()).await;
    println!("413 case answered in {:?}", started.elapsed());
    if got != 413
        || answer["error"]["code"] != "attachments_too_large"
        || !answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("attachments"))
    {
        failures.push(format!(
            "150 MB + 3 bytes of attachments: expected 413, got {got} {answer}"
        ));
    }
    assert!(
        failures.is_empty(),
        "refusals not as specified:\n{}",
        failures.join("\n")
    );

    // Nothing was half-accepted: no draft, no mail, no event, no Graph write...
    let writes: Vec<Value> = env
        .requests()
        .await
        .into_iter()
        .filter(|e| e["method"] != "GET" && log_path(e).starts_with("/v1.0/"))
        .collect();
    assert!(writes.is_empty(), "refused requests reached Graph: {writes:?}");
    for mailbox in [SUPPORT, blocked] {
        for folder in ["drafts", "sentitems"] {
            let found = env.folder_messages(mailbox, folder).await;
            assert!(found.is_empty(), "{mailbox}/{folder}: {:?}", summary(&found));
        }
    }
    assert!(outbound_events(&env).is_empty(), "{:?}", outbound_events(&env));
    // ... and no key was consumed: a refused key is free for a valid request (else 422).
    let id = api
        .accepted(SUPPORT, &original, "reply", "k-both", &json!({"comment": "Now valid."}))
        .await;
    api.wait_sent(&id).await;
    exactly_one(&env, ANN, "inbox", "RE: Help").await;

    // A flagged mailbox queues when asked to, and sends nothing while flagged.
    let (status, answer) = api
        .post(
            &format!("/v1/mailboxes/{blocked}/messages/{blocked_original}/reply?queue=true"),
            Some("k-flagged"),
            &json!({"comment": "hi"}),
        )
        .await;
    assert_eq!(status, 202, "?queue=true on a flagged mailbox: {answer}");
    let queued = outbound_id(&answer);
    let (status, view) = api.outbound(&queued).await;
    assert_eq!(status, 200, "{view}");
    assert!(
        matches!(view["status"].as_str(), Some("queued" | "sending")),
        "queued for a flagged mailbox: {view}"
    );
    assert!(env.folder_messages(blocked, "sentitems").await.is_empty());
    let (status, unknown) = api.outbound("no-such-outbound-id").await;
    assert_eq!(status, 404, "{unknown}");
    daemon.stop().await;
}
