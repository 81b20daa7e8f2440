//! The real binary: `inboxd emulate --listen … [--tls --tls-cert-out FILE] [--scenario FILE]`
//! (docs/emulator.md), plus the in-process TLS and scenario options.

use crate::support::control::load;
use crate::support::{CLIENT, Emu, GRAPH_SCOPE, SECRET, TENANT, status_json};
use inboxd::emulator::EmulatorOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SEEDED: &str = "seeded@contoso.example";
const LOAD_TENANT: &str = "2c4e6a80-1b3d-4f5a-9c7e-0d2f4b6a8c0e";
const LOAD_CLIENT: &str = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b";
const LOAD_SECRET: &str = "load-secret";

/// A running `inboxd emulate`; killed on drop if still alive.
struct Emulate {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Emulate {
    /// Starts the binary and returns it with its first stdout line.
    fn start(args: &[&str]) -> (Emulate, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inboxd"))
            .arg("emulate")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("inboxd starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut emulate = Emulate { child, lines };
        let first = match emulate.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let status = emulate.child.try_wait().ok().flatten();
                panic!("no first stdout line within 30 s (exit status: {status:?})");
            }
        };
        (emulate, first)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(started.elapsed() < limit, "the emulator did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Emulate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Port of a `listening on {scheme}://127.0.0.1:PORT` line.
fn port_of(line: &str, scheme: &str) -> u16 {
    let prefix = format!("listening on {scheme}://127.0.0.1:");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("first line {line:?} does not start with {prefix:?}"));
    let port: u16 = rest
        .parse()
        .unwrap_or_else(|_| panic!("first line {line:?} does not end with a port"));
    assert_ne!(port, 0, "the bound port is printed, not 0");
    port
}

async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    status_json(resp).await
}

async fn stops_cleanly_on(signal: &str) {
    let (mut emulate, first) = Emulate::start(&["--listen", "127.0.0.1:0"]);
    let port = port_of(&first, "http");
    let client = reqwest::Client::new();
    let (status, settings) = get_json(&client, &format!("http://127.0.0.1:{port}/_emulator/settings")).await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    assert!(settings.is_object(), "{settings}");

    // The client keeps its idle keep-alive connection open while the signal arrives.
    emulate.signal(signal);
    let status = emulate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "SIG{signal} → exit status 0, got {status}");
    drop(client);
}

#[tokio::test]
async fn prints_listening_line_and_stops_on_sigterm() {
    stops_cleanly_on("TERM").await;
}

#[tokio::test]
async fn stops_on_sigint() {
    stops_cleanly_on("INT").await;
}

fn trusting(pem: impl AsRef<str>) -> reqwest::ClientBuilder {
    let cert = reqwest::Certificate::from_pem(pem.as_ref().as_bytes()).expect("PEM certificate");
    reqwest::Client::builder().tls_certs_only([cert])
}

#[tokio::test]
async fn tls_with_certificate_written_out() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("emulator.pem");
    let (mut emulate, first) = Emulate::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls",
        "--tls-cert-out",
        cert_path.to_str().unwrap(),
    ]);
    assert!(first.starts_with("listening on https://"), "{first:?}");
    let port = port_of(&first, "https");
    assert!(
        cert_path.exists(),
        "the certificate is written before the listening line"
    );
    let pem = std::fs::read_to_string(&cert_path).unwrap();
    assert!(pem.contains("-----BEGIN CERTIFICATE-----"), "{pem}");

    let client = trusting(&pem).build().unwrap();
    let (status, body) = get_json(&client, &format!("https://127.0.0.1:{port}/_emulator/settings")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let loopback: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let by_name = trusting(&pem).resolve("localhost", loopback).build().unwrap();
    let (status, body) = get_json(&by_name, &format!("https://localhost:{port}/_emulator/settings")).await;
    assert_eq!(status, StatusCode::OK, "the certificate covers localhost: {body}");

    // A client trusting another emulator's certificate refuses this one.
    let other = Emu::start_with(EmulatorOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    let stranger = trusting(other.running.cert_pem().unwrap()).build().unwrap();
    assert!(
        stranger
            .get(format!("https://127.0.0.1:{port}/_emulator/settings"))
            .send()
            .await
            .is_err(),
        "each run has its own certificate, and TLS is really verified"
    );

    emulate.signal("TERM");
    let status = emulate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn in_process_tls_works_with_the_harness() {
    let emu = Emu::start_with(EmulatorOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    assert!(emu.url.starts_with("https://"), "{}", emu.url);
    assert!(
        emu.running
            .cert_pem()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE"))
    );
    emu.default_app().await;
    emu.mailbox(TENANT, SEEDED).await;
    emu.deliver(SEEDED, "Over TLS").await;
    let token = emu.default_token().await;
    let (status, _, page) = emu
        .graph_get(&token, &format!("/v1.0/users/{SEEDED}/mailFolders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["value"][0]["subject"], "Over TLS", "{page}");
}

fn load_spec() -> Value {
    json!({"tenant_id": LOAD_TENANT, "client_id": LOAD_CLIENT, "client_secret": LOAD_SECRET,
           "mailboxes": 2, "messages_per_mailbox": 3, "body_bytes": 256,
           "address_prefix": "bulk", "domain": "bulk.example"})
}

fn write_scenario(dir: &Path) -> std::path::PathBuf {
    let scenario = json!({
        "apps": [{"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                  "roles": ["Mail.ReadWrite", "Mail.Send"]}],
        "mailboxes": [{"tenant_id": TENANT, "address": SEEDED, "display_name": "Seeded"}],
        "messages": [
            {"mailbox": SEEDED, "from": {"name": "Customer", "address": "customer@example.net"},
             "to": [{"name": "Seeded", "address": SEEDED}], "subject": "Seeded one",
             "body": {"content_type": "text", "content": "first"}},
            {"mailbox": SEEDED, "folder": "archive", "from": {"name": "Customer", "address": "customer@example.net"},
             "to": [{"name": "Seeded", "address": SEEDED}], "subject": "Seeded two",
             "body": {"content_type": "text", "content": "second"}}
        ],
        "settings": {"delta_page_size": 3, "throttle_retry_after_secs": 7.5},
        "load": load_spec()
    });
    let path = dir.join("scenario.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&scenario).unwrap()).unwrap();
    path
}

/// The addresses the load generator makes for `load_spec()`, learned from a separate emulator.
async fn load_addresses() -> Vec<String> {
    let probe = Emu::start().await;
    let addresses = load(&probe, load_spec()).await;
    assert_eq!(addresses.len(), 2, "the load answer names its mailboxes: {addresses:?}");
    addresses
}

/// Checks everything the scenario seeds, against an emulator at `base`.
async fn assert_seeded(client: &reqwest::Client, base: &str, load_addresses: &[String]) {
    let token_for = |tenant: &str, client_id: &str, secret: &str| {
        let request = client
            .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", GRAPH_SCOPE),
            ])
            .send();
        async move {
            let (status, body) = status_json(request.await.unwrap()).await;
            assert_eq!(status, StatusCode::OK, "token of a seeded app: {body}");
            body["access_token"].as_str().unwrap().to_string()
        }
    };

    let token = token_for(TENANT, CLIENT, SECRET).await;
    let resp = client
        .get(format!("{base}/v1.0/users/{SEEDED}/mailFolders/inbox/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, page) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let subjects: Vec<&str> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["Seeded one"], "{page}");

    let (status, archive) = get_json(
        client,
        &format!("{base}/_emulator/mailboxes/{SEEDED}/folders/archive/messages"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{archive}");
    assert_eq!(archive.as_array().map(Vec::len), Some(1), "{archive}");
    assert_eq!(archive[0]["subject"], "Seeded two");

    let (_, settings) = get_json(client, &format!("{base}/_emulator/settings")).await;
    assert_eq!(settings["delta_page_size"].as_f64(), Some(3.0), "{settings}");
    assert_eq!(settings["throttle_retry_after_secs"].as_f64(), Some(7.5), "{settings}");
    assert_eq!(
        settings["latency_ms"].as_f64(),
        Some(0.0),
        "unnamed settings keep their defaults: {settings}"
    );

    token_for(LOAD_TENANT, LOAD_CLIENT, LOAD_SECRET).await;
    for address in load_addresses {
        let (status, inbox) = get_json(
            client,
            &format!("{base}/_emulator/mailboxes/{address}/folders/inbox/messages"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{address}: {inbox}");
        assert_eq!(inbox.as_array().map(Vec::len), Some(3), "{address}: {inbox}");
    }
}

#[tokio::test]
async fn scenario_file_seeds_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path());
    let addresses = load_addresses().await;

    let (mut emulate, first) = Emulate::start(&["--listen", "127.0.0.1:0", "--scenario", scenario.to_str().unwrap()]);
    let port = port_of(&first, "http");
    let client = reqwest::Client::new();
    assert_seeded(&client, &format!("http://127.0.0.1:{port}"), &addresses).await;

    emulate.signal("TERM");
    let status = emulate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn scenario_option_seeds_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path());
    let addresses = load_addresses().await;

    let emu = Emu::start_with(EmulatorOptions {
        scenario: Some(scenario),
        ..Default::default()
    })
    .await;
    assert_seeded(&emu.http, &emu.url, &addresses).await;
}

#[tokio::test]
async fn empty_scenario_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.json");
    std::fs::write(&path, "{}").unwrap();
    let (mut emulate, first) = Emulate::start(&["--listen", "127.0.0.1:0", "--scenario", path.to_str().unwrap()]);
    let port = port_of(&first, "http");
    let (status, body) = get_json(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/_emulator/settings"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "all scenario keys are optional: {body}");
    emulate.signal("TERM");
    assert_eq!(emulate.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
}
