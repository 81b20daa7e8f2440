//! The real binary: `check-config` lists every problem by key path, `run` refuses a bad
//! configuration before binding a port, and the shipped example checks clean.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inboxd");

/// Runs the binary with a clean environment plus `vars`, in `dir`, for at most 20 s.
fn inboxd(args: &[&str], vars: &[(&str, &str)], dir: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inboxd starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "inboxd {args:?} still running after 20 s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        #[allow(clippy::disallowed_methods, reason = "a synchronous test polling a child process")]
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exit code of a bad configuration (sysexits `EX_CONFIG`), for `run` and `check-config`.
const EXIT_CONFIG: i32 = 78;

/// Asserts the process exited with [`EXIT_CONFIG`] (not a crash, a signal or a plain failure).
fn assert_config_exit(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "expected exit code {EXIT_CONFIG} (bad configuration), got {:?}:\n{}",
        out.status,
        text(out)
    );
}

const LITERAL_SECRET: &str = "hunter2-literal-in-the-file";

#[test]
fn check_config_lists_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[store]
url = "sqlite://./inboxd.db"

[microsoft]
authority_host = "https://login.microsoftonline.com"
graph_url = "http://graph.example.com"

[sink]
type = "file"
path = "./inbound.ndjson"

[defaults]
pol_interval = "30s"

[[apps]]
name = "contoso"
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "{LITERAL_SECRET}"

[[mailboxes]]
address = "support@contoso.com"
app = "contoso"
poll_interval = "every now and then"

[[mailboxes]]
address = "sales@contoso.com"
app = "fabrikam"
"#
        ),
    )
    .unwrap();
    let out = inboxd(&["check-config", "--config", path.to_str().unwrap()], &[], dir.path());
    let output = text(&out);
    assert_config_exit(&out);
    let lines: Vec<&str> = output.lines().collect();
    for key in [
        "defaults.pol_interval",
        "mailboxes[0].poll_interval",
        "apps[0].client_secret",
        "microsoft.graph_url",
        "mailboxes[1].app",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(key)),
            "problem at `{key}` not reported:\n{output}"
        );
    }
    assert!(
        !output.contains(LITERAL_SECRET),
        "the output repeats the literal secret:\n{output}"
    );
    assert!(!dir.path().join("inboxd.db").exists(), "check-config created the store");
}

#[test]
fn run_refuses_a_plain_http_graph_url_before_binding_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let path = dir.path().join("inboxd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[store]
url = "sqlite://./inboxd.db"

[microsoft]
authority_host = "https://login.microsoftonline.com"
graph_url = "http://graph.example.com"

[sink]
type = "file"
path = "./inbound.ndjson"

[[apps]]
name = "contoso"
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "env:CONTOSO_CLIENT_SECRET"

[[mailboxes]]
address = "support@contoso.com"
app = "contoso"
"#
        ),
    )
    .unwrap();
    // The same file with an https:// graph_url is fine, so the refusal is about that key.
    let fixed = dir.path().join("fixed.toml");
    std::fs::write(
        &fixed,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("http://graph.example.com", "https://graph.example.com"),
    )
    .unwrap();
    let vars = [("CONTOSO_CLIENT_SECRET", "s3cr3t-from-env")];
    let ok = inboxd(
        &["check-config", "--config", fixed.to_str().unwrap()],
        &vars,
        dir.path(),
    );
    assert!(ok.status.success(), "the fixed config should pass:\n{}", text(&ok));

    let out = inboxd(&["run", "--config", path.to_str().unwrap()], &vars, dir.path());
    let output = text(&out);
    assert_config_exit(&out);
    assert!(
        output.contains("microsoft.graph_url"),
        "the refusal does not name the key:\n{output}"
    );
    assert!(!output.contains("listening on"), "a port was bound:\n{output}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port {port} is taken"
    );
    assert!(
        !dir.path().join("inboxd.db").exists(),
        "the store was created before the refusal"
    );
    assert!(!output.contains("s3cr3t-from-env"));
}

#[test]
fn bench_compare_prints_the_ratio_of_each_figure_two_reports_share() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.json");
    let new = dir.path().join("new.json");
    std::fs::write(
        &old,
        r#"{"scenario": "backlog", "messages_per_s": 800, "peak_rss_mb": 120.5, "command": "x"}"#,
    )
    .unwrap();
    std::fs::write(
        &new,
        r#"{"scenario": "backlog", "messages_per_s": 1000, "peak_rss_mb": 60.25}"#,
    )
    .unwrap();
    let (o, n) = (old.to_str().unwrap(), new.to_str().unwrap());
    let out = inboxd(&["bench", "compare", o, n], &[], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |f: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(f))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("backlog.messages_per_s").ends_with("1.250"), "{stdout}");
    assert!(line("backlog.peak_rss_mb").ends_with("0.500"), "{stdout}");

    let out = inboxd(&["bench", "compare", o], &[], dir.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("two report files"), "{}", text(&out));
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    // The example's certificate app reads /run/secrets/…; point it at a real PEM pair.
    let certified = rcgen::generate_simple_self_signed(vec!["inboxd.test".to_string()]).unwrap();
    let pem = dir.path().join("contoso-daemon.pem");
    std::fs::write(
        &pem,
        format!("{}{}", certified.signing_key.serialize_pem(), certified.cert.pem()),
    )
    .unwrap();
    let certificate = format!("file:{}", pem.display());
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/inboxd.example.toml");
    let vars = [
        ("INBOXD_API_TOKEN", "api-token-from-env"),
        ("INBOXD_STORE_KEY", "store-key-from-env-0123456789abcdef"),
        ("CONTOSO_CLIENT_SECRET", "contoso-secret-from-env"),
        ("INBOXD__APPS__1__CERTIFICATE", certificate.as_str()),
    ];
    let out = inboxd(&["check-config", "--config", example], &vars, dir.path());
    assert!(
        out.status.success(),
        "the example config does not check clean:\n{}",
        text(&out)
    );

    // Without its environment it must not check clean, and must say which keys lack what.
    let out = inboxd(&["check-config", "--config", example], &vars[3..], dir.path());
    let output = text(&out);
    assert_config_exit(&out);
    for key in ["server.api_tokens", "store.encryption_key", "apps[0].client_secret"] {
        assert!(
            output.contains(key),
            "missing env var for `{key}` not reported:\n{output}"
        );
    }
}

#[test]
fn run_and_check_config_exit_78_on_a_file_that_is_not_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let unparseable = dir.path().join("bad.toml");
    std::fs::write(&unparseable, "[server\nlisten = 127.0.0.1:0\n").unwrap();
    let missing = dir.path().join("nowhere.toml");
    for config in [&unparseable, &missing] {
        for command in ["check-config", "run"] {
            let out = inboxd(&[command, "--config", config.to_str().unwrap()], &[], dir.path());
            assert_config_exit(&out);
            let output = text(&out);
            assert!(
                !output.contains("listening on"),
                "`{command}` bound a port with {}:\n{output}",
                config.display()
            );
        }
    }
    assert!(!dir.path().join("inboxd.db").exists(), "a store was created");
}

#[tokio::test]
async fn the_demo_delivers_replies_and_completes_the_consent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    // The demo stops by itself at its `--for` deadline at the latest.
    let run = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["demo", "--for", "60s", "--data"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the demo finishes within its own deadline")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Delivered 8 of 8 messages"), "{stdout}");
    // It says what it does as it happens, before the summary.
    let summary = stdout.find("Delivered 8 of 8 messages").unwrap();
    for step in [
        "s] Emulator up at",
        "s] Daemon started",
        "messages to the event file so far.",
        "s] Stopping the daemon.",
    ] {
        let at = stdout
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} line: {stdout}"));
        assert!(at < summary, "{step:?} comes after the summary: {stdout}");
    }
    assert!(stdout.contains("/reply: sent"), "{stdout}");
    assert!(
        stdout.contains("after consent: state \"active\", 1 message(s) delivered"),
        "the consent story completes: {stdout}"
    );
}
