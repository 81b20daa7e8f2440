//! Replies, forwards and new mail through the API: threading and placement, recipients.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::Env;
use crate::support::outbound::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_threads_correctly() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    // The original already continues a thread, so "References is extended" is visible.
    let original = deliver_from(
        &env,
        ANN,
        &[SUPPORT],
        &[],
        "Printer on fire",
        json!([
            {"name": "Message-ID", "value": "<q2@customer.test>"},
            {"name": "In-Reply-To", "value": "<q1@customer.test>"},
            {"name": "References", "value": "<q1@customer.test>"},
        ]),
    )
    .await;
    assert_eq!(original["internet_message_id"], "<q2@customer.test>", "{original}");
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "the original was not delivered: {events:?}");
    let graph_id = events[0].graph_id.clone();

    let id = api
        .accepted(
            SUPPORT,
            &graph_id,
            "reply",
            "reply-1",
            &json!({"comment": "We are on it."}),
        )
        .await;
    let view = api.wait_sent(&id).await;
    assert_eq!(view["error"], Value::Null, "{view}");

    let subject = "RE: Printer on fire";
    let sent = exactly_one(&env, SUPPORT, "sentitems", subject).await;
    let received = exactly_one(&env, ANN, "inbox", subject).await;
    for (copy, name) in [(&sent, "support's Sent Items copy"), (&received, "Ann's copy")] {
        assert_eq!(copy["in_reply_to"], "<q2@customer.test>", "{name}: {copy}");
        assert_eq!(
            copy["references"],
            json!(["<q1@customer.test>", "<q2@customer.test>"]),
            "{name}: References must be the original's extended by its Message-ID"
        );
        assert_eq!(copy["conversation_id"], original["conversation_id"], "{name}");
        assert_eq!(addresses(&copy["to"]), set(&[ANN]), "{name}");
        assert!(
            copy["body"]["content"]
                .as_str()
                .is_some_and(|b| b.contains("We are on it.")),
            "{name} lacks the comment: {}",
            copy["body"]
        );
    }
    assert_eq!(sent["internet_message_id"], received["internet_message_id"]);
    assert_eq!(sent["from"]["address"], SUPPORT, "sent from the shared mailbox itself");
    assert!(
        sent["extended_properties"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["value"] == id.as_str())),
        "the sent item carries no marker with the outbound id: {}",
        sent["extended_properties"]
    );
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 1);
    assert_eq!(env.folder_messages(ANN, "inbox").await.len(), 1);
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );

    let event = wait_sent_event(&env, &id).await;
    assert_eq!(event["mailbox"], SUPPORT, "{event}");
    assert_eq!(event["kind"], "reply", "{event}");
    assert_eq!(event["idempotency_key"], "reply-1", "{event}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_all_forward_and_send_reach_the_right_recipients() {
    let env = Env::new().await;
    let [bob, carl, dave, erin, frank, grace] =
        ["bob", "carl", "dave", "erin", "frank", "grace"].map(|n| format!("{n}@customer.test"));
    let all: Vec<String> = [SUPPORT, ANN, &bob, &carl, &dave, &erin, &frank, &grace]
        .iter()
        .map(|a| a.to_string())
        .collect();
    env.mailboxes(&all).await;
    let original = deliver_from(&env, ANN, &[SUPPORT, &carl], &[&bob], "Team question", json!([])).await;
    let original_id = original["immutable_id"].as_str().unwrap().to_string();
    let daemon = env.start(&config(&env, &[SUPPORT])).await;
    let api = Api::at(daemon.addr);

    let reply_all = api
        .accepted(
            SUPPORT,
            &original_id,
            "reply",
            "reply-all-1",
            &json!({"comment": "Answering all of you.", "reply_all": true}),
        )
        .await;
    let forward = api
        .accepted(
            SUPPORT,
            &original_id,
            "forward",
            "forward-1",
            &json!({"comment": "FYI", "to": [{"name": "Dave", "address": dave}]}),
        )
        .await;
    let (status, answer) = api
        .post(
            &format!("/v1/mailboxes/{SUPPORT}/send"),
            Some("send-1"),
            &json!({
                "to": [erin], "cc": [{"name": "Frank", "address": frank}], "bcc": [grace],
                "subject": "Ticket 42 opened",
                "body": {"content_type": "text", "content": "We opened ticket 42 for you."},
            }),
        )
        .await;
    assert_eq!(status, 202, "send: {answer}");
    let new_mail = outbound_id(&answer);
    for id in [&reply_all, &forward, &new_mail] {
        api.wait_sent(id).await;
    }

    // Reply-all: the sender and every other recipient, Cc kept as Cc, not support itself.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "RE: Team question").await;
    assert_eq!(addresses(&sent["to"]), set(&[ANN, &carl]), "reply-all To: {sent}");
    assert_eq!(addresses(&sent["cc"]), set(&[&bob]), "reply-all Cc: {sent}");
    for who in [ANN, &bob, &carl] {
        let copy = exactly_one(&env, who, "inbox", "RE: Team question").await;
        assert_eq!(copy["in_reply_to"], original["internet_message_id"], "{who}: {copy}");
    }
    // Forward: only Dave.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "FW: Team question").await;
    assert_eq!(addresses(&sent["to"]), set(&[&dave]), "forward To: {sent}");
    assert_eq!(addresses(&sent["cc"]), BTreeSet::new(), "forward Cc: {sent}");
    exactly_one(&env, &dave, "inbox", "FW: Team question").await;
    // New mail: To, Cc and a Bcc that only Sent Items shows.
    let sent = exactly_one(&env, SUPPORT, "sentitems", "Ticket 42 opened").await;
    assert_eq!(addresses(&sent["to"]), set(&[&erin]), "{sent}");
    assert_eq!(addresses(&sent["cc"]), set(&[&frank]), "{sent}");
    assert_eq!(addresses(&sent["bcc"]), set(&[&grace]), "{sent}");
    assert!(
        sent["body"]["content"]
            .as_str()
            .is_some_and(|b| b.contains("ticket 42")),
        "{sent}"
    );
    for who in [&erin, &frank, &grace] {
        let copy = exactly_one(&env, who, "inbox", "Ticket 42 opened").await;
        assert_eq!(copy["bcc"], json!([]), "{who} sees the Bcc: {copy}");
    }

    // Nobody got anything else, and nothing is left behind.
    assert_eq!(env.folder_messages(SUPPORT, "sentitems").await.len(), 3);
    for (who, expected) in [
        (ANN, 1),
        (&bob, 1),
        (&carl, 1),
        (&dave, 1),
        (&erin, 1),
        (&frank, 1),
        (&grace, 1),
    ] {
        let inbox = env.folder_messages(who, "inbox").await;
        assert_eq!(inbox.len(), expected, "{who}'s inbox: {:?}", summary(&inbox));
    }
    assert!(
        env.folder_messages(SUPPORT, "drafts").await.is_empty(),
        "a draft lingers"
    );
    for (id, kind) in [(&reply_all, "reply_all"), (&forward, "forward"), (&new_mail, "send")] {
        let event = wait_sent_event(&env, id).await;
        assert_eq!(event["kind"], kind, "{event}");
    }
    daemon.stop().await;
}
