//! The consent flow: a flagged mailbox resumes without restart; states are single-use.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delegated::*;
use crate::support::free_port;
use crate::support::{CLIENT, Env, TENANT};
use crate::support::{addr, api_get, client, get_url};

// ---------------------------------------------------------------------------------------
// The consent flow
// ---------------------------------------------------------------------------------------

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v1/mailboxes/{mailbox}/consent` → the authorization URL.
async fn consent_url(daemon: SocketAddr, mailbox: &str) -> String {
    let (status, _, body) = api_get(daemon, &format!("/v1/mailboxes/{mailbox}/consent")).await;
    assert_eq!(status, 200, "consent URL: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["url"].as_str().expect("url").to_string()
}

/// The emulator's `/authorize` answers at once: the redirect back to the daemon.
async fn authorize(url: &str) -> String {
    let (status, location, body) = get_url(url, false).await;
    assert_eq!(status, 302, "authorize: {body}");
    location.expect("authorize redirects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_flow_resumes_a_flagged_mailbox_without_restart_and_states_are_single_use() {
    capture_logs();
    let env = Env::new().await;
    let (user, declined, expired) = (addr("cf-user"), addr("cf-declined"), addr("cf-expired"));
    env.mailboxes(&[user.clone(), declined.clone(), expired.clone()]).await;
    let port = free_port();
    let toml = config(
        &env,
        &[],
        &format!(
            "{}{}{}",
            delegated(&user, "test"),
            delegated(&declined, "test"),
            delegated(&expired, "test")
        ),
    )
    .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
    let daemon = env.start(&toml).await;
    let base = format!("http://127.0.0.1:{port}");

    // No grant yet: flagged, with the reason and the link a human opens.
    let v = wait_state(&env, daemon.addr, &user, "needs_reconsent", LIMIT).await;
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no consent has been given"), "{v}");
    assert!(reason.contains("consent"), "{v}");
    assert_eq!(v["aadsts"], Value::Null, "{v}");
    let link = v["consent_url"].as_str().expect("consent_url").to_string();
    assert_eq!(link, format!("{base}/oauth/start?mailbox=cf-user%40contoso.test"));
    assert_eq!(
        events_into(&env, &user, "needs_reconsent"),
        1,
        "{:#?}",
        state_events(&env, &user)
    );

    // The API's consent URL: authorization code + PKCE S256, scopes, login_hint, redirect URI.
    let url = consent_url(daemon.addr, &user).await;
    assert!(
        url.starts_with(&format!("{}/{TENANT}/oauth2/v2.0/authorize?", env.url)),
        "{url}"
    );
    assert_eq!(query_param(&url, "response_type").as_deref(), Some("code"), "{url}");
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256"),
        "{url}"
    );
    assert!(query_param(&url, "code_challenge").is_some(), "{url}");
    assert_eq!(query_param(&url, "login_hint").as_deref(), Some(user.as_str()), "{url}");
    assert_eq!(query_param(&url, "client_id").as_deref(), Some(CLIENT), "{url}");
    let redirect = format!("{base}/oauth/callback");
    assert_eq!(
        query_param(&url, "redirect_uri").as_deref(),
        Some(redirect.as_str()),
        "{url}"
    );
    let scope = query_param(&url, "scope").unwrap_or_default();
    for s in ["offline_access", "Mail.ReadWrite", "Mail.Send"] {
        assert!(scope.contains(s), "scope {scope:?} lacks {s}");
    }

    // Consent → callback → active and delivering, without restart.
    env.deliver(&user, "after consent").await;
    let callback = authorize(&url).await;
    assert!(callback.starts_with(&format!("{redirect}?")), "{callback}");
    assert!(query_param(&callback, "code").is_some(), "{callback}");
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 200, "callback: {page}");
    wait_state(&env, daemon.addr, &user, "active", LIMIT).await;
    assert!(
        wait_delivered(&env, &user, "after consent", Duration::from_secs(10)).await,
        "no delivery after consent"
    );

    // The same state again is refused, and the mailbox stays active.
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 400, "replayed callback accepted: {page}");
    assert!(page.contains("already used"), "{page}");
    let (status, _, page) = get_url(&format!("{redirect}?code=made-up&state=never-issued"), false).await;
    assert_eq!(status, 400, "unknown state accepted: {page}");
    assert_eq!(view(daemon.addr, &user).await["state"], "active");

    // A flow started from the link is bound to the browser that opened it: completed in
    // another browser (no cookie, or another one) it is refused and stored nothing; in the
    // same browser it works. (Expiry is sealed in the state; `auth::consent` tests it.)
    let link = view(daemon.addr, &expired).await["consent_url"]
        .as_str()
        .expect("consent_url")
        .to_string();
    let resp = client().get(&link).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302, "consent link");
    let cookie = resp
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("the link sets a cookie")
        .to_string();
    let location = resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_string();
    let callback = authorize(&location).await;
    for other in [None, Some("inboxd_consent=someone-else")] {
        let mut req = client().get(&callback);
        if let Some(c) = other {
            req = req.header(reqwest::header::COOKIE, c);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let page = resp.text().await.unwrap_or_default();
        assert_eq!(status, 400, "completed in another browser ({other:?}): {page}");
        assert!(page.contains("another browser"), "{page}");
    }
    assert_eq!(view(daemon.addr, &expired).await["state"], "needs_reconsent");
    let resp = client()
        .get(&callback)
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    wait_state(&env, daemon.addr, &expired, "active", Duration::from_secs(10)).await;

    // The user declines: the refusal is shown and the mailbox stays flagged. The link shown in
    // /v1/mailboxes starts a fresh flow.
    env.settings(json!({"consent": "deny"})).await;
    let link = view(daemon.addr, &declined).await["consent_url"]
        .as_str()
        .expect("consent_url")
        .to_string();
    let (status, location, body) = get_url(&link, false).await;
    assert_eq!(status, 302, "consent link: {body}");
    let callback = authorize(&location.expect("consent link redirects")).await;
    assert_eq!(
        query_param(&callback, "error").as_deref(),
        Some("access_denied"),
        "{callback}"
    );
    let (status, _, page) = get_url(&callback, false).await;
    assert_eq!(status, 400, "declined consent accepted: {page}");
    assert!(page.contains("refused"), "{page}");
    let v = view(daemon.addr, &declined).await;
    assert_eq!(v["state"], "needs_reconsent", "{v}");
    assert!(v["consent_url"].is_string(), "{v}");
    daemon.stop().await;
}
