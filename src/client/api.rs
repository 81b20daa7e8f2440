//! The daemon's `/v1` API as the terminal commands call it: the token, the requests, and
//! errors that say what to do (daemon unreachable, token refused, unknown id).

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::Target;

/// The environment variable holding the API token.
pub const TOKEN_ENV: &str = "INBOXD_API_TOKEN";

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token was given, or its file cannot be read.
    #[error("{0}")]
    Token(String),
    /// `--url` is not a URL.
    #[error("--url {url:?} is not a URL: {reason}")]
    BadUrl {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer from the daemon.
    #[error("cannot reach inboxd at {url}: {reason} (is `inboxd run` running there? check --url or INBOXD_URL)")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Connection refused, timeout, …
        reason: String,
    },
    /// 401: the token is not one of `server.api_tokens`.
    #[error(
        "inboxd at {url} refused the API token (401): use one of server.api_tokens in INBOXD_API_TOKEN or --token-file"
    )]
    Unauthorized {
        /// The base URL.
        url: String,
    },
    /// 404 with the API's code (`unknown_mailbox`, `unknown_quarantine_entry`, `unknown_outbound`).
    #[error("{message} ({code})")]
    NotFound {
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// Any other error answer.
    #[error("inboxd answered {status}: {message} ({code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The consent did not complete in time.
    #[error("{0}")]
    TimedOut(String),
}

impl ClientError {
    /// The process exit code (sysexits where one fits).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Token(_) | ClientError::BadUrl { .. } => 64, // EX_USAGE
            ClientError::Unreachable { .. } => 69,                    // EX_UNAVAILABLE
            ClientError::Unauthorized { .. } => 77,                   // EX_NOPERM
            ClientError::NotFound { .. } | ClientError::Api { .. } => 1,
            ClientError::TimedOut(_) => 75, // EX_TEMPFAIL
        }
    }
}

/// A client of one daemon.
pub struct ApiClient {
    base: url::Url,
    token: SecretString,
    http: reqwest::Client,
}

impl ApiClient {
    /// From `--url`, `--token-file` and `INBOXD_API_TOKEN`.
    pub fn from_target(target: &Target) -> Result<ApiClient, ClientError> {
        let token = match &target.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ClientError::Token(format!("--token-file {}: cannot read it: {e}", path.display())))?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(ClientError::Token(format!("--token-file {} is empty", path.display())));
                }
                token
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    return Err(ClientError::Token(format!(
                        "no API token: set {TOKEN_ENV} or pass --token-file FILE (never the token itself as an argument)"
                    )));
                }
            },
        };
        ApiClient::new(&target.url, SecretString::from(token))
    }

    /// A client of the daemon at `url`.
    pub fn new(url: &str, token: SecretString) -> Result<ApiClient, ClientError> {
        let mut base = url::Url::parse(url).map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl {
                url: url.to_string(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ApiClient { base, token, http })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// GET `path` (relative, e.g. `v1/mailboxes`).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path).await
    }

    /// POST `path` without a body.
    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::POST, path).await
    }

    /// Completes a consent for a browser that could not reach inboxd: requests the callback
    /// address it ended on (its query, on this daemon). Answers the status and the page's text.
    pub async fn finish_consent(&self, query: &str) -> Result<(u16, String), ClientError> {
        let mut url = self.base.join("oauth/callback").map_err(|e| ClientError::BadUrl {
            url: self.base().to_string(),
            reason: e.to_string(),
        })?;
        url.set_query(Some(query));
        let resp = self.http.get(url).send().await.map_err(|e| ClientError::Unreachable {
            url: self.base().to_string(),
            reason: crate::auth::describe(&e),
        })?;
        let status = resp.status().as_u16();
        let html = resp.text().await.unwrap_or_default();
        Ok((status, page_text(&html)))
    }

    async fn send(&self, method: Method, path: &str) -> Result<Value, ClientError> {
        let url = self.base.join(path).map_err(|e| ClientError::BadUrl {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })?;
        let resp = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base().to_string(),
                reason: crate::auth::describe(&e),
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let code = body["error"]["code"].as_str().unwrap_or("unknown").to_string();
        let message = body["error"]["message"].as_str().unwrap_or("no message").to_string();
        Err(match status {
            401 => ClientError::Unauthorized {
                url: self.base().to_string(),
            },
            404 => ClientError::NotFound { code, message },
            _ => ClientError::Api { status, code, message },
        })
    }
}

/// The words of the daemon's short HTML answer (tags dropped, whitespace collapsed, the common
/// entities decoded), for one line on the terminal.
fn page_text(html: &str) -> String {
    let body = html.split_once("<body").map_or(html, |(_, b)| b);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes one path segment (a mailbox address, an id).
pub fn segment(s: &str) -> String {
    crate::graph::segment(s)
}

#[cfg(test)]
mod tests {
    use super::page_text;

    #[test]
    fn the_callback_page_becomes_one_line() {
        let html = "<!doctype html><html><head><title>inboxd</title><style>p{}</style></head><body><h1>Consent saved</h1>\n<p>support@contoso.com &amp; co is active again.</p></body></html>";
        assert_eq!(
            page_text(html),
            "Consent saved support@contoso.com & co is active again."
        );
    }
}
