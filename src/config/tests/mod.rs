//! What an operator sees: configs that load, and the list of problems for those that don't.

mod brokers;
mod notifications;
mod rules;
mod secrets;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

/// One app and one mailbox; appended keys land in `mailboxes[0]`.
pub(super) const BASE: &str = r#"
[[apps]]
name = "contoso"
tenant_id = "tenant"
client_id = "client"
client_secret = "env:CONTOSO_SECRET"

[[mailboxes]]
address = "support@contoso.com"
app = "contoso"
"#;

pub(super) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.entry("CONTOSO_SECRET".into())
        .or_insert_with(|| "s3cret-from-env".into());
    env
}

pub(super) fn load(toml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    from_sources(toml, &env(pairs), Path::new("."))
}

pub(super) fn ok(toml: &str, pairs: &[(&str, &str)]) -> Config {
    match load(toml, pairs) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// The problems as the operator reads them: `path: message` lines.
pub(super) fn lines(toml: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    match load(toml, pairs) {
        Ok(_) => panic!("expected errors, the config loaded"),
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

#[track_caller]
pub(super) fn assert_has(lines: &[String], path: &str, needle: &str) {
    let prefix = format!("{path}: ");
    assert!(
        lines.iter().any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "no error at `{path}` mentioning `{needle}` in:\n{}",
        lines.join("\n")
    );
}

#[track_caller]
pub(super) fn assert_only(toml: &str, pairs: &[(&str, &str)], path: &str, needle: &str) {
    let lines = lines(toml, pairs);
    assert_has(&lines, path, needle);
    assert_eq!(lines.len(), 1, "expected one error, got:\n{}", lines.join("\n"));
}

pub(super) fn mailbox(config: &Config, i: usize) -> &MailboxConfig {
    &config.mailboxes[i]
}
#[test]
fn a_file_with_several_mistakes_lists_all_of_them_with_their_paths() {
    let toml = r#"
[server]
listen = "localhost"
public_url = "http://inboxd.example.com"

[sink]
type = "webhook"
url = "https://routing.example/inbound"

[defaults]
poll_interval = "soon"

[[apps]]
name = "contoso"
tenant_id = "tenant"
client_id = "client"
client_secret = "hunter2"

[[mailboxes]]
address = "support@contoso.com"
app = "contoso"
pol_interval = "10s"

[[mailboxes]]
address = "Support@Contoso.com"
app = "fabrikam"
max_concurrent_requests = 8
"#;
    let lines = lines(toml, &[]);
    assert_has(&lines, "server.listen", "not a socket address");
    assert_has(&lines, "server.public_url", "https://");
    assert_has(&lines, "sink.signing_secret", "missing required key");
    assert_has(&lines, "defaults.poll_interval", "'soon' is not a duration");
    assert_has(&lines, "apps[0].client_secret", "literal");
    assert_has(&lines, "mailboxes[0].pol_interval", "did you mean `poll_interval`?");
    assert_has(
        &lines,
        "mailboxes[1].address",
        "duplicate mailbox address support@contoso.com",
    );
    assert_has(&lines, "mailboxes[1].app", "'fabrikam'");
    assert_has(&lines, "mailboxes[1].max_concurrent_requests", "between 1 and 4");
    assert_eq!(lines.len(), 9, "one line per problem:\n{}", lines.join("\n"));
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let config = ok(BASE, &[]);
    assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(20));
    assert!(config.server.api_tokens.is_empty());
    assert!(config.server.public_url.is_none());
    assert_eq!(config.store.url, "sqlite://./data/inboxd.db");
    assert!(config.store.encryption_key.is_none());
    assert_eq!(
        config.microsoft.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(config.microsoft.graph_url.as_str(), "https://graph.microsoft.com/");
    assert!(
        matches!(&config.sink, SinkConfig::File { path, max_bytes: None } if path == Path::new("./data/inbound.ndjson"))
    );
    let m = mailbox(&config, 0);
    assert_eq!(m.access, Access::App);
    assert_eq!(m.poll_interval, Duration::from_secs(30));
    assert_eq!(m.folders, vec!["inbox".to_string()]);
    assert_eq!(m.after_ingest, AfterIngest::None);
    assert_eq!(m.max_inline_attachment_bytes, 3_000_000);
    assert_eq!(m.max_concurrent_requests, 4);
    assert_eq!(m.start_at, StartAt::Now);
    assert!(m.enabled);
    assert!(m.fallback_app.is_none());
}

#[test]
fn mailbox_keys_override_the_defaults_section() {
    let toml = format!(
        "[defaults]\npoll_interval = \"1m\"\nfolders = [\"inbox\", \"archive\"]\nmax_concurrent_requests = 2\n{BASE}\n\
         poll_interval = \"1h30m\"\nenabled = false\n\n\
         [[mailboxes]]\naddress = \"sales@contoso.com\"\napp = \"contoso\"\n"
    );
    let config = ok(&toml, &[]);
    let (support, sales) = (mailbox(&config, 0), mailbox(&config, 1));
    assert_eq!(support.poll_interval, Duration::from_secs(90 * 60));
    assert!(!support.enabled);
    assert_eq!(sales.poll_interval, Duration::from_secs(60));
    assert!(sales.enabled);
    for m in [support, sales] {
        assert_eq!(m.folders, vec!["inbox".to_string(), "archive".to_string()]);
        assert_eq!(m.max_concurrent_requests, 2);
    }
}

#[test]
fn environment_overrides_apply() {
    let config = ok(
        BASE,
        &[
            ("INBOXD__SERVER__LISTEN", "127.0.0.1:9090"),
            ("INBOXD__SINK__PATH", "/var/lib/inboxd/out.ndjson"),
            ("INBOXD__SINK__MAX_BYTES", "1_000_000"),
            ("INBOXD__DEFAULTS__POLL_INTERVAL", "5m"),
            ("INBOXD__DEFAULTS__FOLDERS", "inbox, archive"),
            ("INBOXD__MAILBOXES__0__POLL_INTERVAL", "10s"),
            ("INBOXD__MAILBOXES__0__ENABLED", "false"),
            ("INBOXD__MAILBOXES__0__MAX_CONCURRENT_REQUESTS", "3"),
            (
                "INBOXD__SERVER__API_TOKENS",
                r#"["env:TOKEN_A","file-less-literal-from-env"]"#,
            ),
            ("TOKEN_A", "token-a"),
            ("INBOXD_STORE_KEY", "single underscore: a secret, not an override"),
        ],
    );
    assert_eq!(config.server.listen, "127.0.0.1:9090".parse().unwrap());
    assert!(
        matches!(&config.sink, SinkConfig::File { path, max_bytes: Some(1_000_000) } if path == Path::new("/var/lib/inboxd/out.ndjson"))
    );
    let m = mailbox(&config, 0);
    assert_eq!(m.poll_interval, Duration::from_secs(10));
    assert_eq!(m.folders, vec!["inbox".to_string(), "archive".to_string()]);
    assert!(!m.enabled);
    assert_eq!(m.max_concurrent_requests, 3);
    let tokens: Vec<&str> = config.server.api_tokens.act.iter().map(|t| t.expose_secret()).collect();
    assert_eq!(tokens, ["token-a", "file-less-literal-from-env"]);
}

#[test]
fn environment_can_add_mailboxes_by_index_in_numeric_order() {
    let mut pairs = Vec::new();
    let names: Vec<(String, String, String)> = (1..=11)
        .map(|i| {
            (
                format!("INBOXD__MAILBOXES__{i}__ADDRESS"),
                format!("INBOXD__MAILBOXES__{i}__APP"),
                format!("box{i}@contoso.com"),
            )
        })
        .collect();
    for (address_var, app_var, address) in &names {
        pairs.push((address_var.as_str(), address.as_str()));
        pairs.push((app_var.as_str(), "contoso"));
    }
    let config = ok(BASE, &pairs);
    assert_eq!(config.mailboxes.len(), 12);
    assert_eq!(mailbox(&config, 11).address.as_str(), "box11@contoso.com");
}

#[test]
fn environment_override_problems_name_the_variable() {
    let lines = lines(
        BASE,
        &[
            ("INBOXD__MAILBOXES__3__POLL_INTERVAL", "10s"),
            ("INBOXD__SERVER__LISTN", "0.0.0.0:1"),
            ("INBOXD__DEFAULTS__POLL_INTERVAL", "fast"),
            ("INBOXD__SERVER____LISTEN", "x"),
        ],
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INBOXD__MAILBOXES__3__POLL_INTERVAL") && l.contains("past the end"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INBOXD__SERVER____LISTEN") && l.contains("INBOXD__SECTION__KEY"))
    );
    assert_has(
        &lines,
        "server.listn",
        "did you mean `listen`? (set by INBOXD__SERVER__LISTN)",
    );
    assert_has(
        &lines,
        "defaults.poll_interval",
        "(set by INBOXD__DEFAULTS__POLL_INTERVAL)",
    );
    assert_eq!(lines.len(), 4, "{}", lines.join("\n"));
}

#[test]
fn unknown_keys_and_sections_are_errors_with_suggestions() {
    let toml = format!("[sever]\nlisten = \"0.0.0.0:1\"\n[sink]\npaht = \"x\"\n{BASE}\nbogus = 1\n");
    let lines = lines(&toml, &[]);
    assert_has(&lines, "sever", "did you mean `server`?");
    assert_has(&lines, "sink.paht", "did you mean `path`?");
    assert_has(
        &lines,
        "mailboxes[0].bogus",
        "unknown key; expected one of: address, app",
    );
    assert_eq!(lines.len(), 3, "{}", lines.join("\n"));
}

#[test]
fn missing_required_keys_are_reported() {
    let toml = "[[apps]]\nclient_secret = \"env:CONTOSO_SECRET\"\n[[mailboxes]]\nenabled = true\n";
    let lines = lines(toml, &[]);
    for path in [
        "apps[0].name",
        "apps[0].tenant_id",
        "apps[0].client_id",
        "mailboxes[0].address",
        "mailboxes[0].app",
    ] {
        assert_has(&lines, path, "missing required key");
    }
    assert_eq!(lines.len(), 5, "{}", lines.join("\n"));
}

#[test]
fn wrong_types_are_reported() {
    let toml =
        format!("[server]\nlisten = 8080\napi_tokens = \"env:X\"\n[store]\nurl = true\n{BASE}\nfolders = \"inbox\"\n");
    let lines = lines(&toml, &[]);
    assert_has(&lines, "server.listen", "found an integer");
    assert_has(&lines, "server.api_tokens", "expected an array, found a string");
    assert_has(&lines, "store.url", "expected a string, found a boolean");
    assert_has(&lines, "mailboxes[0].folders", "expected an array");
    assert_eq!(lines.len(), 4, "{}", lines.join("\n"));
    assert_only(
        "[apps]\nname = \"x\"\n",
        &[],
        "apps",
        "expected an array of tables (write [[apps]] for each entry)",
    );
}

#[test]
fn a_toml_syntax_error_is_one_line_with_its_position() {
    let errors = load("[server]\nlisten = \"0.0.0.0:1\n", &[]).unwrap_err();
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("invalid TOML: line 2"), "{text}");
}

#[test]
fn the_shipped_configs_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let demo = std::fs::read_to_string(dir.join("demo.toml")).unwrap();
    let config = from_sources(&demo, &HashMap::new(), &dir).unwrap_or_else(|e| panic!("demo.toml:\n{e}"));
    let addresses: Vec<&str> = config.mailboxes.iter().map(|m| m.address.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "support@contoso.test",
            "sales@contoso.test",
            "billing@contoso.test",
            "escalations@contoso.test"
        ]
    );
    assert_eq!(config.mailboxes[3].access, crate::config::Access::Delegated);
    assert_eq!(config.apps[0].name.0, "demo");

    let example = std::fs::read_to_string(dir.join("inboxd.example.toml")).unwrap();
    let pem = tempfile::tempdir().unwrap();
    let pem_path = pem.path().join("contoso-daemon.pem");
    std::fs::write(&pem_path, "-----BEGIN PRIVATE KEY-----\nA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n").unwrap();
    let example = example.replace("/run/secrets/contoso-daemon.pem", &pem_path.to_string_lossy());
    let env: HashMap<String, String> = [
        ("INBOXD_API_TOKEN", "t"),
        ("INBOXD_STORE_KEY", "k"),
        ("CONTOSO_CLIENT_SECRET", "s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = from_sources(&example, &env, &dir).unwrap_or_else(|e| panic!("inboxd.example.toml:\n{e}"));
    assert_eq!(config.mailboxes.len(), 2);
}

proptest::proptest! {
    #[test]
    fn any_poll_interval_is_accepted_within_bounds_or_refused_by_key(text in "[0-9]{0,22}[a-z ]{0,6}|\\PC{0,12}") {
        let toml = format!("{BASE}poll_interval = {}\n", toml_string(&text));
        match load(&toml, &[]) {
            Ok(config) => {
                let interval = config.mailboxes[0].poll_interval;
                proptest::prop_assert!(!interval.is_zero() && interval <= Duration::from_secs(24 * 3600));
            }
            Err(errors) => proptest::prop_assert!(
                errors.iter().any(|e| e.path == "mailboxes[0].poll_interval"),
                "{}", errors
            ),
        }
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
