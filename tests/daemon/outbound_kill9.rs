//! Exactly one email after `kill -9` of the real binary at each step of a send.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::outbound::*;
use crate::support::{Binary, Env, eventually, log_path, poll_until, with_microsoft};

/// How long the emulator holds the request the daemon is killed during.
const HOLD_MS: u64 = 4000;

/// Where the send is when the process dies.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Stored, the draft being created (`createReply` held).
    AfterStoring,
    /// The draft created in Graph, its id not yet recorded (`createReply` answer held).
    DraftCreatedUnrecorded,
    /// The draft exists, an attachment being added (`attachments` held).
    AfterDraft,
    /// Draft complete, `send` held before it is handled.
    AfterAttachments,
    /// `send` handled (the mail is out) but its answer held: not recorded.
    AfterSend,
}

impl Step {
    /// The fault that holds the daemon at this step.
    fn fault(self) -> Value {
        let (suffix, hold) = match self {
            Step::AfterStoring => ("/createReply", "delay_ms"),
            Step::DraftCreatedUnrecorded => ("/createReply", "delay_after_ms"),
            Step::AfterDraft => ("/attachments", "delay_ms"),
            Step::AfterAttachments => ("/send", "delay_ms"),
            Step::AfterSend => ("/send", "delay_after_ms"),
        };
        let mut rule = json!({"path_prefix": SUPPORT_PATHS, "path_suffix": suffix, "method": "POST", "times": 1});
        rule[hold] = json!(HOLD_MS);
        rule
    }
}

/// One kill-and-restart at `step`, in its own emulator and temp dir.
async fn kill_at(step: Step) {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Crash course").await;
    let config = env.write_config(&config(&env, &[SUPPORT]));
    env.fault(step.fault()).await;
    let mut first: Binary = env.spawn_binary(&config, 0).await;
    let api = Api::at(first.addr());
    let body = json!({
        "comment": "Sent exactly once.",
        "attachments": [{"name": "note.txt", "content_type": "text/plain", "content_base64": STANDARD.encode(b"small attachment")}],
    });
    let id = api.accepted(SUPPORT, &original, "reply", "crash-1", &body).await;

    // Kill when the held request arrived (its one-shot rule is used up) or, after `send`,
    // once the mail is out.
    let reached = eventually(LIMIT, || async {
        match step {
            Step::AfterSend => !env.folder_messages(SUPPORT, "sentitems").await.is_empty(),
            Step::DraftCreatedUnrecorded => !env.folder_messages(SUPPORT, "drafts").await.is_empty(),
            _ => env.control_get("/_emulator/faults").await["faults"] == json!([]),
        }
    })
    .await;
    let held_since = Instant::now();
    assert!(
        reached,
        "{step:?}: the daemon never reached the step; outbound: {:?}; stderr:\n{}",
        api.outbound(&id).await,
        tail(&first.stderr(), 30)
    );
    first.kill_9();
    let drafts = env.folder_messages(SUPPORT, "drafts").await.len();
    let expected_drafts = match step {
        Step::AfterStoring | Step::AfterSend => 0,
        Step::DraftCreatedUnrecorded | Step::AfterDraft | Step::AfterAttachments => 1,
    };
    assert_eq!(drafts, expected_drafts, "{step:?}: drafts at the kill");
    env.clear_faults().await;

    let second = env.spawn_binary(&config, 1).await;
    let api = Api::at(second.addr());
    let awaited = format!("{step:?}: outbound {id} sent after the restart");
    poll_until(LIMIT, &awaited, || async {
        let (status, view) = api.outbound(&id).await;
        assert_eq!(status, 200, "{step:?}: the restarted daemon lost outbound {id}: {view}");
        match view["status"].as_str() {
            Some("sent") => Ok(()),
            Some("failed") => panic!(
                "{step:?}: outbound {id} failed after the restart: {view}; stderr:\n{}",
                tail(&second.stderr(), 30)
            ),
            _ => Err(format!("{view}; stderr:\n{}", tail(&second.stderr(), 30))),
        }
    })
    .await;
    // A held request of the killed process would be handled by now: give it the chance to
    // show up as a second mail or a stray draft (a quiet period, bounded by HOLD_MS).
    let quiet_until = held_since + Duration::from_millis(HOLD_MS + 500);
    tokio::time::sleep(quiet_until.saturating_duration_since(Instant::now())).await;

    let sent = env.folder_messages(SUPPORT, "sentitems").await;
    let received = env.folder_messages(ANN, "inbox").await;
    let drafts = env.folder_messages(SUPPORT, "drafts").await;
    let log: Vec<String> = env
        .requests()
        .await
        .iter()
        .filter(|e| e["method"] != "GET" || e["query"].as_str().is_some_and(|q| q.contains("ExtendedProperties")))
        .map(|e| format!("{} {} {} {}", e["seq"], e["method"], log_path(e), e["status"]))
        .collect();
    assert!(
        sent.len() == 1 && received.len() == 1 && drafts.is_empty(),
        "{step:?}: {} in Sent Items, {} in Ann's inbox, {} drafts left ({:?}); Graph writes and marker look-ups:\n{}",
        sent.len(),
        received.len(),
        drafts.len(),
        summary(&drafts),
        log.join("\n")
    );
    assert_eq!(received[0]["attachments"][0]["name"], "note.txt", "{step:?}");
    wait_sent_event(&env, &id).await;
}

/// Runs [`kill_at`] for each step concurrently; reports every failing step.
async fn kill_at_each(steps: &[Step]) {
    let runs: Vec<_> = steps.iter().map(|&step| (step, tokio::spawn(kill_at(step)))).collect();
    let mut failures = Vec::new();
    for (step, run) in runs {
        if let Err(e) = run.await {
            let reason = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            failures.push(format!("[{step:?}] {reason}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn sigkill_at_each_step_sends_once() {
    kill_at_each(&[
        Step::AfterStoring,
        Step::AfterDraft,
        Step::AfterAttachments,
        Step::AfterSend,
    ])
    .await;
}

/// Graph created the marked draft, the daemon died before recording it: the restart must
/// find that draft by its marker, not leave it behind in Drafts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_draft_created_before_recorded_leaves_no_draft() {
    kill_at_each(&[Step::DraftCreatedUnrecorded]).await;
}

/// `send` handled by Graph but its answer lost (timeout): the message is out, so the outbound
/// must end `sent`, never `failed` (routing would send it again), and go out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_send_answer_is_not_a_failure() {
    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Lost answer").await;
    env.fault(json!({
        "path_prefix": SUPPORT_PATHS, "path_suffix": "/send", "method": "POST",
        "delay_after_ms": 2500, "times": 1,
    }))
    .await;
    let toml = with_microsoft(&config(&env, &[SUPPORT]), "request_timeout = \"1s\"");
    let daemon = env.start(&toml).await;
    let api = Api::at(daemon.addr);
    let id = api
        .accepted(
            SUPPORT,
            &original,
            "reply",
            "lost-1",
            &json!({"comment": "Did you get this?"}),
        )
        .await;
    let deadline = Instant::now() + LIMIT;
    let view = loop {
        let (_, view) = api.outbound(&id).await;
        if matches!(view["status"].as_str(), Some("sent" | "failed")) || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sends: Vec<String> = support_requests(&env, "POST", "/send")
        .await
        .iter()
        .map(|e| format!("{} {} -> {}", e["seq"], log_path(e), e["status"]))
        .collect();
    assert_eq!(
        env.folder_messages(SUPPORT, "sentitems").await.len(),
        1,
        "Sent Items; /send requests: {sends:?}"
    );
    assert_eq!(env.folder_messages(ANN, "inbox").await.len(), 1, "Ann's inbox");
    assert_eq!(
        view["status"],
        "sent",
        "the mail went out once, but the outbound says {view}; /send requests: {sends:?}; events: {:?}",
        outbound_events(&env)
    );
    wait_sent_event(&env, &id).await;
    daemon.stop().await;
}
