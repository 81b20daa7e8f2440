//! One case per class of the classification table: state, reason, `aadsts`, API, metric,
//! one state event, one WARN line; transient token failures that only back off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delegated::*;
use crate::support::{CLIENT, Env, SECRET, TENANT, eventually, is_token_request, metric, with_microsoft};
use crate::support::{addr, last_seq, requests_since};

// One flag as every surface shows it
// ---------------------------------------------------------------------------------------

/// What a flagged mailbox must show.
#[derive(Clone, Copy)]
struct Flag<'a> {
    mailbox: &'a str,
    state: &'a str,
    aadsts: Option<u64>,
    /// Words the reason must contain (case-insensitive): what happened and what to do.
    reason_has: &'a [&'a str],
    /// `inboxd_mailboxes{state}` expected once every mailbox of the test settled.
    count: f64,
    /// State events and WARN lines of the mailbox before the cause was introduced.
    mark: Mark,
}

/// How many state events of a mailbox, and WARN lines announcing a state, there were.
#[derive(Clone, Copy)]
struct Mark {
    events: usize,
    warns: usize,
}

impl Mark {
    fn now(env: &Env, mailbox: &str, state: &str) -> Mark {
        Mark {
            events: state_events(env, mailbox).len(),
            warns: warn_lines(mailbox, state).len(),
        }
    }
}

/// State events into `state` since `mark`.
fn events_since(env: &Env, mailbox: &str, state: &str, mark: Mark) -> Vec<Value> {
    state_events(env, mailbox)
        .into_iter()
        .skip(mark.events)
        .filter(|e| e["state"] == state)
        .collect()
}

/// Words that tell a human what to do.
const ACTIONS: [&str; 14] = [
    "must",
    "should",
    "grant",
    "ask ",
    "create",
    "check",
    "open the",
    "rotate",
    "re-consent",
    "consent again",
    "retries",
    "allow",
    "fix ",
    "add ",
];

/// Checks a flag: `/v1/mailboxes` (state, reason, aadsts, consent_url, since), the metric,
/// then waits until the daemon re-probed (`reprobe` matches a request-log entry made after
/// the flag) and checks that exactly one state event and one WARN line announced it.
/// Returns the problems found (empty when all is right), so one run reports all of them.
async fn check_flag(env: &Env, daemon: SocketAddr, flag: &Flag<'_>, reprobe: impl Fn(&Value) -> bool) -> Vec<String> {
    let Flag {
        mailbox,
        state,
        aadsts,
        reason_has,
        count,
        mark,
    } = *flag;
    let mut problems = Vec::new();
    let v = wait_state(env, daemon, mailbox, state, LIMIT).await;
    let flagged_seq = last_seq(env).await;
    let reason = v["reason"].as_str().unwrap_or_default().to_lowercase();
    for word in reason_has {
        if !reason.contains(&word.to_lowercase()) {
            problems.push(format!(
                "{mailbox}: reason does not mention '{word}': {:?}",
                v["reason"]
            ));
        }
    }
    if !ACTIONS.iter().any(|a| reason.contains(a)) {
        problems.push(format!("{mailbox}: reason does not say what to do: {:?}", v["reason"]));
    }
    if v["aadsts"].as_u64() != aadsts {
        problems.push(format!("{mailbox}: aadsts {} (expected {aadsts:?})", v["aadsts"]));
    }
    let expected_link = format!("/oauth/start?mailbox={}", mailbox.replace('@', "%40"));
    match (state == "needs_reconsent", v["consent_url"].as_str()) {
        (true, Some(url)) if url.ends_with(&expected_link) => {}
        (true, other) => problems.push(format!("{mailbox}: consent_url {other:?}, expected …{expected_link}")),
        (false, None) => {}
        (false, Some(url)) => problems.push(format!("{mailbox}: consent_url {url} shown for {state}")),
    }
    let since_ok = v["since"]
        .as_str()
        .is_some_and(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok());
    if !since_ok {
        problems.push(format!("{mailbox}: since is not RFC 3339: {}", v["since"]));
    }
    if !eventually(LIMIT, || async { in_state(daemon, state).await == count }).await {
        problems.push(format!(
            "inboxd_mailboxes{{state=\"{state}\"}} is {} (expected {count})",
            in_state(daemon, state).await
        ));
    }

    // A flagged mailbox is re-probed; a re-probe that finds the same cause is no state change.
    // Its task is sequential: once a second re-probe is sent, the first one's answer has been
    // acted on (a duplicate state event would be in the file by then).
    let reprobed = eventually(LIMIT, || async {
        requests_since(env, flagged_seq)
            .await
            .iter()
            .filter(|e| reprobe(e))
            .count()
            >= 2
    })
    .await;
    if !reprobed {
        problems.push(format!(
            "{mailbox}: not re-probed twice within {LIMIT:?} of being flagged"
        ));
    }
    let events = events_since(env, mailbox, state, mark);
    let flapped: Vec<Value> = state_events(env, mailbox)
        .into_iter()
        .skip(mark.events)
        .filter(|e| e["state"] != state)
        .collect();
    if !flapped.is_empty() {
        problems.push(format!(
            "{mailbox}: left {state} while the cause persisted: {:#?}",
            flapped
                .iter()
                .map(|e| (&e["from"], &e["state"], &e["since"]))
                .collect::<Vec<_>>()
        ));
    }
    if events.len() != 1 {
        problems.push(format!(
            "{mailbox}: {} `{STATE_SCHEMA}` events into {state} (expected exactly one): {:#?}",
            events.len(),
            events
                .iter()
                .map(|e| (&e["from"], &e["reason"], &e["since"]))
                .collect::<Vec<_>>()
        ));
    }
    if let Some(e) = events.first()
        && (e["aadsts"].as_u64() != aadsts || e["reason"].as_str().is_none())
    {
        problems.push(format!("{mailbox}: state event lacks the aadsts or reason: {e}"));
    }
    let warns: Vec<Value> = warn_lines(mailbox, state).into_iter().skip(mark.warns).collect();
    if warns.len() != 1 {
        problems.push(format!(
            "{mailbox}: {} WARN lines announcing {state} (expected exactly one): {:#?}",
            warns.len(),
            warns
        ));
    }
    if let Some(w) = warns.first() {
        if w["aadsts"].as_u64() != aadsts {
            problems.push(format!("{mailbox}: WARN line without aadsts {aadsts:?}: {w}"));
        }
        // Entra's trace and correlation ids come with every token-endpoint error.
        let text = w.to_string().to_lowercase();
        if aadsts.is_some() && !(text.contains("trace") && text.contains("correlation")) {
            problems.push(format!(
                "{mailbox}: WARN line without Entra's trace/correlation id: {w}"
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// One case per class of the table
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_grant_is_flagged_needs_reconsent_with_the_code_and_a_consent_link() {
    capture_logs();
    let env = Env::new().await;
    // Long enough that the access token outlives the failed refresh (as a real one does by
    // up to five minutes): the flag must hold anyway.
    env.settings(json!({"token_lifetime_secs": 6})).await;
    let (user, other) = (addr("rc-user"), addr("rc-other"));
    env.mailboxes(&[user.clone(), other.clone()]).await;
    let daemon = env
        .start(&config(&env, std::slice::from_ref(&other), &delegated(&user, "test")))
        .await;
    let token = mint(&env, TENANT, CLIENT, &user).await;
    let (status, body) = import(daemon.addr, &user, &token).await;
    assert_eq!(status, 200, "import: {body}");
    env.deliver(&user, "before the revocation").await;
    assert!(wait_delivered(&env, &user, "before the revocation", Duration::from_secs(10)).await);
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;

    let mark = Mark::now(&env, &user, "needs_reconsent");
    env.control("/_emulator/revoke", json!({"address": user, "aadsts": 50173}))
        .await;
    let flag = Flag {
        mailbox: &user,
        state: "needs_reconsent",
        aadsts: Some(50173),
        reason_has: &["50173", "consent"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, refused_token_request).await;

    // Every other mailbox carries on.
    env.deliver(&other, "while the user is flagged").await;
    if !wait_delivered(&env, &other, "while the user is flagged", Duration::from_secs(10)).await {
        problems.push(format!("{other} stopped delivering while {user} was flagged"));
    }
    // A new grant resumes it by itself.
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "second import: {body}");
    env.deliver(&user, "after the new grant").await;
    if !wait_delivered(&env, &user, "after the new grant", Duration::from_secs(10)).await {
        problems.push(format!("{user} did not deliver after a new grant was imported"));
    }
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_secret_flags_every_mailbox_of_that_app_and_no_other() {
    capture_logs();
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let TwoApps {
        own,
        user,
        other,
        daemon,
        ..
    } = two_apps(&env, "ci").await;

    let marks: HashMap<&str, Mark> = [&own, &user]
        .iter()
        .map(|m| (m.as_str(), Mark::now(&env, m, "credential_invalid")))
        .collect();
    // Someone rotated the secret in Entra; inboxd still has the old one.
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": "rotated-by-someone-else"}),
    )
    .await;
    let mut problems = Vec::new();
    for m in [&own, &user] {
        let flag = Flag {
            mailbox: m,
            state: "credential_invalid",
            aadsts: Some(7000215),
            reason_has: &["7000215", "secret"],
            count: 2.0,
            mark: marks[m.as_str()],
        };
        wait_state(&env, daemon.addr, m, "credential_invalid", LIMIT).await;
        problems.extend(check_flag(&env, daemon.addr, &flag, refused_token_request).await);
    }
    env.deliver(&other, "other app carries on").await;
    if !wait_delivered(&env, &other, "other app carries on", Duration::from_secs(10)).await {
        problems.push(format!("{other} (another app) stopped delivering"));
    }
    let other_view = view(daemon.addr, &other).await;
    if other_view["state"] != "active" || !state_events(&env, &other).iter().all(|e| e["state"] == "active") {
        problems.push(format!(
            "{other} (another app) was touched: {other_view}; events {:?}",
            state_events(&env, &other)
        ));
    }

    // The secret inboxd holds becomes valid again: both resume by themselves.
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": SECRET}),
    )
    .await;
    env.deliver(&own, "secret fixed").await;
    if !wait_delivered(&env, &own, "secret fixed", Duration::from_secs(30)).await {
        problems.push(format!(
            "{own} did not resume by itself once the secret was valid again"
        ));
    }
    if !eventually(Duration::from_secs(30), || async {
        view(daemon.addr, &user).await["state"] == "active"
    })
    .await
    {
        problems.push(format!(
            "{user} did not resume by itself: {}",
            view(daemon.addr, &user).await
        ));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_policy_flags_only_that_mailbox_access_denied() {
    capture_logs();
    let env = Env::new().await;
    let (denied, open) = (addr("ad-denied"), addr("ad-open"));
    env.mailboxes(&[denied.clone(), open.clone()]).await;
    let daemon = env.start(&config(&env, &[denied.clone(), open.clone()], "")).await;
    for m in [&denied, &open] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    let mark = Mark::now(&env, &denied, "access_denied");
    env.control(&format!("/_emulator/mailboxes/{denied}/access"), json!({"deny": true}))
        .await;
    let flag = Flag {
        mailbox: &denied,
        state: "access_denied",
        aadsts: None,
        reason_has: &["403", "ErrorAccessDenied"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, graph_request_for(&denied)).await;
    env.deliver(&open, "same app, other mailbox").await;
    if !wait_delivered(&env, &open, "same app, other mailbox", Duration::from_secs(10)).await {
        problems.push(format!("{open} (same app) stopped delivering"));
    }
    if view(daemon.addr, &open).await["state"] != "active" {
        problems.push(format!("{open} left active: {}", view(daemon.addr, &open).await));
    }
    // Access granted again: it resumes by itself.
    env.control(&format!("/_emulator/mailboxes/{denied}/access"), json!({"deny": false}))
        .await;
    env.deliver(&denied, "access granted").await;
    if !wait_delivered(&env, &denied, "access granted", Duration::from_secs(20)).await {
        problems.push(format!("{denied} did not resume once access was granted"));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailbox_that_does_not_exist_is_not_found_and_the_others_carry_on() {
    capture_logs();
    let env = Env::new().await;
    let (missing, present) = (addr("nf-missing"), addr("nf-present"));
    env.mailboxes(std::slice::from_ref(&present)).await;
    env.deliver(&present, "present mailbox").await;
    let mark = Mark::now(&env, &missing, "not_found");
    let daemon = env.start(&config(&env, &[missing.clone(), present.clone()], "")).await;
    let flag = Flag {
        mailbox: &missing,
        state: "not_found",
        aadsts: None,
        reason_has: &["404"],
        count: 1.0,
        mark,
    };
    let mut problems = check_flag(&env, daemon.addr, &flag, graph_request_for(&missing)).await;
    if !wait_delivered(&env, &present, "present mailbox", Duration::from_secs(10)).await {
        problems.push(format!("{present} did not deliver beside a missing mailbox"));
    }
    // The mailbox gets created: it resumes by itself.
    env.mailboxes(std::slice::from_ref(&missing)).await;
    env.deliver(&missing, "now it exists").await;
    if !wait_delivered(&env, &missing, "now it exists", Duration::from_secs(20)).await {
        problems.push(format!("{missing} did not resume once created"));
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}

/// Timeouts, 5xx, 429, `temporarily_unavailable` and the transient AADSTS codes from the
/// token endpoint, for an app-only and a delegated mailbox: `backoff`, never a flag, and both
/// recover by themselves. Each mailbox's app lives in its own tenant, so each meets exactly
/// its own three faults (the pacing doubles per failure: more would not fit the time budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_timeouts_5xx_and_temporarily_unavailable_only_back_off() {
    capture_logs();
    let env = Env::new().await;
    register_app(&env, TENANT2, OTHER_CLIENT, OTHER_SECRET).await;
    let own = addr("tr-own");
    let user = "tr-user@fabrikam.test".to_string();
    env.mailboxes(std::slice::from_ref(&own)).await;
    env.control("/_emulator/mailboxes", json!({"tenant_id": TENANT2, "address": user}))
        .await;
    let extra = format!(
        "{}{}",
        app("deleg", TENANT2, OTHER_CLIENT, OTHER_SECRET),
        delegated(&user, "deleg")
    );
    let toml = with_microsoft(
        &config(&env, std::slice::from_ref(&own), &extra),
        "request_timeout = \"1s\"",
    );

    // First run: the delegated mailbox gets its grant.
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT2, OTHER_CLIENT, &user).await).await;
    assert_eq!(status, 200, "import: {body}");
    for m in [&own, &user] {
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    daemon.stop().await;
    let before: HashMap<&str, usize> = [&own, &user]
        .iter()
        .map(|m| (m.as_str(), state_events(&env, m).len()))
        .collect();

    // Second run starts into a failing token endpoint.
    let faults = [
        (TENANT, json!({"status": 503})),
        (TENANT, json!({"status": 400, "oauth_error": "temporarily_unavailable"})),
        (TENANT, json!({"delay_ms": 2500})),
        (TENANT2, json!({"reset": true})),
        (TENANT2, json!({"aadsts": 50196})),
        (TENANT2, json!({"aadsts": 90055})),
    ];
    for (tenant, mut rule) in faults {
        rule["path_prefix"] = json!(format!("/{tenant}/oauth2"));
        rule["times"] = json!(1);
        env.fault(rule).await;
    }
    env.deliver(&own, "through the token outage").await;
    env.deliver(&user, "through the token outage").await;
    let daemon = env.start(&toml).await;

    let mut problems = Vec::new();
    for m in [&own, &user] {
        if !wait_delivered(&env, m, "through the token outage", Duration::from_secs(45)).await {
            problems.push(format!("{m} did not recover by itself: {}", view(daemon.addr, m).await));
        }
    }
    let left = env.control_get("/_emulator/faults").await;
    if left["faults"].as_array().is_none_or(|a| !a.is_empty()) {
        problems.push(format!("not every fault fired: {left}"));
    }
    let log = env.requests().await;
    let statuses: Vec<u64> = log
        .iter()
        .filter(|e| is_token_request(e))
        .filter_map(|e| e["status"].as_u64())
        .filter(|s| *s != 200)
        .collect();
    for expected in [503, 400, 429] {
        if !statuses.contains(&expected) {
            problems.push(format!("no token request answered {expected}: {statuses:?}"));
        }
    }
    for m in [&own, &user] {
        let events = state_events(&env, m);
        let new = &events[before[m.as_str()]..];
        let states: Vec<&str> = new.iter().filter_map(|e| e["state"].as_str()).collect();
        if states.iter().any(|s| FLAGS.contains(s)) || states.iter().any(|s| !["backoff", "active"].contains(s)) {
            problems.push(format!("{m} was flagged by transient failures: {new:#?}"));
        }
        if !states.contains(&"backoff") {
            problems.push(format!("{m} never showed backoff while its token failed: {states:?}"));
        }
        for w in warn_lines(m, "backoff") {
            let reason = w["reason"].as_str().unwrap_or_default();
            if !reason.contains("retries by itself") {
                problems.push(format!("{m}: backoff WARN does not say it retries by itself: {w}"));
            }
        }
    }
    for m in [&own, &user] {
        if !eventually(LIMIT, || async { view(daemon.addr, m).await["state"] == "active" }).await {
            problems.push(format!("{m} is not active: {}", view(daemon.addr, m).await));
        }
    }
    let text = metrics(daemon.addr).await;
    for state in FLAGS {
        let n = metric(&text, "inboxd_mailboxes", &format!("state=\"{state}\"")).unwrap_or(0.0);
        if n != 0.0 {
            problems.push(format!("inboxd_mailboxes{{state=\"{state}\"}} = {n}"));
        }
    }
    assert_no_problems(&problems);
    daemon.stop().await;
}
