//! Ingest against receivers and Graph answers that are hostile but documented: a receiver that
//! redirects or refuses for a while, a long poll interval, an expired delta token soon after
//! start, a folder that fails, quarantined messages replayed through the API.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::{API_TOKEN, Env, eventually, metric, with_api_token, with_defaults};

/// What the test receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 302 to a login page (an auth proxy in front of routing).
    Redirect,
    /// 401 (a rotated signing secret).
    Refuse,
    /// 200.
    Accept,
    /// 422 for subjects containing "poison", 200 for the rest.
    RejectPoison,
}

/// A routing receiver whose behaviour the test switches; it records what it accepted.
struct Receiver {
    mode: Mutex<Mode>,
    /// Dedup keys of accepted events, in order.
    accepted: Mutex<Vec<String>>,
    /// POSTs answered with something other than 2xx.
    refused: Mutex<usize>,
    /// GETs that reached the login page (a followed redirect).
    login_visits: Mutex<usize>,
    /// Signals every request.
    seen: Notify,
}

async fn inbound(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let mode = *rx.mode.lock().unwrap();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let is_message = event["schema"] == "inboxd.message.v1";
    let answer = match mode {
        _ if !is_message => StatusCode::OK.into_response(),
        Mode::Redirect => (StatusCode::FOUND, [("location", "/login?next=/inbound")]).into_response(),
        Mode::Refuse => (StatusCode::UNAUTHORIZED, "bad signature").into_response(),
        Mode::RejectPoison if event["subject"].as_str().unwrap_or("").contains("poison") => {
            (StatusCode::UNPROCESSABLE_ENTITY, "subject not allowed").into_response()
        }
        Mode::Accept | Mode::RejectPoison => {
            let key = headers["x-inboxd-dedup-key"].to_str().unwrap().to_string();
            rx.accepted.lock().unwrap().push(key);
            StatusCode::OK.into_response()
        }
    };
    if is_message && !answer.status().is_success() {
        *rx.refused.lock().unwrap() += 1;
    }
    rx.seen.notify_waiters();
    answer
}

async fn login(State(rx): State<Arc<Receiver>>) -> &'static str {
    *rx.login_visits.lock().unwrap() += 1;
    "<html>sign in</html>"
}

impl Receiver {
    async fn serve(mode: Mode) -> (Arc<Receiver>, String) {
        let rx = Arc::new(Receiver {
            mode: Mutex::new(mode),
            accepted: Mutex::default(),
            refused: Mutex::default(),
            login_visits: Mutex::default(),
            seen: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/inbound", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/inbound", axum::routing::post(inbound))
            .route("/login", axum::routing::any(login))
            .with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, url)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    /// Waits until the receiver refused at least `n` POSTs in all.
    async fn wait_refused(&self, n: usize) {
        let limit = Duration::from_secs(60);
        let done = tokio::time::timeout(limit, async {
            while self.refused() < n {
                let seen = self.seen.notified();
                if self.refused() >= n {
                    break;
                }
                seen.await;
            }
        })
        .await;
        assert!(done.is_ok(), "the receiver saw only {} refused POSTs", self.refused());
    }
}

/// A config whose sink is the test receiver.
fn webhook_config(env: &Env, mailboxes: &[String], url: &str) -> String {
    let toml = with_api_token(&env.config(mailboxes, "1s"));
    let file_sink = format!("[sink]\ntype = \"file\"\npath = \"{}\"\n", env.events_path().display());
    assert!(toml.contains(&file_sink));
    toml.replace(
        &file_sink,
        &format!("[sink]\ntype = \"webhook\"\nurl = \"{url}\"\nsigning_secret = \"dev:whsec-hostile-test\"\n"),
    )
}

async fn post(daemon: &crate::support::Daemon, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", daemon.addr))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_receiver_that_redirects_then_refuses_then_accepts_gets_every_message() {
    let env = Env::new().await;
    let mailbox = "hostile-sink@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let (rx, url) = Receiver::serve(Mode::Redirect).await;
    let daemon = env
        .start(&webhook_config(&env, std::slice::from_ref(&mailbox), &url))
        .await;
    for n in 0..3 {
        env.deliver(&mailbox, &format!("during redirects {n}")).await;
    }
    // Several delivery attempts redirected (an auth proxy in front of routing)...
    rx.wait_refused(4).await;
    let flagged = eventually(Duration::from_secs(10), || async {
        let (_, metrics) = daemon.get("/metrics", None).await;
        metric(&metrics, "inboxd_sink_unavailable", "sink=\"webhook\"") == Some(1.0)
    })
    .await;
    assert!(flagged, "inboxd_sink_unavailable rises while the receiver redirects");
    // ... then refused with 401 (a rotated signing secret) while more mail arrives ...
    rx.set(Mode::Refuse);
    let before = rx.refused();
    for n in 0..3 {
        env.deliver(&mailbox, &format!("during refusal {n}")).await;
    }
    rx.wait_refused(before + 4).await;
    assert!(rx.accepted().is_empty(), "nothing can have been accepted yet");
    let waiting = eventually(Duration::from_secs(10), || async {
        daemon.state(&mailbox).await == "backoff"
    })
    .await;
    assert!(waiting, "the mailbox waits for the sink");
    // ... then accepted: every message arrives, none quarantined, nothing followed the redirect.
    rx.set(Mode::Accept);
    let all = eventually(Duration::from_secs(90), || async {
        rx.accepted().into_iter().collect::<HashSet<_>>().len() == 6
    })
    .await;
    assert!(all, "accepted {:?}", rx.accepted());
    assert!(
        daemon.quarantine().await.is_empty(),
        "a refusing receiver quarantines nothing"
    );
    assert_eq!(*rx.login_visits.lock().unwrap(), 0, "a redirect was followed");
    let recovered = eventually(Duration::from_secs(10), || async {
        let (_, metrics) = daemon.get("/metrics", None).await;
        metric(&metrics, "inboxd_sink_unavailable", "sink=\"webhook\"") == Some(0.0)
    })
    .await;
    assert!(recovered, "the sink gauge drops back to 0");
    daemon.stop().await;
}

#[tokio::test]
async fn a_rejected_event_is_quarantined_and_replayed_with_its_dedup_key() {
    let env = Env::new().await;
    let mailbox = "replay@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let (rx, url) = Receiver::serve(Mode::RejectPoison).await;
    let daemon = env
        .start(&webhook_config(&env, std::slice::from_ref(&mailbox), &url))
        .await;
    env.deliver(&mailbox, "a poison subject").await;
    env.deliver(&mailbox, "another poison subject").await;
    env.deliver(&mailbox, "fine").await;
    let quarantined = eventually(Duration::from_secs(30), || async {
        daemon.quarantine().await.len() == 2
    })
    .await;
    assert!(quarantined, "quarantine: {:?}", daemon.quarantine().await);
    assert!(eventually(Duration::from_secs(30), || async { rx.accepted().len() == 1 }).await);
    let entries = daemon.quarantine().await;
    assert!(
        entries.iter().all(|e| e["reason"].as_str().unwrap().contains("422")
            && e["reason"].as_str().unwrap().contains("subject not allowed")),
        "{entries:?}"
    );

    // Routing fixed its side; one entry is replayed by id, the other with the whole mailbox.
    rx.set(Mode::Accept);
    let first = entries[0]["id"].as_str().unwrap().to_string();
    let (status, answer) = post(&daemon, &format!("/v1/quarantine/{first}/replay")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "replay_requested");
    assert!(eventually(Duration::from_secs(30), || async { rx.accepted().len() == 2 }).await);
    let (status, answer) = post(&daemon, &format!("/v1/mailboxes/{mailbox}/quarantine/replay")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["requested"], 1);
    assert!(eventually(Duration::from_secs(30), || async { rx.accepted().len() == 3 }).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            daemon.quarantine().await.is_empty()
        })
        .await,
        "replayed messages leave the quarantine"
    );
    // Same keys as a first delivery would have had: routing deduplicates across replays.
    let keys: HashSet<String> = rx.accepted().into_iter().collect();
    let expected: HashSet<String> = entries
        .iter()
        .map(|e| dedup_key(&mailbox, e["graph_id"].as_str().unwrap()))
        .collect();
    assert!(expected.is_subset(&keys), "{expected:?} ⊄ {keys:?}");
    let (status, _) = post(&daemon, "/v1/quarantine/no-such-entry/replay").await;
    assert_eq!(status, 404);
    daemon.stop().await;
}

fn dedup_key(mailbox: &str, graph_id: &str) -> String {
    inboxd::mailbox::convert::dedup_key(&inboxd::domain::MailboxAddress::parse(mailbox).unwrap(), graph_id)
}

#[tokio::test]
async fn a_poll_interval_longer_than_five_minutes_polls() {
    let env = Env::new().await;
    let mailbox = "slow-poll@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    env.deliver(&mailbox, "waiting since before start").await;
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "10m"));
    let daemon = env.start(&toml).await;
    let events = env.wait_for_events(1, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 1, "the first round runs at once, whatever the interval");
    let active = eventually(Duration::from_secs(10), || async {
        daemon.state(&mailbox).await == "active"
    })
    .await;
    assert!(active, "the mailbox task lives on after its first round");
    daemon.stop().await;
}

#[test]
fn durations_inboxd_cannot_honour_are_refused_with_their_key() {
    let toml = r#"
[store]
url = "sqlite://./x.db"
[sink]
type = "file"
path = "./x.ndjson"
[defaults]
poll_interval = "400days"
[[apps]]
name = "a"
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "dev:x"
[[mailboxes]]
address = "a@contoso.test"
app = "a"
poll_interval = "100000000000000000000s"
"#;
    let errors = inboxd::config::from_sources(toml, &Default::default(), std::path::Path::new("."))
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("defaults.poll_interval"), "{errors}");
    assert!(errors.contains("too long"), "{errors}");
    assert!(errors.contains("mailboxes[0].poll_interval"), "{errors}");
}

#[tokio::test]
async fn a_410_soon_after_start_does_not_deliver_older_mail() {
    let env = Env::new().await;
    let mailbox = "resync@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let now = env.emulator_now().await;
    for (n, days) in [(0, 5), (1, 5), (2, 2), (3, 1)] {
        env.deliver_received(&mailbox, &format!("old {n}"), now - time::Duration::days(days))
            .await;
    }
    // start_at = "now" (the default), not the test harness's "all".
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")).replace("start_at = \"all\"\n", "");
    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "new 1").await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await.len(), 1);
    env.control(&format!("/_emulator/mailboxes/{mailbox}/expire-delta"), json!({}))
        .await;
    env.deliver(&mailbox, "new 2").await;
    let events = env.wait_for_events(2, Duration::from_secs(30)).await;
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, vec!["new 1", "new 2"], "old mail announced after the resync");
    // The resync was a fresh round filtered at (about) the start, not 30 days back.
    let requests = env.requests().await;
    let resync = requests
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").ends_with("/messages/delta"))
        .filter(|r| r["query"].as_str().unwrap_or("").contains("receivedDateTime"))
        .count();
    assert!(resync >= 2, "a first round and a filtered resync: {resync}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_failing_folder_does_not_stop_the_others() {
    let env = Env::new().await;
    let mailbox = "folders@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let toml = with_defaults(
        &with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s")),
        "folders = [\"no-such-folder\", \"inbox\"]",
    );
    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "first").await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await.len(), 1);
    env.deliver(&mailbox, "second").await;
    assert_eq!(
        env.wait_for_events(2, Duration::from_secs(30)).await.len(),
        2,
        "the inbox keeps flowing"
    );
    let views = daemon.mailbox_views().await;
    let view = &views[&mailbox];
    assert_eq!(view["state"], "active", "{view}");
    let failing = view["failing_folders"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{view}");
    assert_eq!(failing[0]["folder"], "no-such-folder");
    let (_, metrics) = daemon.get("/metrics", None).await;
    assert_eq!(
        metric(&metrics, "inboxd_folder_failing", "folder=\"no-such-folder\""),
        Some(1.0),
        "{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_410_after_a_long_gap_resyncs_everything_the_gap_held() {
    let env = Env::new().await;
    let mailbox = "long-gap@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s"));
    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "before the gap").await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await.len(), 1);
    daemon.stop().await;

    // The mailbox then stood still for 60 days (flagged, disabled, the pod gone): its last
    // checkpoint is that old, and mail kept arriving meanwhile.
    let db = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let sixty_days_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(60)).unix_timestamp() * 1000;
    sqlx::query("UPDATE delta_links SET checkpoint_ms = ?1")
        .bind(sixty_days_ago)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let now = time::OffsetDateTime::now_utc();
    for days in [45, 31, 10] {
        env.deliver_received(&mailbox, &format!("{days} days ago"), now - time::Duration::days(days))
            .await;
    }
    // Graph has long forgotten the delta token.
    env.control(&format!("/_emulator/mailboxes/{mailbox}/expire-delta"), json!({}))
        .await;

    let daemon = env.start(&toml).await;
    let events = env.wait_for_events(4, Duration::from_secs(30)).await;
    let subjects: HashSet<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        subjects,
        HashSet::from(["before the gap", "45 days ago", "31 days ago", "10 days ago"]),
        "the resync reaches back to the last checkpoint, not a fixed 30 days"
    );
    assert_eq!(events.len(), 4, "nothing announced twice");
    daemon.stop().await;
}

#[tokio::test]
async fn a_full_disk_under_the_file_sink_loses_nothing_and_says_so() {
    let env = Env::new().await;
    let mailbox = "disk-full@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    for n in 0..3 {
        env.deliver(&mailbox, &format!("message {n}")).await;
    }
    // /dev/full accepts the open and fails every write with ENOSPC.
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s"));
    let full = toml.replace(&env.events_path().display().to_string(), "/dev/full");
    let daemon = env.start(&full).await;
    let down = eventually(Duration::from_secs(30), || async {
        let (_, metrics) = daemon.get("/metrics", None).await;
        metric(&metrics, "inboxd_sink_unavailable", "sink=\"file\"") == Some(1.0)
            && daemon.state(&mailbox).await == "backoff"
    })
    .await;
    assert!(down, "a full disk shows as an unavailable sink and a waiting mailbox");
    assert!(daemon.quarantine().await.is_empty());
    daemon.stop().await;

    // Space again (the real file): every message arrives.
    let daemon = env.start(&toml).await;
    assert_eq!(env.wait_for_events(3, Duration::from_secs(30)).await.len(), 3);
    daemon.stop().await;
}

#[tokio::test]
async fn a_store_that_refuses_writes_pauses_the_mailbox_and_loses_nothing() {
    use sqlx::Connection;
    let env = Env::new().await;
    let mailbox = "store-locked@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s"));
    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "before").await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await.len(), 1);

    // Another process takes the database's write lock and keeps it (a backup tool, an
    // operator's sqlite3 shell): inboxd's writes fail after their busy timeout.
    let db = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let mut blocker = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker).await.unwrap();
    for n in 0..3 {
        env.deliver(&mailbox, &format!("while locked {n}")).await;
    }
    let paused = eventually(Duration::from_secs(60), || async {
        daemon.state(&mailbox).await == "backoff"
    })
    .await;
    assert!(paused, "the mailbox waits for the store");
    let views = daemon.mailbox_views().await;
    assert!(
        views[&mailbox]["reason"].as_str().unwrap_or("").contains("database"),
        "the reason names the store: {}",
        views[&mailbox]
    );

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    let resumed = eventually(Duration::from_secs(60), || async {
        daemon.state(&mailbox).await == "active"
    })
    .await;
    assert!(resumed, "the mailbox resumes by itself");
    let events = env.wait_for_events(4, Duration::from_secs(30)).await;
    let subjects: HashSet<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects.len(), 4, "every message arrived: {subjects:?}");
    // What the sink received while the store could not record it may come twice, always with
    // the same key.
    let mut by_key = std::collections::HashMap::new();
    for e in &events {
        by_key
            .entry(e.dedup_key.clone())
            .or_insert_with(Vec::new)
            .push(e.graph_id.clone());
    }
    assert!(by_key.values().all(|ids| ids.iter().all(|id| id == &ids[0])));
    daemon.stop().await;
}

#[tokio::test]
async fn throttled_mailboxes_hold_no_permit_the_others_need() {
    let env = Env::new().await;
    // More throttled mailboxes than ingest permits (16), each told to wait two minutes.
    let throttled: Vec<String> = ('a'..='r').map(|c| format!("throttled{c}@contoso.test")).collect();
    let healthy = "healthy@contoso.test".to_string();
    let mut all = throttled.clone();
    all.push(healthy.clone());
    env.mailboxes(&all).await;
    for mailbox in &throttled {
        env.fault_for_mailbox(mailbox, json!({"status": 429, "retry_after": 120, "times": 1000}))
            .await;
    }
    let daemon = env.start(&with_api_token(&env.config(&all, "1s"))).await;
    let throttled_seen = eventually(Duration::from_secs(60), || async {
        let requests = env.requests().await;
        throttled.iter().all(|m| {
            let local = m.split('@').next().unwrap();
            requests
                .iter()
                .any(|r| r["status"] == 429 && r["path"].as_str().unwrap_or("").contains(local))
        })
    })
    .await;
    assert!(throttled_seen, "every throttled mailbox got its 429");
    // The healthy mailbox keeps flowing well within the two minutes the others wait.
    env.deliver(&healthy, "still flowing").await;
    let events = env.wait_for_events(1, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 1, "a healthy mailbox waited behind throttled ones");
    assert_eq!(events[0].mailbox, healthy);
    daemon.stop().await;
}

#[tokio::test]
async fn a_restart_remembers_when_each_mailbox_last_worked() {
    let env = Env::new().await;
    let mailbox = "remembered@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let toml = with_api_token(&env.config(std::slice::from_ref(&mailbox), "1s"));
    let daemon = env.start(&toml).await;
    let polled = eventually(Duration::from_secs(30), || async {
        daemon.mailbox_views().await[&mailbox]["last_success_at"].is_string()
    })
    .await;
    assert!(polled);
    daemon.stop().await;
    let stopped = time::OffsetDateTime::now_utc();
    let before = {
        let db = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        let at: String = sqlx::query_scalar("SELECT last_success_at FROM mailbox_statuses WHERE mailbox = ?1")
            .bind(&mailbox)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339).unwrap()
    };

    // After the restart Graph fails for this mailbox: it cannot succeed again, yet its view
    // still says when it last worked.
    env.fault_for_mailbox(&mailbox, json!({"status": 503, "times": 100_000}))
        .await;
    let daemon = env.start(&toml).await;
    let view = daemon.mailbox_views().await[&mailbox].clone();
    let shown = time::OffsetDateTime::parse(
        view["last_success_at"]
            .as_str()
            .expect("last success kept across the restart"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // The last success known, or the last checkpoint if later; never "never", never after the stop.
    assert!(shown >= before && shown <= stopped, "{view}");
    daemon.stop().await;
}
