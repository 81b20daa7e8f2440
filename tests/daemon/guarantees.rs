//! Transient Graph failures never flag a mailbox, however long they last: storms of 429s,
//! 5xx, connection resets and hung requests that outlast every retry of one Graph call (so
//! whole rounds fail) put a mailbox in `backoff` and nowhere else; once they stop, it is
//! `active` again and has delivered everything, once.
//!
//! Every state a mailbox passes through is checked twice: in the `inboxd.mailbox_state.v1`
//! events of the file sink (each change, with where it came from) and in `/v1/mailboxes`,
//! sampled all along.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{API_TOKEN, Env, addr, eventually, log_path, with_api_token, with_microsoft};

/// The states a transient failure may put a mailbox in (besides where it starts and ends).
const TRANSIENT_STATES: [&str; 3] = ["starting", "backoff", "active"];

/// Attempts of one Graph call: the first and its 6 retries (`Graph::call`).
const ATTEMPTS_PER_CALL: u64 = 7;

/// Bound on every wait for the daemon (a hang guard, not what is measured).
const LIMIT: Duration = Duration::from_secs(120);

/// Samples `/v1/mailboxes` until dropped: every (mailbox, state) seen.
struct StateSampler {
    seen: Arc<Mutex<BTreeSet<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StateSampler {
    fn start(daemon: SocketAddr) -> StateSampler {
        let seen: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let http = reqwest::Client::new();
                loop {
                    let resp = http
                        .get(format!("http://{daemon}/v1/mailboxes"))
                        .bearer_auth(API_TOKEN)
                        .send()
                        .await
                        .expect("/v1/mailboxes answers");
                    assert_eq!(resp.status(), 200, "/v1/mailboxes");
                    let body: Value = resp.json().await.expect("/v1/mailboxes is JSON");
                    let views = body["mailboxes"].as_array().expect("mailboxes array").clone();
                    {
                        let mut seen = seen.lock().unwrap();
                        for v in views {
                            seen.insert((
                                v["address"].as_str().expect("address").to_string(),
                                v["state"].as_str().expect("state").to_string(),
                            ));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        StateSampler { seen, task }
    }

    /// States sampled for `mailbox` so far.
    fn states(&self, mailbox: &str) -> BTreeSet<String> {
        assert!(!self.task.is_finished(), "the /v1/mailboxes sampler died");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == mailbox)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

impl Drop for StateSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every state `mailbox` went through according to its state events (`from` and `state`).
fn event_states(env: &Env, mailbox: &str) -> Vec<String> {
    env.state_events(mailbox)
        .iter()
        .flat_map(|e| [e["from"].clone(), e["state"].clone()])
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("state event without states: {s}"))
                .to_string()
        })
        .collect()
}

/// Panics when `mailbox` was ever in a state a transient failure must not cause.
fn assert_only_transient_states(env: &Env, sampler: &StateSampler, mailbox: &str) {
    let events = env.state_events(mailbox);
    for state in event_states(env, mailbox) {
        assert!(
            TRANSIENT_STATES.contains(&state.as_str()),
            "{mailbox} went {state} on transient Graph failures; its state events: {events:#?}"
        );
    }
    let sampled = sampler.states(mailbox);
    assert!(
        sampled.iter().all(|s| TRANSIENT_STATES.contains(&s.as_str())),
        "/v1/mailboxes showed {mailbox} as {sampled:?} during transient Graph failures"
    );
}

/// Subjects delivered for `mailbox`, panicking on a message delivered twice.
fn delivered_once(env: &Env, mailbox: &str) -> HashSet<String> {
    let mut subjects = HashSet::new();
    let mut ids = HashSet::new();
    for e in env.events().into_iter().filter(|e| e.mailbox == mailbox) {
        assert!(
            ids.insert(e.graph_id.clone()),
            "{} ({}) delivered twice",
            e.graph_id,
            e.subject
        );
        subjects.insert(e.subject);
    }
    subjects
}

/// Requests of `mailbox` (its own paths, and its parts inside `$batch`) answered with `status`.
fn answered(log: &[Value], mailbox: &str, status: u64) -> usize {
    let prefix = format!("/v1.0/users/{mailbox}").to_ascii_lowercase();
    log.iter()
        .filter(|e| log_path(e).to_ascii_lowercase().starts_with(&prefix) && e["status"] == status)
        .count()
}

/// Waits until `mailbox` has a state event into `state`; panics at once on a flagged state.
async fn wait_state_event(env: &Env, mailbox: &str, state: &str) {
    let reached = eventually(LIMIT, || async {
        let events = env.state_events(mailbox);
        for s in event_states(env, mailbox) {
            assert!(
                TRANSIENT_STATES.contains(&s.as_str()),
                "{mailbox} went {s} on transient Graph failures; its state events: {events:#?}"
            );
        }
        events.iter().any(|e| e["state"] == state)
    })
    .await;
    assert!(
        reached,
        "{mailbox} never went {state}; its state events: {:#?}",
        env.state_events(mailbox)
    );
}

/// Waits until the emulator holds no fault rule any more (each fired as often as it was meant to).
async fn wait_faults_consumed(env: &Env) {
    let consumed = eventually(LIMIT, || async {
        env.control_get("/_emulator/faults").await["faults"] == json!([])
    })
    .await;
    assert!(
        consumed,
        "faults left unconsumed: {}",
        env.control_get("/_emulator/faults").await
    );
}

/// Once the faults are gone: each mailbox is `active`, has delivered exactly `subjects`, and
/// never passed through a flagged state.
async fn assert_recovered(
    env: &Env,
    daemon: &crate::support::Daemon,
    sampler: &StateSampler,
    expected: &[(String, HashSet<String>)],
) {
    let all_delivered = eventually(LIMIT, || async {
        expected.iter().all(|(m, subjects)| delivered_once(env, m) == *subjects)
    })
    .await;
    for (m, subjects) in expected {
        assert!(
            all_delivered,
            "{m} delivered {:?}, expected {subjects:?}",
            delivered_once(env, m)
        );
    }
    let active = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        expected.iter().all(|(m, _)| views[m.as_str()]["state"] == "active")
    })
    .await;
    assert!(
        active,
        "not every mailbox is active again: {:?}",
        daemon.mailbox_views().await
    );
    for (m, _) in expected {
        assert_only_transient_states(env, sampler, m);
        let last = env
            .state_events(m)
            .last()
            .cloned()
            .expect("a mailbox that recovered has state events");
        assert_eq!(
            last["state"], "active",
            "{m}: the last state event is not `active`: {last}"
        );
    }
}

/// 429 storms (with `Retry-After`) and 503 storms (with `Retry-After`, as Graph sends them)
/// several calls long: every round of the mailbox fails for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_503_storms_lasting_many_rounds_only_ever_mean_backoff() {
    let env = Env::new().await;
    let (throttled, failing, calm) = (addr("storm-throttled"), addr("storm-unavailable"), addr("storm-calm"));
    let all = [throttled.clone(), failing.clone(), calm.clone()];
    env.mailboxes(&all).await;
    for m in &all {
        for i in 0..3 {
            env.deliver(m, &format!("{m} before {i}")).await;
        }
    }
    // Four calls' worth of failures each: the rounds that meet them fail, one after the other.
    let storm = 4 * ATTEMPTS_PER_CALL;
    env.fault_for_mailbox(&throttled, json!({"status": 429, "retry_after": "0.2", "times": storm}))
        .await;
    env.fault_for_mailbox(&failing, json!({"status": 503, "retry_after": "0.1", "times": storm}))
        .await;
    let daemon = env.start(&with_api_token(&env.config(&all, "200ms"))).await;
    let sampler = StateSampler::start(daemon.addr);

    // The storms outlast a call: the mailboxes back off (and mail arrives meanwhile).
    wait_state_event(&env, &throttled, "backoff").await;
    wait_state_event(&env, &failing, "backoff").await;
    for m in [&throttled, &failing] {
        env.deliver(m, &format!("{m} during")).await;
    }
    wait_faults_consumed(&env).await;
    let log = env.requests().await;
    assert_eq!(
        answered(&log, &throttled, 429),
        storm as usize,
        "every 429 reached the daemon"
    );
    assert_eq!(
        answered(&log, &failing, 503),
        storm as usize,
        "every 503 reached the daemon"
    );

    let mut expected = Vec::new();
    for m in &all {
        let mut subjects: HashSet<String> = (0..3).map(|i| format!("{m} before {i}")).collect();
        if *m != calm {
            subjects.insert(format!("{m} during"));
        }
        expected.push((m.clone(), subjects));
    }
    assert_recovered(&env, &daemon, &sampler, &expected).await;
    // The storms were the other mailboxes' business only.
    let calm_states: Vec<String> = event_states(&env, &calm);
    assert!(
        calm_states.iter().all(|s| s == "starting" || s == "active"),
        "the calm mailbox left active: {calm_states:?}"
    );
    // The stormy ones failed more than one round each.
    for m in [&throttled, &failing] {
        let backoffs = env.state_events(m).iter().filter(|e| e["state"] == "backoff").count();
        assert!(backoffs >= 1, "{m}: no backoff recorded");
    }
    daemon.stop().await;
}

/// 500s without `Retry-After`, connection resets, and requests that hang past
/// `microsoft.request_timeout`: each outlasts the exponential backoff of a whole Graph call
/// (about half a minute), so the round fails and the next one meets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_resets_and_timeouts_outlasting_a_call_only_ever_mean_backoff() {
    let env = Env::new().await;
    let (erroring, resetting, hanging) = (addr("outlast-500"), addr("outlast-reset"), addr("outlast-hang"));
    let all = [erroring.clone(), resetting.clone(), hanging.clone()];
    env.mailboxes(&all).await;
    for m in &all {
        for i in 0..2 {
            env.deliver(m, &format!("{m} before {i}")).await;
        }
    }
    // One more failure than one call has attempts: the first round fails, the second meets one.
    let storm = ATTEMPTS_PER_CALL + 1;
    env.fault_for_mailbox(&erroring, json!({"status": 500, "times": storm}))
        .await;
    env.fault_for_mailbox(&resetting, json!({"reset": true, "times": storm}))
        .await;
    env.fault_for_mailbox(&hanging, json!({"delay_ms": 4000, "times": storm}))
        .await;
    let toml = with_microsoft(&with_api_token(&env.config(&all, "200ms")), "request_timeout = \"1s\"");
    let daemon = env.start(&toml).await;
    let sampler = StateSampler::start(daemon.addr);

    for m in &all {
        wait_state_event(&env, m, "backoff").await;
    }
    wait_faults_consumed(&env).await;
    let log = env.requests().await;
    assert_eq!(
        answered(&log, &erroring, 500),
        storm as usize,
        "every 500 reached the daemon"
    );
    assert_eq!(
        answered(&log, &resetting, 0),
        storm as usize,
        "every reset reached the daemon"
    );

    let expected: Vec<(String, HashSet<String>)> = all
        .iter()
        .map(|m| (m.clone(), (0..2).map(|i| format!("{m} before {i}")).collect()))
        .collect();
    assert_recovered(&env, &daemon, &sampler, &expected).await;
    daemon.stop().await;
}
