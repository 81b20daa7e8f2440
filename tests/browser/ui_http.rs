//! The status page over plain HTTP against the real daemon: sign-in and its cookie, CSRF and
//! read-only refusals, and escaping of what comes from outside.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::page::{Page, READ_ONLY_TOKEN, SECRET_EXPIRES_AT, config, csrf, send_and_wait};
use crate::receiver::{Receiver, with_webhook};
use crate::support::{API_TOKEN, Env, eventually};

/// Bound on every wait (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(30);

/// `replay_requested` of every quarantine row, read from the daemon's SQLite file.
async fn replay_flags(env: &Env) -> Vec<i64> {
    let url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let flags = sqlx::query_scalar("SELECT replay_requested FROM quarantine")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    flags
}

/// A POST on `/v1` with a bearer token: status and JSON body.
async fn v1_post(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_in_sets_a_strict_session_cookie_and_never_echoes_the_token() {
    let env = Env::new().await;
    let mailbox = "ui-signin@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let daemon = env.start(&config(&env, std::slice::from_ref(&mailbox))).await;
    let page = Page::new(daemon.addr);

    let root = page.get("/", None).await;
    assert_eq!((root.status, root.location.as_deref()), (303, Some("/ui/")), "{root:?}");
    let form = page.get("/ui/", None).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"name="token""#), "{}", form.body);
    assert!(!form.body.contains(&mailbox), "the page shows mailboxes before sign-in");

    let wrong = "wrong-token-3e9d1c";
    let refused = page.post("/ui/sign-in", None, &[("token", wrong)]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.set_cookie.is_none(), "{refused:?}");
    assert!(!refused.body.contains(wrong), "the refused token is echoed");
    assert!(
        refused.body.contains("not one of the configured API tokens"),
        "{}",
        refused.body
    );

    let answer = page.post("/ui/sign-in", None, &[("token", API_TOKEN)]).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let set_cookie = answer.set_cookie.clone().expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(
            set_cookie.split("; ").any(|p| p == flag),
            "{flag} missing: {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain-HTTP daemon marks its cookie Secure: {set_cookie}"
    );
    assert!(!set_cookie.contains(API_TOKEN), "the cookie carries the token");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(cookie.len() > "inboxd_ui=".len() + 40, "a short session id: {cookie}");

    let active = eventually(LIMIT, || async {
        let p = page.get("/ui/", Some(&cookie)).await;
        p.body.contains(&format!(r#"data-mailbox="{mailbox}""#)) && p.body.contains(r#"data-state="active""#)
    })
    .await;
    let shown = page.get("/ui/", Some(&cookie)).await;
    assert!(active, "the mailbox never showed as active:\n{}", shown.body);
    assert!(!shown.body.contains(API_TOKEN), "the page shows the token");
    assert!(shown.body.contains("may act"), "{}", shown.body);
    assert!(
        shown.body.contains(&format!("expires {SECRET_EXPIRES_AT}")),
        "no credential expiry: {}",
        shown.body
    );
    assert!(shown.body.contains("No reply or new message was requested yet."));
    let outbound = send_and_wait(daemon.addr, &mailbox, "Ticket 7 opened").await;
    let listed = page.get("/ui/", Some(&cookie)).await.body;
    let item = listed
        .split(&format!(r#"<li data-outbound="{outbound}">"#))
        .nth(1)
        .unwrap_or_else(|| panic!("outbound {outbound} not listed: {listed}"));
    assert!(
        item.starts_with("<strong>sent</strong> · send from ui-signin@contoso.test"),
        "{item}"
    );
    // The session opens the page, not the API.
    assert_eq!(daemon.get("/v1/mailboxes", None).await.0, 401);

    let forged = page.get("/ui/", Some("inboxd_ui=made-up-session-id")).await;
    assert!(
        forged.body.contains(r#"name="token""#),
        "a made-up session id is signed in"
    );

    let out = page
        .post("/ui/sign-out", Some(&cookie), &[("csrf", &csrf(&shown.body))])
        .await;
    assert_eq!(out.status, 303, "{out:?}");
    assert!(
        out.set_cookie.as_deref().is_some_and(|c| c.contains("Max-Age=0")),
        "{out:?}"
    );
    let after = page.get("/ui/", Some(&cookie)).await;
    assert!(
        after.body.contains(r#"name="token""#),
        "the session outlived its sign-out"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forms_need_the_sessions_csrf_token_and_a_token_that_may_act() {
    let env = Env::new().await;
    let mailbox = "ui-forms@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let (rx, url) = Receiver::serve("subject not allowed").await;
    let toml = with_webhook(&env, &config(&env, std::slice::from_ref(&mailbox)), &url);
    let daemon = env.start(&toml).await;
    env.deliver(&mailbox, "a poison message").await;
    assert!(
        eventually(LIMIT, || async { daemon.quarantine().await.len() == 1 }).await,
        "nothing was quarantined"
    );
    let id = daemon.quarantine().await[0]["id"].as_str().unwrap().to_string();
    let page = Page::new(daemon.addr);
    let actor = page.sign_in(API_TOKEN).await;
    let reader = page.sign_in(READ_ONLY_TOKEN).await;
    let actor_page = page.get("/ui/", Some(&actor)).await.body;
    let reader_page = page.get("/ui/", Some(&reader)).await.body;
    let action = format!("/ui/quarantine/{id}/replay");
    assert!(actor_page.contains(&format!(r#"action="{action}""#)), "{actor_page}");
    assert!(
        !reader_page.contains("/ui/quarantine/"),
        "a read-only page offers replay"
    );
    assert!(reader_page.contains("read-only"), "{reader_page}");
    assert!(
        reader_page.contains("subject not allowed"),
        "the quarantine reason is not shown"
    );

    let refused_before = rx.refused.load(Ordering::SeqCst);
    for (who, fields) in [
        ("no CSRF token", vec![]),
        ("an empty CSRF token", vec![("csrf", String::new())]),
        ("another session's CSRF token", vec![("csrf", csrf(&reader_page))]),
    ] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = page.post(&action, Some(&actor), &fields).await;
        assert_eq!(answer.status, 403, "{who}: {answer:?}");
        assert!(answer.body.contains("CSRF"), "{who}: {}", answer.body);
    }
    let answer = page
        .post(&action, Some(&reader), &[("csrf", &csrf(&reader_page))])
        .await;
    assert_eq!(answer.status, 403, "read-only replay: {answer:?}");
    assert!(answer.body.contains("read-only"), "{}", answer.body);
    let answer = page.post(&action, None, &[("csrf", &csrf(&actor_page))]).await;
    assert_eq!(answer.status, 401, "replay without a session: {answer:?}");
    // The API draws the same line for bearer tokens.
    let (status, body) = v1_post(daemon.addr, &format!("/v1/quarantine/{id}/replay"), READ_ONLY_TOKEN).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("read_only_token")),
        "{body}"
    );
    assert_eq!(daemon.get("/v1/mailboxes", Some(READ_ONLY_TOKEN)).await.0, 200);
    assert_eq!(replay_flags(&env).await, vec![0], "a refused form requested a replay");
    assert_eq!(
        rx.refused.load(Ordering::SeqCst),
        refused_before,
        "a refused form replayed"
    );

    // With its own CSRF token the acting session replays; routing now accepts the message.
    rx.reject.store(false, Ordering::SeqCst);
    let answer = page.post(&action, Some(&actor), &[("csrf", &csrf(&actor_page))]).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.location.as_deref(), Some("/ui/?done=replayed#quarantine"));
    assert!(
        eventually(LIMIT, || async { daemon.quarantine().await.is_empty() }).await,
        "the replayed message stayed quarantined"
    );
    assert!(rx.accepted.load(Ordering::SeqCst) >= 1);
    let after = page.get("/ui/?done=replayed", Some(&actor)).await.body;
    assert!(after.contains("Replay requested"), "{after}");
    assert!(after.contains("Nothing is quarantined."), "{after}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reasons_from_graph_and_routing_are_escaped() {
    let env = Env::new().await;
    let (broken, poisoned) = (
        "esc-broken@contoso.test".to_string(),
        "esc-poison@contoso.test".to_string(),
    );
    env.mailboxes(&[broken.clone(), poisoned.clone()]).await;
    let script = "<script>alert(1)</script>";
    env.fault_for_mailbox(&broken, json!({"status": 403, "code": script}))
        .await;
    let (_rx, url) = Receiver::serve("<img src=x onerror=alert(2)>").await;
    let toml = with_webhook(&env, &config(&env, &[broken.clone(), poisoned.clone()]), &url);
    let daemon = env.start(&toml).await;
    env.deliver(&poisoned, "poison").await;
    let ready = eventually(LIMIT, || async {
        let views = daemon.mailbox_views().await;
        let reason = views[&broken]["reason"].as_str().unwrap_or_default().to_string();
        reason.contains(script) && daemon.quarantine().await.len() == 1
    })
    .await;
    assert!(ready, "no hostile reason to show: {:?}", daemon.mailbox_views().await);

    let page = Page::new(daemon.addr);
    let cookie = page.sign_in(API_TOKEN).await;
    let body = page.get("/ui/", Some(&cookie)).await.body;
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{body}");
    assert!(body.contains("&lt;img src=x onerror=alert(2)&gt;"), "{body}");
    assert!(!body.contains(script), "a mailbox reason reached the page as markup");
    assert!(!body.contains("<img"), "a quarantine reason reached the page as markup");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_https_the_cookie_is_secure_and_token_guessing_is_slowed() {
    let env = Env::new().await;
    let mailbox = "ui-https@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let toml = config(&env, std::slice::from_ref(&mailbox));
    let anchor = "listen = \"127.0.0.1:0\"\n";
    assert!(toml.contains(anchor));
    // A TLS-terminating proxy in front: browsers reach inboxd over HTTPS.
    let toml = toml.replacen(
        anchor,
        &format!("{anchor}public_url = \"https://inboxd.example.test\"\n"),
        1,
    );
    let daemon = env.start(&toml).await;
    let page = Page::new(daemon.addr);
    let answer = page.post("/ui/sign-in", None, &[("token", API_TOKEN)]).await;
    let cookie = answer
        .set_cookie
        .unwrap_or_else(|| panic!("no cookie: {}", answer.body));
    assert!(cookie.split("; ").any(|p| p == "Secure"), "{cookie}");

    let mut statuses = Vec::new();
    for n in 0..15 {
        let wrong = format!("guess-{n}");
        statuses.push(page.post("/ui/sign-in", None, &[("token", &wrong)]).await.status);
    }
    assert!(
        statuses.contains(&429),
        "15 guesses in a row were all answered: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| [401, 429].contains(s)), "{statuses:?}");
    daemon.stop().await;
}
