//! `Retry-After` during a send.

use serde_json::json;

use crate::support::outbound::*;
use crate::support::{Env, log_time};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_during_send() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Slow down").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "status": 429, "retry_after": "1.2", "times": 2,
    }))
    .await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "throttled-1",
            &json!({"comment": "Patience."}),
        )
        .await;
    api.wait_sent(&id).await;

    exactly_one(&env, SUPPORT, "sentitems", "RE: Slow down").await;
    exactly_one(&env, ANN, "inbox", "RE: Slow down").await;
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    let sends = support_requests(&env, "POST", "/send").await;
    let statuses: Vec<u64> = sends.iter().filter_map(|e| e["status"].as_u64()).collect();
    assert_eq!(statuses, vec![429, 429, 202], "the /send requests: {sends:?}");
    for pair in sends.windows(2) {
        let waited = log_time(&pair[1]) - log_time(&pair[0]);
        assert!(
            waited >= time::Duration::milliseconds(1200),
            "a /send came {waited} after a 429 with Retry-After 1.2: {} then {}",
            pair[0],
            pair[1]
        );
    }
    wait_sent_event(&env, &id).await;
    daemon.stop().await;
}
