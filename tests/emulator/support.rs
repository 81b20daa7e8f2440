//! Starts an in-process emulator on 127.0.0.1:0 and speaks to it over real HTTP.
#![allow(dead_code)]

pub mod compose;
pub mod control;
pub mod graph;
pub mod identity;

use inboxd::emulator::{EmulatorOptions, RunningEmulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const TENANT: &str = "7d1a3b52-0f6e-4c1a-9a51-2f8f3a6f0c11";
pub const CLIENT: &str = "5b0e1f7c-2a44-4f0e-8d0b-6c2b9e1d4a77";
pub const SECRET: &str = "emulator-test-secret~value";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A running emulator plus an HTTP client that follows no redirects.
pub struct Emu {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Plain client: no redirects followed, so tests see the 302s themselves.
    pub http: reqwest::Client,
    /// Keeps the server alive for the test's duration.
    pub running: RunningEmulator,
}

impl Emu {
    /// Starts a fresh, empty emulator over plain HTTP.
    pub async fn start() -> Emu {
        Self::start_with(EmulatorOptions::default()).await
    }

    /// Starts an emulator with explicit options (TLS, scenario).
    pub async fn start_with(options: EmulatorOptions) -> Emu {
        let running = inboxd::emulator::spawn("127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("emulator starts");
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = running.cert_pem() {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
            builder = builder.tls_certs_only([cert]);
        }
        Emu {
            url: running.url().to_string(),
            http: builder.build().unwrap(),
            running,
        }
    }

    /// Full URL of a path on the emulator.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// POSTs JSON, returns status and JSON body (Null when the body is empty or not JSON).
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self.http.post(self.at(path)).json(&body).send().await.unwrap();
        status_json(resp).await
    }

    /// GETs a path, returns status and JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.at(path)).send().await.unwrap();
        status_json(resp).await
    }

    /// Registers the default app (TENANT, CLIENT, SECRET) with mail roles.
    pub async fn default_app(&self) {
        self.app(TENANT, CLIENT, SECRET, &["Mail.ReadWrite", "Mail.Send"]).await;
    }

    /// Registers an app with a client secret.
    pub async fn app(&self, tenant: &str, client: &str, secret: &str, roles: &[&str]) {
        let (status, body) = self
            .post(
                "/_emulator/apps",
                json!({"tenant_id": tenant, "client_id": client, "client_secret": secret, "roles": roles}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register app: {body}");
    }

    /// Creates a mailbox in a tenant.
    pub async fn mailbox(&self, tenant: &str, address: &str) -> Value {
        let (status, body) = self
            .post("/_emulator/mailboxes", json!({"tenant_id": tenant, "address": address}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create mailbox: {body}");
        body
    }

    /// Delivers a simple text message into a mailbox's inbox; returns the control API answer.
    pub async fn deliver(&self, address: &str, subject: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/_emulator/mailboxes/{address}/messages"),
                json!({
                    "from": {"name": "Customer", "address": "customer@example.net"},
                    "to": [{"name": "Support", "address": address}],
                    "subject": subject,
                    "body": {"content_type": "text", "content": format!("Body of {subject}")}
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "deliver: {body}");
        body
    }

    /// POSTs a form to the token endpoint of `tenant`: status, headers and JSON body.
    pub async fn token_request(
        &self,
        tenant: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(self.at(&format!("/{tenant}/oauth2/v2.0/token")))
            .form(form)
            .send()
            .await
            .unwrap();
        let headers = resp.headers().clone();
        let (status, body) = status_json(resp).await;
        (status, headers, body)
    }

    /// Gets an app-only access token with the client secret.
    pub async fn app_token(&self, tenant: &str, client: &str, secret: &str) -> String {
        let (status, _, body) = self
            .token_request(
                tenant,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client),
                    ("client_secret", secret),
                    ("scope", GRAPH_SCOPE),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "token: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Token of the default app.
    pub async fn default_token(&self) -> String {
        self.app_token(TENANT, CLIENT, SECRET).await
    }

    /// Graph GET with a bearer token; returns status, headers and JSON body.
    pub async fn graph_get(&self, token: &str, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self.http.get(self.at(path)).bearer_auth(token).send().await.unwrap();
        let headers = resp.headers().clone();
        let (status, body) = status_json(resp).await;
        (status, headers, body)
    }

    /// Graph POST with a bearer token and JSON body.
    pub async fn graph_post(
        &self,
        token: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(self.at(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let headers = resp.headers().clone();
        let (status, body) = status_json(resp).await;
        (status, headers, body)
    }

    /// Changes emulator settings.
    pub async fn settings(&self, body: Value) {
        let (status, answer) = self.post("/_emulator/settings", body).await;
        assert_eq!(status, StatusCode::OK, "settings: {answer}");
    }

    /// The request log.
    pub async fn requests(&self) -> Vec<Value> {
        let (_, body) = self.get("/_emulator/requests").await;
        body["requests"].as_array().cloned().unwrap_or_default()
    }
}

/// Splits a response into its status and JSON body (Null if empty or not JSON).
pub async fn status_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
