//! Graph misbehaving: 429 storms, 5xx, connection resets, malformed bodies, expired delta
//! tokens, replays and `@removed` entries. Nothing is lost, nothing is announced twice,
//! `Retry-After` is honoured, and the other mailboxes carry on.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Env, addr, eventually, log_path, log_time, metric, with_api_token, with_microsoft};

/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(30);
/// How long a hung request hangs: longer than any wait of these tests.
const HANG: Duration = Duration::from_secs(60);

/// Panics when a graph id appears in more than one event.
fn assert_no_duplicates(events: &[inboxd::event::MessageEvent]) {
    let mut seen = HashSet::new();
    for e in events {
        assert!(
            seen.insert(&e.graph_id),
            "message {} ({:?}) delivered twice",
            e.graph_id,
            e.subject
        );
    }
}

/// Subjects delivered for `mailbox`.
fn subjects(events: &[inboxd::event::MessageEvent], mailbox: &str) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e.mailbox == mailbox)
        .map(|e| e.subject.clone())
        .collect()
}

/// Request-log entries that belong to `mailbox`: its own paths, requests the emulator
/// attributed to it, and the outer `$batch` requests that carried its parts.
fn mailbox_requests(log: &[Value], mailbox: &str) -> Vec<Value> {
    let prefix = format!("/v1.0/users/{mailbox}").to_ascii_lowercase();
    let mine = |e: &Value| {
        log_path(e).to_ascii_lowercase().starts_with(&prefix)
            || e["mailbox"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(mailbox))
    };
    let batches: HashSet<u64> = log
        .iter()
        .filter(|e| mine(e))
        .filter_map(|e| e["batch"].as_u64())
        .collect();
    log.iter()
        .filter(|e| mine(e) || e["seq"].as_u64().is_some_and(|s| batches.contains(&s)))
        .cloned()
        .collect()
}

/// Every request of the mailbox that arrived after a 429 had been answered must arrive
/// no earlier than the 429's time plus its `Retry-After`. Returns the number of 429s seen.
fn assert_retry_after_honoured(log: &[Value], mailbox: &str) -> usize {
    let requests = mailbox_requests(log, mailbox);
    let mut throttles = 0;
    for t in requests.iter().filter(|e| e["status"] == 429) {
        throttles += 1;
        let wait: f64 = t["retry_after"]
            .as_str()
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("429 without a decimal Retry-After: {t}"));
        let at = log_time(t);
        let answered = at + time::Duration::seconds_f64(t["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0);
        let earliest = at + time::Duration::seconds_f64(wait);
        for r in &requests {
            let arrived = log_time(r);
            // Parts of the same `$batch` run side by side on the server: not the client's doing.
            let same_batch = !t["batch"].is_null() && (r["batch"] == t["batch"] || r["seq"] == t["batch"]);
            if r["seq"].as_u64() > t["seq"].as_u64() && arrived > answered && !same_batch {
                assert!(
                    arrived >= earliest,
                    "Retry-After {wait}s violated for {mailbox}: 429 (seq {}) at {}, then {} {} (seq {}) at {}",
                    t["seq"],
                    t["time"],
                    r["method"],
                    r["path"],
                    r["seq"],
                    r["time"]
                );
            }
        }
    }
    throttles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_storm_with_decimal_retry_after_is_waited_out_and_other_mailboxes_carry_on() {
    let env = Env::new().await;
    let (slow, fast) = (addr("throttled"), addr("calm"));
    env.mailboxes(&[slow.clone(), fast.clone()]).await;
    for i in 0..3 {
        env.deliver(&slow, &format!("slow {i}")).await;
        env.deliver(&fast, &format!("fast {i}")).await;
    }
    // One with an attachment, so the throttling also hits a request inside `$batch`.
    env.control(
        &format!("/_emulator/mailboxes/{slow}/messages"),
        json!({
            "from": {"name": "Customer", "address": "customer@example.net"},
            "to": [{"name": "", "address": slow}],
            "subject": "slow 3",
            "body": {"content_type": "text", "content": "see attachment"},
            "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}],
        }),
    )
    .await;
    env.fault_for_mailbox(&slow, json!({"status": 429, "retry_after": "1.5", "times": 3}))
        .await;
    // Then two more for the attachment request inside `$batch` (a URL the daemon spells
    // itself, so one of the two spellings never fires).
    for spelling in [slow.clone(), slow.replace('@', "%40")] {
        env.fault(
            json!({"path_prefix": format!("/v1.0/users/{spelling}/messages"), "status": 429,
                         "retry_after": "1.5", "times": 2}),
        )
        .await;
    }
    let daemon = env.start(&env.config(&[slow.clone(), fast.clone()], "1s")).await;

    let events = env.wait_for_events(7, LIMIT).await;
    // The calm mailbox did not wait behind the throttled one: all of its mail is in the file
    // before any of the throttled mailbox's (which waits out at least 3 × 1.5 s).
    let first_slow = events.iter().position(|e| e.mailbox == slow).unwrap_or(events.len());
    assert_eq!(
        subjects(&events[..first_slow], &fast).len(),
        3,
        "the calm mailbox stalled behind the throttled one: {events:?}"
    );
    assert_eq!(
        subjects(&events, &slow),
        (0..4).map(|i| format!("slow {i}")).collect(),
        "throttled mailbox lost mail"
    );
    assert_no_duplicates(&events);
    let with_attachment = events.iter().find(|e| e.subject == "slow 3").unwrap();
    assert_eq!(
        with_attachment.attachments.len(),
        1,
        "the attachment fetch that was throttled inside $batch was given up: {with_attachment:?}"
    );
    let log = env.requests().await;
    let throttles = assert_retry_after_honoured(&log, &slow);
    assert_eq!(throttles, 5, "the faults should have fired five times");
    let in_batch = mailbox_requests(&log, &slow)
        .iter()
        .filter(|e| e["status"] == 429 && !e["batch"].is_null())
        .count();
    assert_eq!(in_batch, 2, "the throttling did not reach the requests inside $batch");
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert!(
        metric(&metrics, "inboxd_graph_throttled_total", "").is_some_and(|v| v >= 3.0),
        "inboxd_graph_throttled_total does not count the 429s:\n{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_given_as_an_http_date_is_honoured() {
    let env = Env::new().await;
    let a = addr("dated");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "dated 0").await;
    // Whole seconds only: at least two seconds from now.
    let until = std::time::SystemTime::now() + Duration::from_millis(2500);
    let date = httpdate::fmt_http_date(until);
    let until = time::OffsetDateTime::from(httpdate::parse_http_date(&date).unwrap());
    env.fault_for_mailbox(&a, json!({"status": 429, "retry_after": date, "times": 1}))
        .await;
    let daemon = env.start(&env.config(std::slice::from_ref(&a), "300ms")).await;
    let events = env.wait_for_events(1, LIMIT).await;
    assert_eq!(events.len(), 1, "mail lost after a dated Retry-After");
    let log = env.requests().await;
    let mine = mailbox_requests(&log, &a);
    let throttled = mine.iter().find(|e| e["status"] == 429).expect("the fault fired");
    for r in mine.iter().filter(|r| r["seq"].as_u64() > throttled["seq"].as_u64()) {
        assert!(
            log_time(r) >= until,
            "Retry-After: {date} violated: {} {} at {}",
            r["method"],
            r["path"],
            r["time"]
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_mailbox_slows_down_alone() {
    let env = Env::new().await;
    let (slow, fast) = (addr("slow"), addr("busy"));
    env.mailboxes(&[slow.clone(), fast.clone()]).await;
    env.deliver(&slow, "slow 0").await;
    // Throttled until the test lifts it: whatever the busy mailbox gets done meanwhile, it got
    // done while the other one was held back.
    env.fault_for_mailbox(&slow, json!({"status": 429, "retry_after": "2.5"}))
        .await;
    let daemon = env.start(&env.config(&[slow.clone(), fast.clone()], "300ms")).await;
    let throttled = eventually(LIMIT, || async {
        mailbox_requests(&env.requests().await, &slow)
            .iter()
            .any(|e| e["status"] == 429)
    })
    .await;
    assert!(throttled, "the throttled mailbox was never throttled");

    // While the slow mailbox waits out its 429s, new mail of the busy one keeps flowing.
    for i in 0..3 {
        let subject = format!("busy {i}");
        env.deliver(&fast, &subject).await;
        let arrived = eventually(LIMIT, || async { subjects(&env.events(), &fast).contains(&subject) }).await;
        assert!(
            arrived,
            "{subject} of the busy mailbox not delivered while another mailbox was throttled"
        );
    }
    let log = env.requests().await;
    assert!(
        mailbox_requests(&log, &slow).iter().all(|e| e["status"] == 429),
        "the throttling was lifted early"
    );
    let events = env.events();
    assert!(
        subjects(&events, &slow).is_empty(),
        "delivered despite the 429s: {events:?}"
    );

    env.clear_faults().await;
    let delivered = eventually(LIMIT, || async { subjects(&env.events(), &slow).contains("slow 0") }).await;
    assert!(delivered, "throttled mailbox lost mail: {:?}", env.events());
    let events = env.events();
    assert_no_duplicates(&events);
    assert_eq!(events.len(), 4, "{events:?}");
    let log = env.requests().await;
    assert!(assert_retry_after_honoured(&log, &slow) >= 1);
    // Only the throttled mailbox paused: the other never saw a 429 and was never made to wait.
    assert!(mailbox_requests(&log, &fast).iter().all(|e| e["status"] != 429));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_resets_and_malformed_bodies_lose_nothing_and_the_mailbox_recovers() {
    let env = Env::new().await;
    let (a, b, c) = (addr("five-oh-three"), addr("reset-and-garbage"), addr("slowpoke"));
    env.mailboxes(&[a.clone(), b.clone(), c.clone()]).await;
    for i in 0..3 {
        env.deliver(&a, &format!("a {i}")).await;
        env.deliver(&b, &format!("b {i}")).await;
        env.deliver(&c, &format!("c {i}")).await;
    }
    // c's first delta request hangs longer than microsoft.request_timeout, and longer than the
    // test waits for c's mail: only a request given up and retried can deliver it.
    env.fault_for_mailbox(&c, json!({"delay_ms": HANG.as_millis() as u64, "times": 1}))
        .await;
    env.fault_for_mailbox(&a, json!({"status": 503, "times": 2})).await;
    env.fault_for_mailbox(&b, json!({"reset": true, "times": 1})).await;
    env.fault_for_mailbox(&b, json!({"malformed": true, "times": 1})).await;
    let toml = with_microsoft(
        &with_api_token(&env.config(&[a.clone(), b.clone(), c.clone()], "1s")),
        "request_timeout = \"1s\"",
    );
    let daemon = env.start(&toml).await;

    let events = env.wait_for_events(9, LIMIT).await;
    assert_eq!(
        subjects(&events, &c).len(),
        3,
        "a timed-out request lost mail: {events:?}"
    );
    assert_eq!(subjects(&events, &a).len(), 3, "503s lost mail: {events:?}");
    assert_eq!(
        subjects(&events, &b).len(),
        3,
        "resets / malformed bodies lost mail: {events:?}"
    );
    assert_no_duplicates(&events);
    let recovered = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        [&a, &b, &c].iter().all(|m| views[m.as_str()]["state"] == "active")
    })
    .await;
    assert!(
        recovered,
        "mailboxes did not return to active: {:?}",
        daemon.mailbox_views().await
    );

    // The faults really fired: two 503s for a, one reset (status 0) and one garbage 200 for b.
    let log = env.requests().await;
    let statuses = |m: &str| -> Vec<u64> {
        let delta = format!("/v1.0/users/{m}/mailFolders");
        log.iter()
            .filter(|e| log_path(e).starts_with(&delta))
            .filter_map(|e| e["status"].as_u64())
            .collect()
    };
    assert_eq!(
        statuses(&a).iter().filter(|s| **s == 503).count(),
        2,
        "{:?}",
        statuses(&a)
    );
    assert_eq!(
        statuses(&b).iter().filter(|s| **s == 0).count(),
        1,
        "{:?}",
        statuses(&b)
    );
    // c's hung request was given up (a request whose client left is not logged): the delta
    // request that delivered c's mail is not the held one.
    let c_polls: Vec<&Value> = log
        .iter()
        .filter(|e| log_path(e).starts_with(&format!("/v1.0/users/{c}/mailFolders")))
        .collect();
    assert!(
        c_polls
            .iter()
            .all(|e| e["duration_ms"].as_f64().is_some_and(|d| d < HANG.as_millis() as f64)),
        "a delta request of c waited out the hang: {c_polls:?}"
    );
    // Every fault fired as often as it was meant to.
    let listed = env.control_get("/_emulator/faults").await;
    assert_eq!(
        listed["faults"].as_array().map(Vec::len),
        Some(0),
        "faults left unconsumed: {listed}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_delta_token_starts_over_without_losing_or_repeating_mail() {
    let env = Env::new().await;
    let a = addr("expiring");
    env.mailboxes(std::slice::from_ref(&a)).await;
    for i in 0..4 {
        env.deliver(&a, &format!("before {i}")).await;
    }
    let daemon = env.start(&env.config(std::slice::from_ref(&a), "300ms")).await;
    assert_eq!(env.wait_for_events(4, LIMIT).await.len(), 4);
    // Wait until a round has persisted its delta link and polls with it.
    let polls_with_delta_link = eventually(LIMIT, || async {
        env.requests()
            .await
            .iter()
            .any(|e| e["query"].as_str().is_some_and(|q| q.contains("deltatoken")))
    })
    .await;
    assert!(polls_with_delta_link, "the daemon never polled with a delta link");

    env.control(&format!("/_emulator/mailboxes/{a}/expire-delta"), json!({}))
        .await;
    for i in 0..3 {
        env.deliver(&a, &format!("after {i}")).await;
    }
    let events = env.wait_for_events(7, LIMIT).await;
    let got = subjects(&events, &a);
    for i in 0..3 {
        assert!(
            got.contains(&format!("after {i}")),
            "mail after the expired delta token lost: {got:?}"
        );
    }
    // Give a re-announcement the chance to show up: two more rounds after the last one seen.
    let seen = env.requests().await.len();
    let more_rounds = eventually(LIMIT, || async {
        env.requests()
            .await
            .iter()
            .skip(seen)
            .filter(|e| e["status"] == 200)
            .count()
            >= 2
    })
    .await;
    assert!(more_rounds, "the daemon stopped polling after the expired delta token");
    let events = env.events();
    assert_no_duplicates(&events);
    assert_eq!(events.len(), 7, "{events:?}");
    let gone = env.requests().await.iter().filter(|e| e["status"] == 410).count();
    assert!(
        gone >= 1,
        "the emulator never answered 410: the test did not exercise the resync"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_updates_and_removed_entries_produce_no_extra_events() {
    let env = Env::new().await;
    let a = addr("replay");
    env.mailboxes(std::slice::from_ref(&a)).await;
    // More than one page of 100 (the daemon's odata.maxpagesize), with every page repeating
    // the last item of the previous one.
    env.settings(json!({"delta_replay": true})).await;
    let total = 230;
    for i in 0..total {
        env.deliver(&a, &format!("m {i:03}")).await;
    }
    let daemon = env.start(&env.config(std::slice::from_ref(&a), "300ms")).await;
    let events = env.wait_for_events(total, LIMIT).await;
    assert_eq!(subjects(&events, &a).len(), total, "mail lost across pages");
    let log = env.requests().await;
    let next_pages = log
        .iter()
        .filter(|e| e["query"].as_str().is_some_and(|q| q.contains("skiptoken")))
        .count();
    assert!(
        next_pages >= 2,
        "the first round did not page: {next_pages} next links followed"
    );

    // Now delete some, move some, mark some read (updates), then deliver one more.
    let token = env.app_token().await;
    let inbox = env.folder_messages(&a, "inbox").await;
    let by_subject: HashMap<String, String> = inbox
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for i in 0..5 {
        let id = &by_subject[&format!("m {i:03}")];
        let (status, body) = env
            .graph(Method::DELETE, &format!("users/{a}/messages/{id}"), &token, None)
            .await;
        assert_eq!(status, 204, "delete: {body}");
    }
    for i in 5..10 {
        let id = &by_subject[&format!("m {i:03}")];
        let (status, body) = env
            .graph(
                Method::POST,
                &format!("users/{a}/messages/{id}/move"),
                &token,
                Some(json!({"destinationId": "archive"})),
            )
            .await;
        assert!(status == 200 || status == 201, "move: {status} {body}");
    }
    for i in 10..15 {
        let id = &by_subject[&format!("m {i:03}")];
        let (status, body) = env
            .graph(
                Method::PATCH,
                &format!("users/{a}/messages/{id}"),
                &token,
                Some(json!({"isRead": true})),
            )
            .await;
        assert_eq!(status, 200, "patch: {body}");
    }
    env.deliver(&a, "the last one").await;
    let events = env.wait_for_events(total + 1, LIMIT).await;
    assert!(
        subjects(&events, &a).contains("the last one"),
        "mail after removals lost"
    );
    // The round that found the last one also carried the removals and updates; one more
    // round must not announce anything either.
    let seen = env.requests().await.len();
    let another_round = eventually(LIMIT, || async {
        env.requests()
            .await
            .iter()
            .skip(seen)
            .any(|e| e["query"].as_str().is_some_and(|q| q.contains("deltatoken")) && e["status"] == 200)
    })
    .await;
    assert!(another_round, "no further round after the removals");
    let events = env.events();
    assert_no_duplicates(&events);
    assert_eq!(events.len(), total + 1, "removals, moves or updates produced events");
    assert!(events.iter().all(|e| !e.graph_id.is_empty() && e.folder == "inbox"));
    daemon.stop().await;
}

/// The delta link the store holds for a mailbox's Inbox.
async fn stored_link(env: &Env, mailbox: &str) -> String {
    let db = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let (link,): (String,) = sqlx::query_as("SELECT link FROM delta_links WHERE mailbox = ?1 AND folder = 'inbox'")
        .bind(mailbox)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_rounds_leave_the_checkpoint_alone_and_a_restart_from_it_loses_nothing() {
    let env = Env::new().await;
    let a = addr("quiet");
    env.mailboxes(std::slice::from_ref(&a)).await;
    env.deliver(&a, "first").await;
    let toml = env.config(std::slice::from_ref(&a), "300ms");
    let daemon = env.start(&toml).await;
    assert_eq!(env.wait_for_events(1, LIMIT).await.len(), 1);
    // The round that delivered wrote its checkpoint; the rounds after it find nothing.
    let checkpoint = eventually(LIMIT, || async {
        stored_link(&env, a.as_str()).await.contains("deltatoken")
    })
    .await;
    assert!(checkpoint, "the round that delivered stored no delta link");
    let stored = stored_link(&env, a.as_str()).await;
    let seq = crate::support::last_seq(&env).await;
    let quiet_rounds = eventually(LIMIT, || async {
        crate::support::requests_since(&env, seq)
            .await
            .iter()
            .filter(|e| e["query"].as_str().is_some_and(|q| q.contains("deltatoken")) && e["status"] == 200)
            .count()
            >= 4
    })
    .await;
    assert!(quiet_rounds, "the daemon stopped polling");
    assert_eq!(
        stored_link(&env, a.as_str()).await,
        stored,
        "a round that found nothing wrote a checkpoint although one was stored moments ago"
    );
    daemon.stop().await;

    // Started again from the older link: the empty rounds it skips over cost nothing, and
    // what arrived meanwhile comes through once.
    env.deliver(&a, "second").await;
    let daemon = env.start(&toml).await;
    let events = env.wait_for_events(2, LIMIT).await;
    assert_eq!(
        subjects(&events, &a),
        HashSet::from(["first".to_string(), "second".to_string()])
    );
    let moved = eventually(LIMIT, || async { stored_link(&env, a.as_str()).await != stored }).await;
    assert!(
        moved,
        "the round that delivered after the restart stored no new checkpoint"
    );
    assert_no_duplicates(&env.events());
    assert_eq!(env.events().len(), 2);
    daemon.stop().await;
}
