//! One email per `Idempotency-Key`, however many requests carry it at once.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::Env;
use crate::support::outbound::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_twenty_concurrent_requests_one_email() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Order 7").await;
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);
    let body = json!({"comment": "Exactly once, please."});

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (api, original, body) = (api.clone(), original.clone(), body.clone());
        tasks.spawn(async move { api.respond(SUPPORT, &original, "reply", "same-key", &body).await });
    }
    let mut ids = BTreeSet::new();
    while let Some(answer) = tasks.join_next().await {
        let (status, answer) = answer.unwrap();
        assert_eq!(status, 202, "a concurrent duplicate was refused: {answer}");
        ids.insert(outbound_id(&answer));
    }
    assert_eq!(ids.len(), 1, "20 requests with one key got several ids: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    api.wait_sent(&id).await;

    // Once more, later: same id, already sent, nothing new.
    let (status, again) = api.respond(SUPPORT, &original, "reply", "same-key", &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["status"], "sent", "{again}");
    // Same key, other request: refused, and it names the key.
    let (status, other) = api
        .respond(
            SUPPORT,
            &original,
            "reply",
            "same-key",
            &json!({"comment": "Something else."}),
        )
        .await;
    assert_eq!(status, 422, "same key with a different body: {other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{other}");
    assert!(
        other["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Idempotency-Key")),
        "{other}"
    );

    exactly_one(&env, SUPPORT, "sentitems", "RE: Order 7").await;
    exactly_one(&env, ANN, "inbox", "RE: Order 7").await;
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 1);
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    let drafts_made = support_requests(&env, "POST", "/createReply").await;
    assert_eq!(drafts_made.len(), 1, "one key, several drafts: {drafts_made:?}");
    wait_sent_event(&env, &id).await;
    let sent_events = outbound_events(&env).len();
    assert_eq!(sent_events, 1, "{:?}", outbound_events(&env));
    daemon.stop().await;
}
