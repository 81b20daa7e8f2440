//! Permanent failures end `failed` with the reason.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::outbound::*;
use crate::support::{Env, eventually, log_path};

/// Permanent refusals by Graph end in `failed` with the reason and a `failed` event,
/// instead of being retried for ever: a reply to a message that does not exist,
/// and a `send` that Graph answers with 400 (it sent nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failures_end_failed_with_the_reason() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Bad recipients").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "status": 400, "code": "ErrorInvalidRecipients",
    }))
    .await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let missing = api
        .accepted(
            SUPPORT,
            "AAkALgNoSuchMessage",
            "reply",
            "missing-1",
            &json!({"comment": "Hi"}),
        )
        .await;
    let rejected = api
        .accepted(SUPPORT, &original, "reply", "rejected-1", &json!({"comment": "Hi"}))
        .await;

    let mut problems = Vec::new();
    for (id, words) in [(&missing, "not found"), (&rejected, "ErrorInvalidRecipients")] {
        let view = wait_end(&api, id, Duration::from_secs(15)).await;
        let reason = view["error"].as_str().unwrap_or_default();
        if view["status"] != "failed" || !reason.contains(words) {
            problems.push(format!("expected failed naming '{words}', got {view}"));
            continue;
        }
        // The status is recorded before the event is written: wait (bounded) for the event.
        let named = |e: &Value| {
            e["outbound_id"] == id.as_str()
                && e["status"] == "failed"
                && e["error"].as_str().unwrap_or_default().contains(words)
        };
        let told = eventually(LIMIT, || async { outbound_events(&env).iter().any(named) }).await;
        if !told {
            problems.push(format!(
                "no failed event naming '{words}' for {id}: {:?}",
                outbound_events(&env)
            ));
        }
    }
    let sends: Vec<String> = support_requests(&env, "POST", "/send")
        .await
        .iter()
        .map(|e| format!("{} {} -> {}", e["time"], log_path(e), e["status"]))
        .collect();
    assert!(
        problems.is_empty(),
        "{}\n/send requests: {sends:?}",
        problems.join("\n")
    );
    assert!(env.folder_messages(SUPPORT, "sentitems").await.is_empty());
    assert!(env.folder_messages(ANN, "inbox").await.is_empty());
    daemon.stop().await;
}
