//! The status page over plain HTTP: sign in, read pages, post forms, with the session cookie
//! handled by hand so the tests can look at its flags.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{API_TOKEN, Env, SECRET_ENV, with_api_token};

/// A token of `server.read_only_api_tokens` in the configs here.
pub const READ_ONLY_TOKEN: &str = "read-only-token-5c81f0aa";

/// When the test app's secret expires, as the configs here declare it.
pub const SECRET_EXPIRES_AT: &str = "2027-03-01T00:00:00Z";

/// The generated config (poll every 250 ms) with both kinds of API token and the test app's
/// secret expiry.
pub fn config(env: &Env, mailboxes: &[String]) -> String {
    let toml = with_api_token(&env.config(mailboxes, "250ms"));
    let secret = format!("client_secret = \"env:{SECRET_ENV}\"\n");
    assert!(toml.contains(&secret));
    let toml = toml.replacen(
        &secret,
        &format!("{secret}secret_expires_at = \"{SECRET_EXPIRES_AT}\"\n"),
        1,
    );
    let anchor = format!("api_tokens = [\"dev:{API_TOKEN}\"]\n");
    assert!(toml.contains(&anchor));
    toml.replacen(
        &anchor,
        &format!("{anchor}read_only_api_tokens = [\"dev:{READ_ONLY_TOKEN}\"]\n"),
        1,
    )
}

/// An answer: status, `Location`, `Set-Cookie` and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

/// A browser-like client of the daemon at `addr` that follows no redirect and keeps no cookie.
pub struct Page {
    base: String,
    http: reqwest::Client,
}

impl Page {
    pub fn new(addr: SocketAddr) -> Page {
        Page {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let header = |name| {
            resp.headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_string())
        };
        let (location, set_cookie) = (header(reqwest::header::LOCATION), header(reqwest::header::SET_COOKIE));
        Answer {
            status: resp.status().as_u16(),
            location,
            set_cookie,
            body: resp.text().await.unwrap(),
        }
    }

    /// GET `path`, with the session cookie `cookie` (`name=value`) when given.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header(reqwest::header::COOKIE, c);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    /// POST a form to `path`.
    pub async fn post(&self, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(c) = cookie {
            req = req.header(reqwest::header::COOKIE, c);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    /// Signs in with `token`; returns the cookie to send back (`inboxd_ui=…`), panicking with
    /// the answer when sign-in failed.
    pub async fn sign_in(&self, token: &str) -> String {
        let answer = self.post("/ui/sign-in", None, &[("token", token)]).await;
        assert_eq!(answer.status, 303, "sign-in: {answer:?}");
        answer
            .set_cookie
            .as_deref()
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("sign-in set no cookie: {answer:?}"))
            .to_string()
    }
}

/// The CSRF token of the first form in `page`.
pub fn csrf(page: &str) -> String {
    let start = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in the page:\n{page}"))
        + r#"name="csrf" value=""#.len();
    page[start..].split('"').next().unwrap().to_string()
}

/// Asks `mailbox` to send a new message through `/v1` (what routing does); returns its
/// outbound id once Graph has sent it.
pub async fn send_and_wait(addr: SocketAddr, mailbox: &str, subject: &str) -> String {
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}/v1/mailboxes/{mailbox}/send"))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", subject)
        .json(&serde_json::json!({
            "to": [{"name": "Customer", "address": "customer@example.net"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Your ticket is open."},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "send: {:?}", resp.text().await);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = crate::support::eventually(Duration::from_secs(30), || async {
        let status: serde_json::Value = http
            .get(format!("http://{addr}/v1/outbound/{id}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["status"] == "sent"
    })
    .await;
    assert!(sent, "outbound {id} was not sent");
    id
}
