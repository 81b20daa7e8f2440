//! Microsoft's own Python clients against the emulator: MSAL gets an app-only token
//! (client credentials) and a delegated one (refresh-token grant) over HTTPS, and
//! msgraph-sdk pages a folder's delta in its `delta()` form, reads a message, marks it
//! read and replies (`tests/emulator/python/sdk_check.py`).
//!
//! The virtualenv with the pinned packages (`python/requirements.txt`, from PyPI) lives
//! in the cargo target's tmp dir and is built once; set `INBOXD_SKIP_PYTHON_SDK=1` to
//! skip this test on a machine without Python or PyPI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use inboxd::emulator::EmulatorOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::graph::{SUPPORT, control_folder};
use crate::support::{CLIENT, Emu, SECRET, TENANT};

const REQUIREMENTS: &str = include_str!("python/requirements.txt");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/emulator/python/sdk_check.py");
const REQUIREMENTS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/emulator/python/requirements.txt");

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The virtualenv with MSAL and msgraph-sdk, built when missing or when the pins changed.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulator-python-venv");
    let stamp = dir.join("inboxd-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(REQUIREMENTS) && dir.join("bin/python").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv",
    );
    run(
        Command::new(dir.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
            REQUIREMENTS_FILE,
        ]),
        "pip install msgraph-sdk msal",
    );
    std::fs::write(&stamp, REQUIREMENTS).unwrap();
    dir
}

/// Runs the script with its JSON input; returns its JSON output.
fn script(python: PathBuf, ca_file: &Path, input: Value) -> Value {
    let mut child = Command::new(python)
        .arg(SCRIPT)
        // requests prefers these variables over a session's own `verify`, so they must
        // name the emulator's certificate rather than the machine's bundle.
        .env("REQUESTS_CA_BUNDLE", ca_file)
        .env("CURL_CA_BUNDLE", ca_file)
        .env("SSL_CERT_FILE", ca_file)
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk_check.py failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("sdk_check.py output is not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn microsoft_python_sdk_and_msal_work_against_the_emulator() {
    if std::env::var_os("INBOXD_SKIP_PYTHON_SDK").is_some() {
        eprintln!("INBOXD_SKIP_PYTHON_SDK is set: skipped");
        return;
    }
    let dir = tokio::task::spawn_blocking(venv).await.unwrap();

    let emu = Emu::start_with(EmulatorOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    assert!(emu.url.starts_with("https://"), "{}", emu.url);
    emu.default_app().await;
    emu.mailbox(TENANT, SUPPORT).await;
    for i in 1..=5 {
        emu.deliver(SUPPORT, &format!("Question {i}")).await;
    }
    let (status, body) = emu
        .post(
            "/_emulator/refresh-tokens",
            json!({"tenant_id": TENANT, "client_id": CLIENT, "address": SUPPORT,
                   "scopes": ["offline_access", "Mail.ReadWrite", "Mail.Send"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), emu.running.cert_pem().expect("TLS certificate")).unwrap();
    let input = json!({
        "base_url": emu.url,
        "tenant": TENANT,
        "client_id": CLIENT,
        "client_secret": SECRET,
        "mailbox": SUPPORT,
        "refresh_token": body["refresh_token"],
        "ca_file": ca.path(),
    });
    let ca_file = ca.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || script(dir.join("bin/python"), &ca_file, input))
        .await
        .unwrap();

    assert_eq!(out["delta_messages"], 5, "{out}");
    assert_eq!(out["distinct_ids"], 5, "{out}");
    assert_eq!(out["delta_pages"], 3, "odata.maxpagesize=2 over 5 messages: {out}");
    assert!(
        out["delegated_scope"]
            .as_str()
            .unwrap_or_default()
            .contains("Mail.Send"),
        "{out}"
    );
    assert_eq!(out["read_subject"], "Question 1", "{out}");
    assert_eq!(out["read_from"], "customer@example.net", "{out}");
    assert_eq!(out["read_body_type"], "html", "{out}");
    let updated = out["updated"].as_array().unwrap();
    assert_eq!(updated.len(), 1, "the read toggle comes back: {out}");
    assert_eq!(updated[0]["id"], out["read_id"]);
    assert_eq!(updated[0]["is_read"], true);
    assert!(updated[0]["subject"].is_null(), "as a partial item: {out}");

    // Transport takes the reply out of the Outbox after its delay (emulator time).
    let (status, body) = emu.post("/_emulator/clock", json!({"advance_secs": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = control_folder(&emu, SUPPORT, "sentitems").await;
    assert_eq!(sent.len(), 1, "the reply is in Sent Items: {sent:?}");
    assert_eq!(sent[0]["subject"], "RE: Question 1", "{sent:?}");
    assert_eq!(sent[0]["to"][0]["address"], "customer@example.net", "{sent:?}");
    let log = emu.requests().await;
    assert!(
        log.iter()
            .any(|r| r["path"].as_str().unwrap_or_default().ends_with("/messages/delta()")),
        "the SDK used the function-call form"
    );
    assert!(
        log.iter()
            .any(|r| r["path"] == format!("/v1.0/me/messages/{}/reply", out["replied_to"].as_str().unwrap())),
        "the reply went through /me"
    );
}
