//! `inboxd doctor`, the real binary against the emulator: every failure case of a set-up is
//! reported with its fix (and its Entra or Graph code), and a good set-up exits 0.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::addr;
use crate::support::delegated::{app_only, config, delegated, import, mint};
use crate::support::{CLIENT, Env, SECRET, SECRET_ENV, TENANT};

const BIN: &str = env!("CARGO_BIN_EXE_inboxd");
/// A hang guard for one doctor run, not a measure.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs `inboxd doctor --config PATH ARGS…` with the test secret in its environment.
async fn doctor(path: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("doctor")
        .arg("--config")
        .arg(path)
        .args(args)
        .env_clear()
        .env(SECRET_ENV, SECRET)
        .kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("doctor finishes")
        .expect("doctor runs")
}

/// `--json` run: the exit code and the report.
async fn doctor_json(path: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = doctor(path, &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The check `area subject: check` of a report.
fn find<'a>(report: &'a Value, subject: &str, check: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["subject"] == subject && c["check"] == check)
        .unwrap_or_else(|| panic!("no check {subject}: {check} in {report:#}"))
}

/// Asserts a check's outcome and that its detail and fix contain the given texts.
fn expect(report: &Value, subject: &str, check: &str, outcome: &str, detail: &[&str], fix: &[&str]) -> Value {
    let c = find(report, subject, check).clone();
    assert_eq!(c["outcome"], outcome, "{subject}: {check}: {c:#}");
    let d = c["detail"].as_str().unwrap_or_default();
    for text in detail {
        assert!(d.contains(text), "{subject}: {check}: detail lacks {text:?}: {c:#}");
    }
    let f = c["fix"].as_str().unwrap_or_default();
    for text in fix {
        assert!(f.contains(text), "{subject}: {check}: fix lacks {text:?}: {c:#}");
    }
    c
}

/// Imports a delegated grant through the real daemon's API, as an operator would, then stops
/// the daemon (its exit releases the store).
async fn import_grant(env: &Env, toml: &str, mailbox: &str) {
    let path = env.write_config(toml);
    let mut daemon = env.spawn_binary(&path, 0).await;
    let refresh = mint(env, TENANT, CLIENT, mailbox).await;
    let (status, body) = import(daemon.addr(), mailbox, &refresh).await;
    assert_eq!(status, 200, "import: {body}");
    daemon.sigterm();
    assert!(daemon.wait_exit(LIMIT).await.is_some(), "the daemon stops");
}

fn extra_app(name: &str, tenant: &str, client_id: &str, secret: &str, more: &str) -> String {
    format!(
        "\n[[apps]]\nname = \"{name}\"\ntenant_id = \"{tenant}\"\nclient_id = \"{client_id}\"\nclient_secret = \"dev:{secret}\"\n{more}"
    )
}

async fn register(env: &Env, client_id: &str, secret: &str, roles: &[&str]) {
    env.control(
        "/_emulator/apps",
        json!({"tenant_id": TENANT, "client_id": client_id, "client_secret": secret, "roles": roles}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_setup_passes_every_check_and_exits_0() {
    let env = Env::new().await;
    let (app_box, user) = (addr("doc-ok"), addr("doc-user"));
    env.mailboxes(&[app_box.clone(), user.clone()]).await;
    // A delegated grant, imported through the daemon's API as an operator would.
    let toml = config(&env, std::slice::from_ref(&app_box), &delegated(&user, "test"));
    import_grant(&env, &toml, &user).await;

    // A secret that expires in 10 days is a warning, not a failure.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(10))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let toml = toml.replacen(
        &format!("client_secret = \"env:{SECRET_ENV}\"\n"),
        &format!("client_secret = \"env:{SECRET_ENV}\"\nsecret_expires_at = \"{soon}\"\n"),
        1,
    );
    let path = env.write_config(&toml);
    let (code, report) = doctor_json(&path, &["--send-test-event"]).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    expect(&report, "test", "token", "ok", &[CLIENT], &[]);
    expect(
        &report,
        "test",
        "permissions",
        "ok",
        &["Mail.ReadWrite", "Mail.Send"],
        &[],
    );
    expect(&report, "test", "expiry", "warn", &["9 day"], &["new secret"]);
    expect(&report, &app_box, "read", "ok", &["inbox"], &[]);
    expect(&report, &app_box, "write", "ok", &["draft"], &[]);
    expect(&report, &user, "consent", "ok", &["Mail.ReadWrite", "Mail.Send"], &[]);
    expect(&report, &user, "read", "ok", &[], &[]);
    expect(&report, &user, "write", "ok", &[], &[]);
    expect(
        &report,
        "file",
        "accepts",
        "ok",
        &["inboxd.doctor_test.v1", "appended"],
        &[],
    );

    // The test event reached the sink; the drafts were deleted for good.
    let lines: Vec<Value> = std::fs::read_to_string(env.events_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        lines.iter().filter(|e| e["schema"] == "inboxd.doctor_test.v1").count(),
        1,
        "{lines:#?}"
    );
    for mailbox in [&app_box, &user] {
        for folder in ["drafts", "deleteditems"] {
            let left = env.folder_messages(mailbox, folder).await;
            assert!(left.is_empty(), "{mailbox} {folder} kept {left:#?}");
        }
    }

    // The text form: one line per check, and the verdict; --read-only creates no draft.
    let out = doctor(&path, &["--read-only"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("ok    mailbox {app_box}: read")), "{text}");
    assert!(text.contains(&format!("skip  mailbox {app_box}: write")), "{text}");
    assert!(text.contains("WARN  app test: expiry"), "{text}");
    assert!(text.contains("All needed checks passed"), "{text}");
    let draft_posts = env
        .requests()
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST" && r["path"].as_str().is_some_and(|p| p.ends_with("/messages")))
        .count();
    assert_eq!(draft_posts, 2, "one draft per mailbox, from the first run only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_registration_problems_are_reported_with_the_aadsts_code_and_the_fix() {
    let env = Env::new().await;
    const EXPIRED: &str = "1b2c3d4e-0000-4000-8000-00000000e001";
    const NO_SEND: &str = "1b2c3d4e-0000-4000-8000-00000000e002";
    const UNKNOWN: &str = "1b2c3d4e-0000-4000-8000-00000000e003";
    register(&env, EXPIRED, "expired-secret", &["Mail.ReadWrite", "Mail.Send"]).await;
    env.control(&format!("/_emulator/apps/{EXPIRED}/secret"), json!({"expired": true}))
        .await;
    register(&env, NO_SEND, "no-send-secret", &["Mail.ReadWrite", "Mail.Send"]).await;
    // An administrator removed Mail.Send from the app.
    env.control(
        &format!("/_emulator/apps/{NO_SEND}/roles"),
        json!({"roles": ["Mail.ReadWrite"]}),
    )
    .await;
    let boxes: Vec<String> = ["a-ghost", "a-unknown", "a-expired", "a-wrong", "a-nosend"]
        .iter()
        .map(|n| addr(n))
        .collect();
    env.mailboxes(&boxes).await;
    let mut extra = String::new();
    extra += &extra_app(
        "ghost",
        "0c0c0c0c-dead-4bad-8bad-0c0c0c0c0c0c",
        CLIENT,
        SECRET,
        &app_only(&boxes[0], "ghost"),
    );
    extra += &extra_app("unknown", TENANT, UNKNOWN, SECRET, &app_only(&boxes[1], "unknown"));
    extra += &extra_app(
        "expired",
        TENANT,
        EXPIRED,
        "expired-secret",
        &app_only(&boxes[2], "expired"),
    );
    extra += &extra_app(
        "wrong",
        TENANT,
        CLIENT,
        "the-secret-id-not-its-value",
        &app_only(&boxes[3], "wrong"),
    );
    extra += &extra_app(
        "nosend",
        TENANT,
        NO_SEND,
        "no-send-secret",
        &app_only(&boxes[4], "nosend"),
    );
    let path = env.write_config(&config(&env, &[], &extra));

    let (code, report) = doctor_json(&path, &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["passed"], false);
    let c = expect(
        &report,
        "ghost",
        "token",
        "fail",
        &["AADSTS90002", "tenant does not exist"],
        &["tenant_id"],
    );
    assert_eq!(c["aadsts"], 90002);
    let c = expect(&report, "unknown", "token", "fail", &["AADSTS700016"], &["client_id"]);
    assert_eq!(c["aadsts"], 700016);
    let c = expect(
        &report,
        "expired",
        "token",
        "fail",
        &["AADSTS7000222", "expired"],
        &["new client secret"],
    );
    assert_eq!(c["aadsts"], 7000222);
    let c = expect(
        &report,
        "wrong",
        "token",
        "fail",
        &["AADSTS7000215"],
        &["Value (not its Secret ID)"],
    );
    assert_eq!(c["aadsts"], 7000215);
    let consent = format!("{}/{TENANT}/adminconsent?client_id={NO_SEND}", env.url);
    expect(
        &report,
        "nosend",
        "permissions",
        "fail",
        &["lack Mail.Send"],
        &[&consent, "Mail.Send"],
    );
    // The mailboxes of an app without a token are not probed; the one of nosend is, and works.
    for m in &boxes[..4] {
        expect(&report, m, "read", "skip", &["no token"], &[]);
    }
    expect(&report, &boxes[4], "read", "ok", &[], &[]);
    // No secret appears in the report.
    let text = report.to_string();
    for secret in [
        SECRET,
        "expired-secret",
        "no-send-secret",
        "the-secret-id-not-its-value",
    ] {
        assert!(!text.contains(secret), "the report shows a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_problems_are_told_apart_each_with_its_fix() {
    let env = Env::new().await;
    const READ_ONLY_APP: &str = "1b2c3d4e-0000-4000-8000-00000000e004";
    register(&env, READ_ONLY_APP, "reader-secret", &["Mail.Read"]).await;
    let (missing, policy, rbac, throttled, reader) = (
        addr("m-missing"),
        addr("m-policy"),
        addr("m-rbac"),
        addr("m-throttled"),
        addr("m-reader"),
    );
    let (unconsented, revoked) = (addr("m-unconsented"), addr("m-revoked"));
    env.mailboxes(&[
        policy.clone(),
        rbac.clone(),
        throttled.clone(),
        reader.clone(),
        unconsented.clone(),
        revoked.clone(),
    ])
    .await;
    env.control(
        &format!("/_emulator/mailboxes/{policy}/access"),
        json!({"deny": true, "via": "policy"}),
    )
    .await;
    env.control(&format!("/_emulator/mailboxes/{rbac}/access"), json!({"deny": true}))
        .await;
    env.fault_for_mailbox(&throttled, json!({"status": 429, "retry_after": 7}))
        .await;
    let extra = format!(
        "{}{}{}",
        extra_app(
            "reader",
            TENANT,
            READ_ONLY_APP,
            "reader-secret",
            &app_only(&reader, "reader")
        ),
        delegated(&unconsented, "test"),
        delegated(&revoked, "test"),
    );
    let toml = config(
        &env,
        &[missing.clone(), policy.clone(), rbac.clone(), throttled.clone()],
        &extra,
    );
    // A grant that was given, then revoked (password reset): imported first, revoked after.
    import_grant(&env, &toml, &revoked).await;
    env.control("/_emulator/revoke", json!({"address": revoked, "aadsts": 50173}))
        .await;
    // The routing receiver is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let toml = toml.replacen(
        &format!("[sink]\ntype = \"file\"\npath = \"{}\"\n", env.events_path().display()),
        &format!(
            "[sink]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/inbound\"\nsigning_secret = \"dev:hook-secret\"\n"
        ),
        1,
    );
    assert!(toml.contains("type = \"webhook\""), "sink replaced");
    let path = env.write_config(&toml);

    let (code, report) = doctor_json(&path, &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    let c = expect(
        &report,
        &missing,
        "read",
        "fail",
        &["does not exist", "404"],
        &["check the address", "licence"],
    );
    assert!(c["graph_code"].is_string(), "{c:#}");
    for m in [&policy, &rbac] {
        let c = expect(
            &report,
            m,
            "read",
            "fail",
            &[
                "application access policy or an RBAC for Applications scope",
                "Access to OData is disabled",
            ],
            &[
                &format!(
                    "New-ManagementRoleAssignment -App {CLIENT} -Role \"Application Mail.ReadWrite\" -CustomResourceScope"
                ),
                &format!("Test-ServicePrincipalAuthorization -Identity {CLIENT} -Resource {m}"),
                &format!("New-ApplicationAccessPolicy -AppId {CLIENT}"),
                &format!("Test-ApplicationAccessPolicy -Identity {m} -AppId {CLIENT}"),
            ],
        );
        assert_eq!(c["graph_code"], "ErrorAccessDenied");
    }
    expect(
        &report,
        &throttled,
        "read",
        "fail",
        &["throttled", "Retry-After 7.0 s", "429"],
        &["wait"],
    );
    // Mail.Read reads but cannot write: the write check names the permission and the consent URL.
    expect(&report, &reader, "read", "ok", &[], &[]);
    expect(
        &report,
        &reader,
        "write",
        "fail",
        &["lacks the permission", "ErrorAccessDenied"],
        &[&format!("adminconsent?client_id={READ_ONLY_APP}")],
    );
    expect(
        &report,
        "reader",
        "permissions",
        "fail",
        &["lack Mail.ReadWrite and Mail.Send"],
        &[],
    );
    // Delegated: never consented, and consented then revoked.
    expect(
        &report,
        &unconsented,
        "consent",
        "fail",
        &["no consent has been given"],
        &[&format!("inboxd consent {unconsented}"), "/oauth/start?mailbox="],
    );
    let c = expect(
        &report,
        &revoked,
        "consent",
        "fail",
        &["AADSTS50173", "expired or was revoked"],
        &[&format!("inboxd consent {revoked}")],
    );
    assert_eq!(c["aadsts"], 50173);
    expect(&report, "webhook", "reachable", "fail", &["127.0.0.1"], &["sink.url"]);

    // The text form prints each fix under its line.
    let out = doctor(&path, &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .position(|l| l.starts_with(&format!("FAIL  mailbox {policy}: read")))
        .unwrap_or_else(|| panic!("no FAIL line for {policy}:\n{text}"));
    assert!(
        text.lines()
            .nth(line + 1)
            .is_some_and(|l| l.trim_start().starts_with("fix:")),
        "{text}"
    );
    assert!(text.contains("check(s) failed"), "{text}");
}

#[tokio::test]
async fn an_invalid_configuration_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"not an address\"\n").unwrap();
    let (code, report) = doctor_json(&path, &[]).await;
    assert_eq!(code, Some(78), "{report:#}");
    assert_eq!(report["passed"], false);
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["area"] == "config" && c["subject"] == "server.listen" && c["outcome"] == "fail"),
        "{report:#}"
    );
}

/// A routing receiver answering `status` to every POST; records the bodies and signatures.
#[derive(Default)]
struct Hook {
    status: std::sync::atomic::AtomicU16,
    received: std::sync::Mutex<Vec<(Value, Option<String>)>>,
}

async fn hook_serve(hook: std::sync::Arc<Hook>) -> String {
    use axum::extract::State;
    async fn inbound(
        State(h): State<std::sync::Arc<Hook>>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let signature = headers
            .get("x-inboxd-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        h.received
            .lock()
            .unwrap()
            .push((serde_json::from_slice(&body).unwrap_or(Value::Null), signature));
        axum::http::StatusCode::from_u16(h.status.load(std::sync::atomic::Ordering::SeqCst)).unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inbound", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/inbound", axum::routing::post(inbound))
        .with_state(hook);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sink_gets_a_signed_test_event_only_when_asked_and_a_refusal_is_reported() {
    let env = Env::new().await;
    let mailbox = addr("hook-box");
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    let hook = std::sync::Arc::new(Hook::default());
    hook.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let url = hook_serve(hook.clone()).await;
    let file_sink = format!("[sink]\ntype = \"file\"\npath = \"{}\"\n", env.events_path().display());
    let toml = config(&env, std::slice::from_ref(&mailbox), "");
    assert!(toml.contains(&file_sink), "generated config has the file sink");
    let toml = toml.replacen(
        &file_sink,
        &format!("[sink]\ntype = \"webhook\"\nurl = \"{url}\"\nsigning_secret = \"dev:doctor-hook-secret\"\n"),
        1,
    );
    let path = env.write_config(&toml);

    // Without --send-test-event nothing is posted.
    let (code, report) = doctor_json(&path, &["--read-only"]).await;
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, "webhook", "reachable", "ok", &["127.0.0.1"], &[]);
    expect(&report, "webhook", "accepts", "skip", &["--send-test-event"], &[]);
    assert!(
        hook.received.lock().unwrap().is_empty(),
        "no event without --send-test-event"
    );

    // With it: one signed event, acknowledged.
    let (code, report) = doctor_json(&path, &["--read-only", "--send-test-event"]).await;
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, "webhook", "accepts", "ok", &["inboxd.doctor_test.v1"], &[]);
    {
        let received = hook.received.lock().unwrap();
        assert_eq!(received.len(), 1, "{received:?}");
        assert_eq!(received[0].0["schema"], "inboxd.doctor_test.v1");
        assert_eq!(received[0].0["mailbox"], mailbox.as_str());
        assert!(
            received[0].1.as_deref().is_some_and(|s| s.starts_with("v1=")),
            "signed: {received:?}"
        );
    }

    // A receiver that refuses (a rotated signing secret, say) fails the check, with what to check.
    hook.status.store(401, std::sync::atomic::Ordering::SeqCst);
    let (code, report) = doctor_json(&path, &["--read-only", "--send-test-event"]).await;
    assert_eq!(code, Some(1), "{report:#}");
    expect(&report, "webhook", "accepts", "fail", &["401"], &["signing_secret"]);
    assert!(
        !report.to_string().contains("doctor-hook-secret"),
        "the signing secret is never shown"
    );
}

/// A PEM with an RSA key and a self-signed certificate valid until `not_after`; and the
/// certificate alone (what is uploaded to the app registration).
fn certificate(not_after: time::OffsetDateTime) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["doctor.inboxd.test".into()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = not_after;
    let cert = params.self_signed(&key).unwrap();
    (format!("{}{}", key.serialize_pem(), cert.pem()), cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_for_expiry_and_registration() {
    let env = Env::new().await;
    const SOON: &str = "1b2c3d4e-0000-4000-8000-00000000c001";
    const GONE: &str = "1b2c3d4e-0000-4000-8000-00000000c002";
    const OTHER: &str = "1b2c3d4e-0000-4000-8000-00000000c003";
    let now = time::OffsetDateTime::now_utc();
    let (soon_pem, soon_cert) = certificate(now + time::Duration::days(5));
    let (gone_pem, gone_cert) = certificate(now - time::Duration::days(2));
    let (other_pem, _) = certificate(now + time::Duration::days(365));
    let (_, registered_cert) = certificate(now + time::Duration::days(365));
    for (client, cert) in [(SOON, &soon_cert), (GONE, &gone_cert), (OTHER, &registered_cert)] {
        env.control(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_id": client, "certificate_pem": cert, "roles": ["Mail.ReadWrite", "Mail.Send"]}),
        )
        .await;
    }
    let mut extra = String::new();
    for (name, client, pem) in [
        ("soon", SOON, &soon_pem),
        ("gone", GONE, &gone_pem),
        ("other", OTHER, &other_pem),
    ] {
        let file = env.dir.path().join(format!("{name}.pem"));
        std::fs::write(&file, pem).unwrap();
        extra += &format!(
            "\n[[apps]]\nname = \"{name}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{client}\"\ncertificate = \"file:{}\"\n",
            file.display()
        );
    }
    let path = env.write_config(&config(&env, &[], &extra));

    let (code, report) = doctor_json(&path, &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    // Expiring soon: a warning; the certificate still gets a token.
    expect(
        &report,
        "soon",
        "expiry",
        "warn",
        &["expires in 4 day"],
        &["new secret or certificate"],
    );
    expect(&report, "soon", "token", "ok", &[], &[]);
    // Expired: a failure, whatever the token endpoint says.
    expect(
        &report,
        "gone",
        "expiry",
        "fail",
        &["expired at"],
        &["new secret or certificate"],
    );
    // Not the certificate the registration knows.
    let c = expect(
        &report,
        "other",
        "token",
        "fail",
        &["AADSTS700027"],
        &["upload the certificate"],
    );
    assert_eq!(c["aadsts"], 700027);
    assert!(
        !report.to_string().contains("PRIVATE KEY"),
        "no key material in the report"
    );
}
