//! The status page in a real browser: Debian's chromium, driven through chromedriver (WebDriver)
//! with fantoccini, against the real daemon and the emulator. Signs in, sees a flagged delegated
//! mailbox, follows its consent button through the emulator's authorize page until the mailbox
//! is active, replays a message quarantined for real, checks labels, contrast and a 400 px wide
//! window, and saves a screenshot to `target/ci-artifacts/status-page.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::a11y::accessible;
use crate::page::config;
use crate::receiver::{Receiver, with_webhook};
use crate::support::{API_TOKEN, Env, eventually, poll_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Bound on every wait (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(40);
const STORE_KEY: &str = "browser-test-store-key";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    /// The browser profile, fresh for this run.
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            assert!(
                Path::new(path).exists(),
                "{what} is missing at {path}: run .ci/browser (as root) to install Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: tempfile::tempdir().unwrap(),
        };
        let http = reqwest::Client::new();
        let ready = eventually(Duration::from_secs(20), || async {
            match http.get(format!("{}/status", driver.url)).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "chromedriver did not answer on {}", driver.url);
        driver
    }

    /// A headless chromium session with the flags this machine needs.
    async fn browser(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", self._profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({"binary": CHROMIUM, "args": args}));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("no chromium session through {}: {e}", self.url))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's text, read inside one script: the page reloads itself every few seconds, and
/// an element found before a reload is stale after it.
async fn text(client: &Client) -> String {
    // Between two documents there is no body: the next one is on its way.
    poll_until(Duration::from_secs(5), "the page's text", || async {
        match client
            .execute("return document.body ? document.body.innerText : null", vec![])
            .await
        {
            Ok(Value::String(shown)) => Ok(shown),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Reloads `/ui/` until `css` matches an element (the page also reloads itself).
async fn wait_for(client: &Client, base: &str, css: &str) -> bool {
    eventually(LIMIT, || async {
        client.goto(&format!("{base}/ui/")).await.unwrap();
        client.find(Locator::Css(css)).await.is_ok()
    })
    .await
}

/// Where CI picks up its artefacts.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_in_chromium_consents_replays_and_fits_400_px() {
    let driver = Driver::start().await;
    let env = Env::new().await;
    let (user, shop) = ("ui-user@contoso.test".to_string(), "ui-shop@contoso.test".to_string());
    env.mailboxes(&[user.clone(), shop.clone()]).await;
    let (rx, url) = Receiver::serve("subject not allowed by routing").await;
    let toml = with_webhook(&env, &config(&env, std::slice::from_ref(&shop)), &url);
    let toml = toml.replacen(
        "[store]\n",
        &format!("[store]\nencryption_key = \"dev:{STORE_KEY}\"\n"),
        1,
    );
    let toml = format!("{toml}\n[[mailboxes]]\naddress = \"{user}\"\napp = \"test\"\naccess = \"delegated\"\n");
    let daemon = env.start(&toml).await;
    let base = format!("http://{}", daemon.addr);
    env.deliver(&shop, "a poison message").await;
    env.deliver(&shop, "an ordinary message").await;
    let ready = eventually(LIMIT, || async {
        daemon.quarantine().await.len() == 1 && daemon.state(&user).await == "needs_reconsent"
    })
    .await;
    assert!(ready, "no quarantine or no flag: {:?}", daemon.mailbox_views().await);
    let quarantined = daemon.quarantine().await[0]["id"].as_str().unwrap().to_string();

    let client = driver.browser().await;
    // Sign in.
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/ui/");
    accessible(&client, "sign-in page").await;
    client
        .find(Locator::Css("input#token"))
        .await
        .unwrap()
        .send_keys(API_TOKEN)
        .await
        .unwrap();
    client
        .find(Locator::Css("form[action='/ui/sign-in'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flagged = format!("[data-mailbox='{user}'] [data-state='needs_reconsent']");
    assert!(
        wait_for(&client, &base, &flagged).await,
        "no flagged mailbox:\n{}",
        text(&client).await
    );
    assert!(
        wait_for(
            &client,
            &base,
            &format!("[data-mailbox='{shop}'] [data-state='active']")
        )
        .await,
        "the app-only mailbox is not active:\n{}",
        text(&client).await
    );
    let shown = text(&client).await;
    assert!(shown.contains("subject not allowed by routing"), "{shown}");
    assert!(!shown.contains(API_TOKEN), "the page shows the token");

    let outbound = crate::page::send_and_wait(daemon.addr, &shop, "Re: your order 1042").await;
    assert!(
        wait_for(&client, &base, &format!("[data-outbound='{outbound}']")).await,
        "the sent message is not listed"
    );
    assert!(text(&client).await.contains("sent · send from ui-shop@contoso.test"));
    accessible(&client, "status page, 1280 px").await;
    // Tall enough for the whole page in the screenshot.
    client.set_window_size(1280, 2000).await.unwrap();
    let screenshot = artifacts().join("status-page.png");
    std::fs::write(&screenshot, client.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", screenshot.display());

    // 400 px wide: the viewport, not the window, is what has to fit.
    client.set_window_size(400, 900).await.unwrap();
    let inner = client.execute("return window.innerWidth", vec![]).await.unwrap();
    let inner = inner.as_i64().unwrap();
    if inner != 400 {
        client
            .set_window_size(u32::try_from(400 + 400 - inner).unwrap(), 900)
            .await
            .unwrap();
    }
    let widths = client
        .execute(
            "return [window.innerWidth, document.documentElement.scrollWidth]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(widths[0], 400, "viewport: {widths}");
    assert!(
        widths[1].as_i64().unwrap() <= 400,
        "horizontal scroll at 400 px: {widths}"
    );
    accessible(&client, "status page, 400 px").await;
    std::fs::write(
        artifacts().join("status-page-400px.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.set_window_size(1280, 1000).await.unwrap();

    // The consent button: /oauth/start, the emulator's authorize page, the callback.
    client
        .find(Locator::Css(&format!("[data-mailbox='{user}'] a[data-consent]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let landed = client.current_url().await.unwrap();
    assert_eq!(landed.path(), "/oauth/callback", "consent ended at {landed}");
    let answer = text(&client).await;
    assert!(!answer.to_lowercase().contains("refused"), "consent refused: {answer}");
    let active = format!("[data-mailbox='{user}'] [data-state='active']");
    assert!(
        wait_for(&client, &base, &active).await,
        "consent did not resume the mailbox:\n{}",
        text(&client).await
    );
    let used_authorize = env.requests().await.iter().any(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/oauth2/v2.0/authorize"))
    });
    assert!(
        used_authorize,
        "the browser never reached the emulator's authorize page"
    );

    // Replay: routing accepts now.
    rx.reject.store(false, Ordering::SeqCst);
    client
        .find(Locator::Css(&format!(
            "form[action='/ui/quarantine/{quarantined}/replay'] button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click's answer is a redirect to the page with the notice; wait for it to load.
    let noticed = eventually(LIMIT, || async { text(&client).await.contains("Replay requested") }).await;
    assert!(noticed, "no replay notice:\n{}", text(&client).await);
    // No navigation from here: the page reloads itself.
    client.execute("window.notReloaded = true", vec![]).await.unwrap();
    let emptied = eventually(LIMIT, || async {
        let reloaded = client
            .execute("return window.notReloaded === undefined", vec![])
            .await
            .is_ok_and(|v| v == json!(true));
        reloaded && text(&client).await.contains("Nothing is quarantined.")
    })
    .await;
    assert!(
        emptied,
        "the page did not reload itself into an empty quarantine:\n{}",
        text(&client).await
    );

    // While a form is in use the page does not reload (watched one refresh period and more).
    client
        .execute(
            "window.notReloaded = true; document.querySelector('form button').focus()",
            vec![],
        )
        .await
        .unwrap();
    let shown = text(&client).await;
    let period: u64 = shown
        .split("reloads every ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page does not say how often it reloads: {shown}"));
    let watch = Duration::from_secs(period + 3);
    let reloaded = eventually(watch, || async {
        client
            .execute("return window.notReloaded === undefined", vec![])
            .await
            .map_or(true, |v| v == json!(true))
    })
    .await;
    assert!(!reloaded, "the page reloaded while a form had the focus");
    assert!(daemon.quarantine().await.is_empty());
    assert!(
        rx.accepted.load(Ordering::SeqCst) >= 2,
        "routing never got the replayed message"
    );

    client.close().await.unwrap();
    daemon.stop().await;
    drop(driver);
}
