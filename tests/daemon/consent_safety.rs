//! The consent flow is safe to expose: `/oauth/start` writes nothing, answers alike for
//! delegated, app-only and unknown mailboxes, and is rate limited; an imported refresh token
//! is tried before it is stored, and a refused one leaves the working one in the store.

use std::time::Duration;

use crate::support::delegated::{app_only, config, delegated, import, mint, view, wait_state};
use crate::support::{CLIENT, Env, TENANT};
use crate::support::{addr, client};

/// Rows in the consent state table of the daemon's store file.
async fn consent_rows(env: &Env) -> i64 {
    let url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_states")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// The answer's status, the Location without its per-flow parts, and whether a cookie was set.
async fn start(base: &str, mailbox: &str) -> (u16, Option<String>, bool) {
    let resp = client()
        .get(format!("{base}/oauth/start"))
        .query(&[("mailbox", mailbox)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| url::Url::parse(l).ok())
        .map(|u| {
            let mut names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
            names.sort();
            format!("{}{} {names:?}", u.origin().ascii_serialization(), u.path())
        });
    let cookie = resp.headers().get(reqwest::header::SET_COOKIE).is_some();
    (status, location, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth_start_writes_nothing_answers_alike_and_is_rate_limited() {
    let env = Env::new().await;
    let (user, app_user) = (addr("os-user"), addr("os-app"));
    env.mailboxes(&[user.clone(), app_user.clone()]).await;
    let toml = config(
        &env,
        &[],
        &format!("{}{}", delegated(&user, "test"), app_only(&app_user, "test")),
    );
    let daemon = env.start(&toml).await;
    let base = format!("http://{}", daemon.addr);
    wait_state(&env, daemon.addr, &user, "needs_reconsent", Duration::from_secs(10)).await;

    let delegated_answer = start(&base, &user).await;
    assert_eq!(delegated_answer.0, 302, "{delegated_answer:?}");
    assert!(delegated_answer.2, "a browser flow sets its cookie");
    for other in [app_user.as_str(), "nobody@contoso.test", "not-an-address"] {
        let answer = start(&base, other).await;
        assert_eq!(
            answer, delegated_answer,
            "{other} is told apart from a delegated mailbox"
        );
    }
    assert_eq!(consent_rows(&env).await, 0, "starting a consent wrote to the store");

    // Anyone may call it, but not without limit.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(start(&base, &user).await.0);
    }
    assert!(
        statuses.contains(&429),
        "30 starts in a row were all served: {statuses:?}"
    );
    assert_eq!(consent_rows(&env).await, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_import_keeps_the_working_refresh_token() {
    let env = Env::new().await;
    let user = addr("imp-user");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let toml = config(&env, &[], &delegated(&user, "test"));
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&env, daemon.addr, &user, "active", Duration::from_secs(10)).await;

    let (status, body) = import(daemon.addr, &user, "1.not-a-refresh-token").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("nothing was stored"), "{body}");
    // The working grant is still the stored one: a restarted daemon, which has only the store
    // (no access token in memory), runs on it and delivers a fresh message.
    daemon.stop().await;
    let daemon = env.start(&toml).await;
    wait_state(&env, daemon.addr, &user, "active", Duration::from_secs(10)).await;
    env.deliver(&user, "after a refused import").await;
    let delivered = crate::support::eventually(Duration::from_secs(15), || async {
        env.raw_events()
            .iter()
            .any(|e| e["mailbox"] == user.as_str() && e["subject"] == "after a refused import")
    })
    .await;
    assert!(
        delivered,
        "the mailbox lost its grant: {}",
        view(daemon.addr, &user).await
    );
    assert_eq!(view(daemon.addr, &user).await["state"], "active");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_store_key_with_the_old_one_as_previous_keeps_mailboxes_and_reseals() {
    use inboxd::auth::seal::Sealer;
    use secrecy::SecretString;

    let env = Env::new().await;
    let user = addr("rot-user");
    env.mailboxes(std::slice::from_ref(&user)).await;
    let toml = config(&env, &[], &delegated(&user, "test"));
    let daemon = env.start(&toml).await;
    let (status, body) = import(daemon.addr, &user, &mint(&env, TENANT, CLIENT, &user).await).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&env, daemon.addr, &user, "active", Duration::from_secs(10)).await;
    daemon.stop().await;

    let old = crate::support::delegated::STORE_KEY;
    let rotated = toml.replacen(
        &format!("encryption_key = \"dev:{old}\"\n"),
        &format!("encryption_key = \"dev:the-new-key\"\nprevious_encryption_keys = [\"dev:{old}\"]\n"),
        1,
    );
    assert_ne!(rotated, toml);
    let daemon = env.start(&rotated).await;
    // Re-sealed at start: the new key alone opens the stored token.
    let url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed_token FROM delegated_tokens WHERE mailbox = ?1")
        .bind(&user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        Sealer::new(&SecretString::from("the-new-key"))
            .open(&user, &sealed)
            .is_some()
    );
    assert!(Sealer::new(&SecretString::from(old)).open(&user, &sealed).is_none());
    env.deliver(&user, "after the key rotation").await;
    let delivered = crate::support::eventually(Duration::from_secs(15), || async {
        env.raw_events()
            .iter()
            .any(|e| e["mailbox"] == user.as_str() && e["subject"] == "after the key rotation")
    })
    .await;
    assert!(delivered, "{}", view(daemon.addr, &user).await);
    // The round that delivered the event sets the state when it ends, after the sink's write.
    wait_state(&env, daemon.addr, &user, "active", Duration::from_secs(10)).await;
    daemon.stop().await;
}
