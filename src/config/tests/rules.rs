//! One case (or a few) per validation rule.

use std::time::Duration;

use super::{BASE, assert_has, assert_only, lines, mailbox, ok};
use crate::config::*;

#[test]
fn durations_are_human_strings_and_poll_interval_is_not_zero() {
    assert_only(
        &format!("{BASE}poll_interval = \"0s\""),
        &[],
        "mailboxes[0].poll_interval",
        "longer than 0s",
    );
    assert_only(
        &format!("{BASE}poll_interval = 30"),
        &[],
        "mailboxes[0].poll_interval",
        "duration such as \"30s\"",
    );
    assert_only(
        "[server]\nshutdown_grace = \"20 parsecs\"",
        &[],
        "server.shutdown_grace",
        "is not a duration",
    );
    assert_only(
        "[sink]\ntype = \"webhook\"\nurl = \"https://r.example\"\nsigning_secret = \"dev:k\"\ntimeout = \"0s\"",
        &[],
        "sink.timeout",
        "longer than 0s",
    );
    let config = ok("[server]\nshutdown_grace = \"0s\"", &[]);
    assert_eq!(config.server.shutdown_grace, Duration::ZERO);
}

#[test]
fn https_is_required_except_on_loopback() {
    let keys = [
        ("microsoft", "authority_host"),
        ("microsoft", "graph_url"),
        ("server", "public_url"),
    ];
    for (section, key) in keys {
        for url in [
            "http://127.0.0.1:0",
            "http://127.8.9.10:8443",
            "http://[::1]:1",
            "http://localhost:8080",
            "https://login.example",
        ] {
            ok(&format!("[{section}]\n{key} = \"{url}\"\n"), &[]);
        }
        for url in ["http://login.example", "http://10.0.0.1", "ftp://login.example"] {
            assert_only(
                &format!("[{section}]\n{key} = \"{url}\"\n"),
                &[],
                &format!("{section}.{key}"),
                "https://",
            );
        }
    }
    let webhook = "[sink]\ntype = \"webhook\"\nsigning_secret = \"dev:k\"\nurl = ";
    ok(&format!("{webhook}\"http://127.0.0.1:9000/in\""), &[]);
    assert_only(
        &format!("{webhook}\"http://routing.example/in\""),
        &[],
        "sink.url",
        "must use https://",
    );
}

#[test]
fn delegated_access_needs_the_store_encryption_key() {
    let delegated = format!("{PUBLIC}{BASE}access = \"delegated\"\n");
    assert_only(
        &delegated,
        &[],
        "store.encryption_key",
        "mailboxes[0] use access = \"delegated\"",
    );
    let config = ok(
        &format!("[store]\nencryption_key = \"env:KEY\"\n{PUBLIC}{BASE}access = \"delegated\"\n"),
        &[("KEY", "k")],
    );
    assert_eq!(mailbox(&config, 0).access, Access::Delegated);
}

/// Where browsers reach inboxd: needed with delegated mailboxes when the daemon listens on all
/// addresses.
const PUBLIC: &str = "[server]\npublic_url = \"https://inboxd.example.com\"\n";

#[test]
fn public_url_is_required_for_delegated_mailboxes_on_an_unspecified_listen_address() {
    let delegated = format!("[store]\nencryption_key = \"dev:k\"\n{BASE}access = \"delegated\"\n");
    assert_only(
        &delegated,
        &[],
        "server.public_url",
        "required with a delegated mailbox",
    );
    ok(&format!("{PUBLIC}{delegated}"), &[]);
    let loopback = format!("[server]\nlisten = \"127.0.0.1:8080\"\n{delegated}");
    ok(&loopback, &[]);
    ok(BASE, &[]);
}

#[test]
fn fallback_app_is_for_delegated_mailboxes_only() {
    assert_only(
        &format!("{BASE}fallback_app = \"contoso\"\n"),
        &[],
        "mailboxes[0].fallback_app",
        "only to access = \"delegated\"",
    );
    let delegated =
        format!("[store]\nencryption_key = \"dev:k\"\n{PUBLIC}{BASE}access = \"delegated\"\nfallback_app = ");
    let config = ok(&format!("{delegated}\"contoso\""), &[]);
    assert_eq!(
        mailbox(&config, 0).fallback_app,
        Some(crate::domain::AppName("contoso".into()))
    );
    assert_only(
        &format!("{delegated}\"nope\""),
        &[],
        "mailboxes[0].fallback_app",
        "'nope', which is not configured",
    );
}

#[test]
fn after_ingest_is_none_mark_read_or_move() {
    let cases = [
        ("none", AfterIngest::None),
        ("mark_read", AfterIngest::MarkRead),
        ("move:Processed", AfterIngest::Move("Processed".into())),
    ];
    for (text, expected) in cases {
        let config = ok(&format!("{BASE}after_ingest = \"{text}\""), &[]);
        assert_eq!(mailbox(&config, 0).after_ingest, expected);
    }
    assert_only(
        &format!("{BASE}after_ingest = \"delete\""),
        &[],
        "mailboxes[0].after_ingest",
        "'delete' is not",
    );
    assert_only(
        &format!("{BASE}after_ingest = \"move:\""),
        &[],
        "mailboxes[0].after_ingest",
        "needs a folder",
    );
}

#[test]
fn start_at_is_now_all_or_an_rfc3339_time() {
    assert_eq!(
        mailbox(&ok(&format!("{BASE}start_at = \"all\""), &[]), 0).start_at,
        StartAt::All
    );
    let since = ok(&format!("{BASE}start_at = \"2024-05-01T08:00:00+02:00\""), &[]);
    assert!(matches!(mailbox(&since, 0).start_at, StartAt::Since(t) if t.unix_timestamp() == 1_714_543_200));
    // A bare TOML date-time works too.
    let bare = ok(&format!("{BASE}start_at = 2024-05-01T06:00:00Z"), &[]);
    assert_eq!(mailbox(&bare, 0).start_at, mailbox(&since, 0).start_at);
    assert_only(
        &format!("{BASE}start_at = \"yesterday\""),
        &[],
        "mailboxes[0].start_at",
        "RFC 3339",
    );
}

#[test]
fn folders_must_not_be_empty() {
    assert_only(
        &format!("{BASE}folders = []"),
        &[],
        "mailboxes[0].folders",
        "at least one folder",
    );
    assert_only(
        "[defaults]\nfolders = [\"inbox\", \"\"]",
        &[],
        "defaults.folders[1]",
        "must not be empty",
    );
    assert_only(
        &format!("{BASE}folders = [\"inbox\", \"Inbox\"]"),
        &[],
        "mailboxes[0].folders[1]",
        "listed twice",
    );
}

#[test]
fn max_concurrent_requests_is_between_1_and_4() {
    assert_eq!(
        mailbox(&ok(&format!("{BASE}max_concurrent_requests = 1"), &[]), 0).max_concurrent_requests,
        1
    );
    assert_only(
        "[defaults]\nmax_concurrent_requests = 0",
        &[],
        "defaults.max_concurrent_requests",
        "between 1 and 4",
    );
    assert_only(
        &format!("{BASE}max_concurrent_requests = 5"),
        &[],
        "mailboxes[0].max_concurrent_requests",
        "found 5",
    );
}

#[test]
fn sink_type_is_file_or_webhook_with_its_own_keys() {
    assert_only(
        "[sink]\ntype = \"kafka\"\npath = \"x\"",
        &[],
        "sink.type",
        "'kafka' is not a sink type",
    );
    let lines = lines("[sink]\ntype = \"webhook\"\npath = \"./x\"", &[]);
    assert_has(&lines, "sink.url", "missing required key");
    assert_has(&lines, "sink.signing_secret", "missing required key");
    assert_has(&lines, "sink.path", "applies only to type = \"file\"");
    assert_only(
        "[sink]\nsigning_secret = \"dev:k\"",
        &[],
        "sink.signing_secret",
        "only to type = \"webhook\"",
    );
    let config = ok(
        "[sink]\ntype = \"webhook\"\nurl = \"https://routing.example/in\"\nsigning_secret = \"env:SIGN\"",
        &[("SIGN", "k")],
    );
    assert!(matches!(&config.sink, SinkConfig::Webhook { timeout, .. } if *timeout == Duration::from_secs(10)));
}

#[test]
fn listen_must_be_a_socket_address() {
    assert_only(
        "[server]\nlisten = \"inboxd:8080\"",
        &[],
        "server.listen",
        "not a socket address",
    );
    assert_eq!(
        ok("[server]\nlisten = \"[::1]:0\"", &[]).server.listen,
        "[::1]:0".parse().unwrap()
    );
}

#[test]
fn the_in_flight_budget_has_a_floor_and_a_default() {
    let pairs = [("CONTOSO_SECRET", "s")];
    assert_eq!(ok(BASE, &pairs).microsoft.in_flight_bytes, 64 << 20);
    let set = ok(&format!("[microsoft]\nin_flight_bytes = 134_217_728\n{BASE}"), &pairs);
    assert_eq!(set.microsoft.in_flight_bytes, 128 << 20);
    assert_only(
        &format!("[microsoft]\nin_flight_bytes = 1000\n{BASE}"),
        &pairs,
        "microsoft.in_flight_bytes",
        "4194304",
    );
}
