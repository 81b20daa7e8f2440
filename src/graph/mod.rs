//! Microsoft Graph client: typed calls, the error envelope, per-mailbox governor,
//! `Retry-After` and exponential backoff with jitter.

mod error;
mod gate;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use serde_json::Value;
use url::Url;

pub use error::{GraphError, GraphErrorKind, classify, retry_after};
pub use gate::MailboxGate;

use crate::auth::{AccessToken, TokenError, TokenSource};
use crate::metrics::Metrics;

/// One Graph request.
#[derive(Debug, Clone)]
pub struct Call {
    /// Metric label and log name (`delta`, `attachments`, `batch`, …).
    pub operation: &'static str,
    /// Method.
    pub method: Method,
    /// Absolute URL, or a path relative to `{graph_url}/v1.0/`.
    pub url: String,
    /// JSON body.
    pub body: Option<Value>,
    /// `Prefer` values.
    pub prefer: Vec<String>,
    /// Slots this call takes in the mailbox gate (a `$batch` takes more).
    pub weight: u32,
    /// Retry transient failures (false for requests that must not be repeated blindly).
    pub retry: bool,
}

impl Call {
    /// A GET.
    pub fn get(operation: &'static str, url: impl Into<String>) -> Call {
        Call {
            operation,
            method: Method::GET,
            url: url.into(),
            body: None,
            prefer: Vec::new(),
            weight: 1,
            retry: true,
        }
    }

    /// A POST with a JSON body.
    pub fn post(operation: &'static str, url: impl Into<String>, body: Value) -> Call {
        Call {
            operation,
            method: Method::POST,
            url: url.into(),
            body: Some(body),
            prefer: Vec::new(),
            weight: 1,
            retry: true,
        }
    }

    /// Adds a `Prefer` value.
    pub fn prefer(mut self, value: impl Into<String>) -> Call {
        self.prefer.push(value.into());
        self
    }
}

/// Why a call failed in the end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Graph refused or failed (after retries, if transient).
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The Graph client shared by every mailbox.
pub struct Graph {
    http: reqwest::Client,
    base: Url,
    metrics: Arc<Metrics>,
    /// Retries of transient failures (after the first attempt).
    retries: usize,
    /// Requests in flight across all mailboxes.
    global: tokio::sync::Semaphore,
    /// A hung request becomes a transient failure after this long.
    timeout: Duration,
}

/// Most Graph requests in flight at once, all mailboxes together.
const GLOBAL_CONCURRENCY: usize = 256;

impl Graph {
    /// A client for `graph_url` (e.g. `https://graph.microsoft.com`).
    pub fn new(http: reqwest::Client, graph_url: &Url, timeout: Duration, metrics: Arc<Metrics>) -> Graph {
        let mut base = graph_url.clone();
        base.set_path(&format!("{}/v1.0/", graph_url.path().trim_end_matches('/')));
        Graph {
            http,
            base,
            metrics,
            retries: 6,
            global: tokio::sync::Semaphore::new(GLOBAL_CONCURRENCY),
            timeout,
        }
    }

    /// Base URL of v1.0 (ends with `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Runs a call: waits for the mailbox gate, retries transient failures with backoff
    /// (honouring `Retry-After`), refreshes the token once on a 401.
    pub async fn call(&self, gate: &MailboxGate, tokens: &TokenSource, call: &Call) -> Result<Value, CallError> {
        let attempt = || async {
            let token = tokens.token().await?;
            match self.once(gate, &token, call).await {
                Err(e) if e.kind == GraphErrorKind::Unauthorized => {
                    tokens.invalidate(&token);
                    let token = tokens.token().await?;
                    Ok(self.once(gate, &token, call).await?)
                }
                other => Ok(other?),
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(if call.retry { self.retries } else { 0 })
            .with_jitter();
        attempt
            .retry(backoff)
            .notify(|e: &CallError, wait: Duration| {
                if let CallError::Graph(g) = e {
                    tracing::info!(
                        mailbox = gate.mailbox(), operation = call.operation, status = g.status, code = g.code.as_deref().unwrap_or(""),
                        request_id = g.request_id.as_deref().unwrap_or(""), client_request_id = %g.client_request_id,
                        retry_in_ms = wait.as_millis() as u64, "Graph request failed; retrying."
                    );
                }
            })
            .when(|e: &CallError| match e {
                CallError::Graph(g) => g.is_transient(),
                CallError::Token(_) => false,
            })
            .adjust(|e: &CallError, planned: Option<Duration>| match (e, planned) {
                // Retry-After was already applied to the gate; only add the planned jitter on top.
                (CallError::Graph(g), Some(p)) => Some(g.retry_after.map_or(p, |r| r.max(Duration::from_millis(1)))),
                (_, p) => p,
            })
            .await
    }

    /// One exchange with an explicit token and no retry (the consent flow checks a fresh
    /// grant with it before storing anything).
    pub async fn probe(&self, gate: &MailboxGate, token: &AccessToken, call: &Call) -> Result<Value, GraphError> {
        self.once(gate, token, call).await
    }

    /// One HTTP exchange, no retry.
    async fn once(&self, gate: &MailboxGate, token: &AccessToken, call: &Call) -> Result<Value, GraphError> {
        let url = if call.url.starts_with("http://") || call.url.starts_with("https://") {
            call.url.clone()
        } else {
            format!("{}{}", self.base, call.url.trim_start_matches('/'))
        };
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut req = self
            .http
            .request(call.method.clone(), &url)
            .bearer_auth(token.bearer())
            .header("client-request-id", &client_request_id)
            .header("return-client-request-id", "true")
            .timeout(self.timeout);
        for p in &call.prefer {
            req = req.header("Prefer", p);
        }
        req = match &call.body {
            Some(body) => req.json(body),
            // Graph requires Content-Length on body-less POSTs (`send`); reqwest omits it.
            None if call.method == Method::POST => req.header(reqwest::header::CONTENT_LENGTH, "0"),
            None => req,
        };
        let fail = |kind,
                    status: Option<u16>,
                    code: Option<String>,
                    message: String,
                    request_id: Option<String>,
                    retry: Option<Duration>| GraphError {
            kind,
            operation: call.operation,
            status,
            code,
            message,
            request_id,
            client_request_id: client_request_id.clone(),
            retry_after: retry,
        };
        let permit = gate.enter(call.weight).await;
        let global = self
            .global
            .acquire_many(call.weight)
            .await
            .expect("global semaphore is never closed");
        let sent = req.send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                drop((permit, global));
                self.metrics.graph_request(call.operation, "error");
                return Err(fail(
                    GraphErrorKind::Transport,
                    None,
                    None,
                    crate::auth::describe(&e),
                    None,
                    None,
                ));
            }
        };
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let wait = retry_after(resp.headers());
        if status == 429 || (status == 503 && wait.is_some()) {
            gate.pause_for(wait.unwrap_or(Duration::from_secs(1)));
        }
        let bytes = resp.bytes().await;
        drop((permit, global));
        self.metrics.graph_request(call.operation, &status.to_string());
        if status == 429 {
            self.metrics.graph_throttled.inc();
        }
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                return Err(fail(
                    GraphErrorKind::Transport,
                    Some(status),
                    None,
                    crate::auth::describe(&e),
                    request_id,
                    wait,
                ));
            }
        };
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    GraphErrorKind::Malformed,
                    Some(status),
                    None,
                    format!("unreadable JSON: {e}"),
                    request_id.clone(),
                    None,
                )
            });
        }
        let envelope: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let error = envelope.get("error").cloned().unwrap_or(Value::Null);
        let code = error.get("code").and_then(Value::as_str).map(str::to_string);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no error message")
            .to_string();
        let request_id = request_id.or_else(|| inner_request_id(&error));
        Err(fail(
            classify(status, code.as_deref()),
            Some(status),
            code,
            message,
            request_id,
            wait,
        ))
    }
}

/// Percent-encodes one URL path segment (mailbox addresses, message ids) for Graph paths.
pub fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `innerError.request-id`, spelled however Graph spells it this time.
fn inner_request_id(error: &Value) -> Option<String> {
    let inner = error
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("innererror"))?
        .1;
    let id = inner
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("request-id") || k.eq_ignore_ascii_case("requestId"))?
        .1;
    id.as_str().map(str::to_string)
}
