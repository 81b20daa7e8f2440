//! Against the NATS server on 127.0.0.1:4222 (started by `.ci/run`); every test uses its own
//! stream and subjects and deletes the stream afterwards.

use std::time::Duration;

use async_nats::jetstream::stream::Config as StreamConfig;

use super::*;
use crate::config::{NatsAuth, NatsConnection, StreamSettings, Template};
use crate::event::{MAILBOX_STATE_SCHEMA, MailboxStateEvent, OUTBOUND_SCHEMA, OutboundEvent};
use crate::sink::file::tests::sample_event;

/// A stream name and subject prefix of its own, so tests never see each other's events.
struct Scratch {
    /// Stream name.
    stream: String,
    /// Subject prefix.
    prefix: String,
    /// For inspecting and cleaning up.
    js: jetstream::Context,
}

impl Scratch {
    async fn new() -> Scratch {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS must listen on 127.0.0.1:4222 (see .ci/run)");
        Scratch {
            stream: format!("T{id}"),
            prefix: format!("t{id}"),
            js: jetstream::new(client),
        }
    }

    fn config(&self, create_stream: bool) -> NatsSinkConfig {
        let t = |kind: &str| Template::for_tests(&format!("{}.{kind}.{{mailbox}}", self.prefix));
        NatsSinkConfig {
            connection: NatsConnection {
                url: "nats://127.0.0.1:4222".into(),
                auth: NatsAuth::None,
                ca_file: None,
                tls: false,
            },
            subjects: Topics {
                message: t("message"),
                outbound: t("outbound"),
                mailbox_state: t("mailbox_state"),
            },
            stream: self.stream.clone(),
            create_stream,
            stream_settings: StreamSettings {
                subjects: vec![format!("{}.>", self.prefix)],
                retention: Retention::Limits,
                duplicate_window: Duration::from_secs(120),
                max_messages: None,
            },
            timeout: Duration::from_secs(5),
        }
    }

    /// Every message in the stream, in order: subject, headers, payload.
    async fn messages(&self) -> Vec<(String, HeaderMap, Bytes)> {
        let stream = self.js.get_stream(&self.stream).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push((m.subject.to_string(), m.headers, m.payload));
            }
        }
        out
    }

    async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.stream).await;
    }
}

pub(crate) fn outbound_event() -> OutboundEvent {
    OutboundEvent {
        schema: OUTBOUND_SCHEMA.into(),
        event_id: "e-out".into(),
        dedup_key: "outbound:42:sent".into(),
        outbound_id: "42".into(),
        idempotency_key: "k1".into(),
        mailbox: "support@contoso.com".into(),
        kind: "reply".into(),
        status: "sent".into(),
        error: None,
        at: "2025-03-01T10:00:00Z".into(),
    }
}

fn state_event() -> MailboxStateEvent {
    MailboxStateEvent {
        schema: MAILBOX_STATE_SCHEMA.into(),
        event_id: "e-state".into(),
        dedup_key: "state:support@contoso.com:needs_reconsent:2025-03-01T10:00:00Z".into(),
        mailbox: "support@contoso.com".into(),
        from: "active".into(),
        state: "needs_reconsent".into(),
        reason: Some("refresh token revoked".into()),
        aadsts: Some(50173),
        consent_url: None,
        since: "2025-03-01T10:00:00Z".into(),
    }
}

#[tokio::test]
async fn every_event_reaches_the_stream_as_the_file_sink_writes_it() {
    let s = Scratch::new().await;
    let sink = NatsSink::open(&s.config(true)).await.unwrap();
    let events: Vec<_> = (0..20).map(sample_event).collect();
    assert!(sink.deliver(&events).await.iter().all(Result::is_ok));
    assert!(sink.deliver(&[outbound_event()]).await[0].is_ok());
    assert!(sink.deliver(&[state_event()]).await[0].is_ok());

    let stored = s.messages().await;
    assert_eq!(stored.len(), 22);
    // Byte for byte what the file sink writes for the same events, one line each.
    let dir = tempfile::tempdir().unwrap();
    let file = crate::sink::FileSink::open(dir.path().join("events.ndjson"), None)
        .await
        .unwrap();
    assert!(file.deliver(&events).await.iter().all(Result::is_ok));
    let written = std::fs::read(dir.path().join("events.ndjson")).unwrap();
    let lines: Vec<&[u8]> = written.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 20);
    for (line, (_, _, payload)) in lines.iter().zip(&stored) {
        assert_eq!(*line, payload.as_ref());
    }
    let token = "support@contoso%2Ecom";
    for (event, (subject, headers, payload)) in events.iter().zip(&stored) {
        assert_eq!(subject, &format!("{}.message.{token}", s.prefix));
        assert_eq!(payload.as_ref(), serde_json::to_vec(event).unwrap().as_slice());
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), event.dedup_key);
        assert_eq!(headers.get(EVENT_ID_HEADER).unwrap().as_str(), event.event_id);
        assert_eq!(headers.get(SCHEMA_HEADER).unwrap().as_str(), "inboxd.message.v1");
    }
    assert_eq!(stored[20].0, format!("{}.outbound.{token}", s.prefix));
    assert_eq!(stored[20].2.as_ref(), serde_json::to_vec(&outbound_event()).unwrap());
    assert_eq!(stored[21].0, format!("{}.mailbox_state.{token}", s.prefix));
    assert_eq!(stored[21].2.as_ref(), serde_json::to_vec(&state_event()).unwrap());
    s.cleanup().await;
}

#[tokio::test]
async fn a_replayed_batch_is_acknowledged_but_stored_once() {
    let s = Scratch::new().await;
    let sink = NatsSink::open(&s.config(true)).await.unwrap();
    let mut events: Vec<_> = (0..5).map(sample_event).collect();
    assert!(sink.deliver(&events).await.iter().all(Result::is_ok));
    // A redelivery after a crash has fresh event ids but the same dedup keys.
    for e in &mut events {
        e.event_id = uuid::Uuid::new_v4().to_string();
    }
    assert!(sink.deliver(&events).await.iter().all(Result::is_ok));
    assert_eq!(s.messages().await.len(), 5);
    s.cleanup().await;
}

#[tokio::test]
async fn a_missing_stream_is_a_clear_startup_error() {
    let s = Scratch::new().await;
    let err = NatsSink::open(&s.config(false)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("stream '{}' does not exist", s.stream)),
        "{err}"
    );
}

#[tokio::test]
async fn an_existing_stream_that_does_not_capture_the_subjects_is_refused() {
    let s = Scratch::new().await;
    s.js.create_stream(StreamConfig {
        name: s.stream.clone(),
        subjects: vec![format!("{}.message.*", s.prefix)],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = NatsSink::open(&s.config(false)).await.unwrap_err();
    assert!(err.to_string().contains("does not capture subject"), "{err}");
    s.cleanup().await;
}

#[tokio::test]
async fn a_full_stream_makes_the_sink_unavailable_and_loses_nothing() {
    let s = Scratch::new().await;
    let mut config = s.config(true);
    config.stream_settings.max_messages = Some(3);
    let sink = NatsSink::open(&config).await.unwrap();
    let events: Vec<_> = (0..5).map(sample_event).collect();
    let outcomes = sink.deliver(&events).await;
    assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
    for o in &outcomes[3..] {
        assert!(matches!(o, Err(SinkError::Unavailable(_))), "{o:?}");
    }
    // Routing drains the stream; the pending events then go through.
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    stream.purge().await.unwrap();
    assert!(sink.deliver(&events[3..]).await.iter().all(Result::is_ok));
    s.cleanup().await;
}

#[tokio::test]
async fn an_event_over_the_servers_max_payload_is_rejected_for_quarantine() {
    let s = Scratch::new().await;
    let sink = NatsSink::open(&s.config(true)).await.unwrap();
    let mut big = sample_event(1);
    big.body.text = Some("x".repeat(2 * 1024 * 1024));
    let outcomes = sink.deliver(&[sample_event(0), big]).await;
    assert!(outcomes[0].is_ok());
    assert!(
        matches!(&outcomes[1], Err(SinkError::Rejected(r)) if r.contains("max payload")),
        "{outcomes:?}"
    );
    s.cleanup().await;
}

#[test]
fn subject_patterns_match_like_nats() {
    assert!(subject_matches("a.*.c", "a.b.c"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(!subject_matches("a.b", "a.c"));
}

/// A `nats-server` of this test's own with TLS (a self-signed certificate) and a password;
/// killed on drop.
struct SecureServer {
    port: u16,
    ca_file: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SecureServer {
    async fn start(password: &str) -> SecureServer {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "--user",
                "inboxd",
                "--pass",
                password,
            ])
            .arg("-sd")
            .arg(dir.path().join("store"))
            .arg("--tls")
            .arg("--tlscert")
            .arg(&cert_file)
            .arg("--tlskey")
            .arg(&key_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (see .ci/services)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        SecureServer {
            port,
            ca_file: cert_file,
            child,
            _dir: dir,
        }
    }
}

impl Drop for SecureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tls_and_a_password_work_and_a_wrong_password_is_named_without_echoing_it() {
    let server = SecureServer::start("s3cret-nats-pw").await;
    let s = Scratch::new().await;
    let mut config = s.config(true);
    config.connection = NatsConnection {
        url: format!("tls://127.0.0.1:{}", server.port),
        auth: NatsAuth::UserPassword {
            user: "inboxd".into(),
            password: "s3cret-nats-pw".to_string().into(),
        },
        ca_file: Some(server.ca_file.clone()),
        tls: false,
    };
    let sink = NatsSink::open(&config).await.unwrap();
    assert!(sink.deliver(&[sample_event(0)]).await[0].is_ok());

    config.connection.auth = NatsAuth::UserPassword {
        user: "inboxd".into(),
        password: "wrong-password-value".to_string().into(),
    };
    let err = NatsSink::open(&config).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(!err.contains("wrong-password-value"), "the password leaked: {err}");

    // Without the certificate's root, TLS refuses the server.
    config.connection.auth = NatsAuth::UserPassword {
        user: "inboxd".into(),
        password: "s3cret-nats-pw".to_string().into(),
    };
    config.connection.ca_file = None;
    assert!(NatsSink::open(&config).await.is_err());
}
