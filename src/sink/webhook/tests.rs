use crate::event::MessageEvent;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::*;
use crate::sink::file::tests::sample_event;

const SECRET: &str = "whsec-test-NEVER-PRINT-ME-42";

/// What the receiver answers to one request.
#[derive(Clone)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    body: &'static str,
    /// Hold the answer this long (to trip the client's timeout).
    delay: Duration,
    /// `Location` header (for redirects).
    location: Option<&'static str>,
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        retry_after: None,
        body: "",
        delay: Duration::ZERO,
        location: None,
    }
}

/// One request the receiver saw.
#[derive(Clone)]
struct Seen {
    headers: AxumHeaders,
    body: Bytes,
    at: Instant,
}

/// A real HTTP receiver on 127.0.0.1:0 that records requests and answers from a script
/// per `X-Inboxd-Dedup-Key` (200 once a script runs out).
#[derive(Default)]
struct Receiver {
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
    /// When set, each request is held until this turns true.
    gate: Option<watch::Receiver<bool>>,
    /// Requests held at the gate now, and the most ever held at once.
    in_flight: Mutex<(usize, usize)>,
    /// Requests that reached the login page a redirect points to.
    login_visits: std::sync::atomic::AtomicUsize,
}

impl Receiver {
    fn script(&self, key: &str, replies: Vec<Reply>) {
        self.script.lock().unwrap().insert(key.to_owned(), replies.into());
    }

    fn seen_for(&self, key: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.headers[DEDUP_KEY_HEADER] == key)
            .cloned()
            .collect()
    }

    fn in_flight(&self) -> (usize, usize) {
        *self.in_flight.lock().unwrap()
    }
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: AxumHeaders, body: Bytes) -> Response {
    let key = headers
        .get(DEDUP_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    rx.seen.lock().unwrap().push(Seen {
        headers,
        body,
        at: Instant::now(),
    });
    if let Some(gate) = &rx.gate {
        {
            let mut f = rx.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        let _ = gate.clone().wait_for(|open| *open).await;
        rx.in_flight.lock().unwrap().0 -= 1;
    }
    let reply = rx
        .script
        .lock()
        .unwrap()
        .get_mut(&key)
        .and_then(VecDeque::pop_front)
        .unwrap_or(status(200));
    tokio::time::sleep(reply.delay).await;
    let mut response = (AxumStatus::from_u16(reply.status).unwrap(), reply.body).into_response();
    if let Some(ra) = reply.retry_after {
        response.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    if let Some(location) = reply.location {
        response.headers_mut().insert("location", location.parse().unwrap());
    }
    response
}

/// The login page an auth proxy redirects to: answers 200 to anything, counts its visitors.
async fn login_page(State(rx): State<Arc<Receiver>>) -> &'static str {
    rx.login_visits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    "<html>please sign in</html>"
}

async fn serve(rx: Receiver) -> (Arc<Receiver>, Url) {
    let rx = Arc::new(rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/inbound", listener.local_addr().unwrap())).unwrap();
    let app = Router::new()
        .route("/inbound", axum::routing::post(receive))
        .route("/login", axum::routing::any(login_page))
        .with_state(Arc::clone(&rx));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, url)
}

fn sink(url: Url, timeout: Duration) -> WebhookSink {
    WebhookSink::new(reqwest::Client::new(), url, SecretString::from(SECRET), timeout)
        .with_min_delay(Duration::from_millis(1))
}

fn key(n: u32) -> String {
    sample_event(n).dedup_key
}

/// What a receiver would do: recompute the HMAC over `<timestamp>.<raw body>`.
fn verify(seen: &Seen) -> bool {
    let timestamp = seen.headers[TIMESTAMP_HEADER].to_str().unwrap();
    let sig = seen.headers[SIGNATURE_HEADER]
        .to_str()
        .unwrap()
        .strip_prefix("v1=")
        .unwrap();
    let tag: Vec<u8> = (0..sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&sig[i..i + 2], 16).unwrap())
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut msg = format!("{timestamp}.").into_bytes();
    msg.extend_from_slice(&seen.body);
    hmac::verify(&key, &msg, &tag).is_ok()
}

fn assert_secret_free(outcomes: &[Result<(), SinkError>]) {
    for outcome in outcomes {
        if let Err(e) = outcome {
            assert!(
                !e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET),
                "{e:?}"
            );
        }
    }
}

#[tokio::test]
async fn signed_events_are_acknowledged_on_2xx() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(&key(1), vec![status(201)]);
    rx.script(&key(2), vec![status(204)]);
    let events: Vec<_> = (0..3).map(sample_event).collect();

    let outcomes = sink(url, Duration::from_secs(5)).deliver(&events).await;

    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    for event in &events {
        let seen = rx.seen_for(&event.dedup_key);
        assert_eq!(seen.len(), 1);
        let seen = &seen[0];
        assert!(verify(seen), "signature verifies with the secret");
        let ts: u64 = seen.headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
        assert!(ts.abs_diff(now) < 60);
        assert_eq!(seen.headers["content-type"], "application/json");
        assert_eq!(seen.headers[EVENT_ID_HEADER], event.event_id.as_str());
        assert_eq!(&serde_json::from_slice::<MessageEvent>(&seen.body).unwrap(), event);
        assert!(!String::from_utf8_lossy(&seen.body).contains(SECRET));
    }
}

#[test]
fn a_tampered_body_or_timestamp_fails_verification() {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let body = Bytes::from_static(br#"{"a":1}"#);
    let mut headers = AxumHeaders::new();
    headers.insert(TIMESTAMP_HEADER, HeaderValue::from(1_700_000_000u64));
    headers.insert(SIGNATURE_HEADER, sign(&key, 1_700_000_000, &body).parse().unwrap());
    let seen = Seen {
        headers,
        body,
        at: Instant::now(),
    };
    assert!(verify(&seen));

    let mut other_body = seen.clone();
    other_body.body = Bytes::from_static(br#"{"a":2}"#);
    assert!(!verify(&other_body));
    let mut other_time = seen.clone();
    other_time
        .headers
        .insert(TIMESTAMP_HEADER, HeaderValue::from(1_700_000_001u64));
    assert!(!verify(&other_time));
}

#[tokio::test]
async fn a_500_is_retried_and_acknowledged_once_it_succeeds() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(&key(0), vec![status(500), status(200)]);

    let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    let seen = rx.seen_for(&key(0));
    assert_eq!(seen.len(), 2, "one retry");
    assert!(seen.iter().all(verify), "each attempt is signed");
}

#[tokio::test]
async fn a_400_is_rejected_without_retry() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(
        &key(0),
        vec![Reply {
            body: "missing field `subject`",
            ..status(400)
        }],
    );

    let outcomes = sink(url, Duration::from_secs(5))
        .deliver(&[sample_event(0), sample_event(1)])
        .await;

    match &outcomes[0] {
        Err(SinkError::Rejected(reason)) => {
            assert!(
                reason.contains("400") && reason.contains("missing field `subject`"),
                "{reason}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(outcomes[1].is_ok(), "the other event of the batch still goes through");
    assert_eq!(rx.seen_for(&key(0)).len(), 1, "no retry");
    assert_secret_free(&outcomes);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(
        &key(0),
        vec![
            Reply {
                retry_after: Some("1"),
                ..status(429)
            },
            status(200),
        ],
    );
    rx.script(&key(1), vec![status(408), status(200)]);

    let outcomes = sink(url, Duration::from_secs(5))
        .deliver(&[sample_event(0), sample_event(1)])
        .await;

    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let seen = rx.seen_for(&key(0));
    assert_eq!(seen.len(), 2);
    // The backoff alone would wait milliseconds; the receiver asked for a second.
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "{:?}",
        seen[1].at - seen[0].at
    );
    assert_eq!(rx.seen_for(&key(1)).len(), 2, "408 is retried too");
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_gives_up_for_now() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(
        &key(0),
        vec![Reply {
            retry_after: Some("3600"),
            ..status(503)
        }],
    );

    let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

    assert!(
        matches!(&outcomes[0], Err(SinkError::Unavailable(m)) if m.contains("3600")),
        "{outcomes:?}"
    );
    assert_eq!(rx.seen_for(&key(0)).len(), 1);
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_is_unavailable_after_bounded_attempts() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(&key(0), vec![status(503); 10]);

    let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

    assert!(
        matches!(&outcomes[0], Err(SinkError::Unavailable(m)) if m.contains("503")),
        "{outcomes:?}"
    );
    assert_eq!(rx.seen_for(&key(0)).len(), MAX_ATTEMPTS);
    assert_secret_free(&outcomes);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let (rx, url) = serve(Receiver::default()).await;
    rx.script(
        &key(0),
        vec![
            Reply {
                delay: Duration::from_secs(30),
                ..status(200)
            },
            status(200),
        ],
    );

    let outcomes = sink(url, Duration::from_millis(200)).deliver(&[sample_event(0)]).await;

    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert_eq!(rx.seen_for(&key(0)).len(), 2);
}

#[tokio::test]
async fn an_unreachable_receiver_is_unavailable_and_the_secret_stays_hidden() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = Url::parse(&format!("http://{}/inbound", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let sink = sink(url, Duration::from_secs(2));

    let outcomes = sink.deliver(&[sample_event(0)]).await;

    assert!(
        matches!(&outcomes[0], Err(SinkError::Unavailable(m)) if m.contains("connect")),
        "{outcomes:?}"
    );
    assert_secret_free(&outcomes);
    let debug = format!("{sink:?}");
    assert!(!debug.contains(SECRET) && debug.contains("REDACTED"), "{debug}");
}

#[tokio::test]
async fn at_most_eight_requests_are_in_flight() {
    let (open, gate) = watch::channel(false);
    let (rx, url) = serve(Receiver {
        gate: Some(gate),
        ..Receiver::default()
    })
    .await;
    let events: Vec<_> = (0..2 * MAX_IN_FLIGHT as u32).map(sample_event).collect();
    let sink = sink(url, Duration::from_secs(30));

    let delivery = tokio::spawn(async move { sink.deliver(&events).await });
    // Wait for the first wave to be held, give a client without a cap the chance to send
    // more, then let everything through.
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.in_flight().0 < MAX_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("8 requests in flight");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.in_flight().0, MAX_IN_FLIGHT, "never more than the cap");
    open.send_replace(true);
    let outcomes = delivery.await.unwrap();

    assert_eq!(outcomes.len(), 2 * MAX_IN_FLIGHT);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(rx.in_flight().1, MAX_IN_FLIGHT);
    assert_eq!(rx.seen.lock().unwrap().len(), 2 * MAX_IN_FLIGHT);
}

#[tokio::test]
async fn a_redirect_is_unavailable_whatever_the_client_does_with_it() {
    let (rx, url) = serve(Receiver::default()).await;
    let to_login = Reply {
        location: Some("/login?next=/inbound"),
        ..status(302)
    };
    rx.script(&key(0), vec![to_login.clone(), to_login.clone(), to_login]);

    // reqwest's default client follows redirects (as a GET): the sink must still not take
    // the login page's 200 for an acknowledgement.
    let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

    match &outcomes[0] {
        Err(SinkError::Unavailable(reason)) => assert!(reason.contains("redirect"), "{reason}"),
        other => panic!("a redirect must leave the event pending, got {other:?}"),
    }
}

#[tokio::test]
async fn the_daemons_client_never_follows_a_redirect() {
    let (rx, url) = serve(Receiver::default()).await;
    let to_login = Reply {
        location: Some("/login"),
        ..status(307)
    };
    rx.script(&key(0), vec![to_login.clone(), to_login.clone(), to_login]);
    let http = crate::http::client_builder(Duration::from_secs(5), None)
        .unwrap()
        .build()
        .unwrap();
    let sink = WebhookSink::new(http, url, SecretString::from(SECRET), Duration::from_secs(5))
        .with_min_delay(Duration::from_millis(1));

    let outcomes = sink.deliver(&[sample_event(0)]).await;

    match &outcomes[0] {
        Err(SinkError::Unavailable(reason)) => {
            assert!(reason.contains("307") && reason.contains("/login"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        rx.login_visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_receiver_refusing_access_or_route_is_unavailable_not_rejected() {
    for refusal in [401, 403, 404, 405, 410] {
        let (rx, url) = serve(Receiver::default()).await;
        rx.script(&key(0), vec![status(refusal), status(refusal), status(refusal)]);

        let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

        assert!(
            matches!(&outcomes[0], Err(SinkError::Unavailable(r)) if r.contains(&refusal.to_string())),
            "{refusal}: {outcomes:?}"
        );
        assert_eq!(rx.seen_for(&key(0)).len(), MAX_ATTEMPTS, "{refusal} is retried");
    }
}

#[tokio::test]
async fn only_an_answer_about_the_event_itself_rejects_it() {
    for bad in [400, 413, 422] {
        let (rx, url) = serve(Receiver::default()).await;
        rx.script(
            &key(0),
            vec![Reply {
                body: "this event is bad",
                ..status(bad)
            }],
        );

        let outcomes = sink(url, Duration::from_secs(5)).deliver(&[sample_event(0)]).await;

        assert!(
            matches!(&outcomes[0], Err(SinkError::Rejected(r)) if r.contains(&bad.to_string()) && r.contains("this event is bad")),
            "{bad}: {outcomes:?}"
        );
        assert_eq!(rx.seen_for(&key(0)).len(), 1, "{bad} is not retried");
    }
}

proptest::proptest! {
    #[test]
    fn a_signature_verifies_its_own_body_and_time_and_nothing_else(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        timestamp in 0u64..4_000_000_000,
        flip in proptest::num::usize::ANY,
    ) {
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        let signature = sign(&key, timestamp, &body);
        proptest::prop_assert!(signature.starts_with("v1=") && signature.len() == 3 + 64);
        let mut payload = format!("{timestamp}.").into_bytes();
        payload.extend_from_slice(&body);
        let tag = hex_decode(&signature[3..]);
        proptest::prop_assert!(hmac::verify(&key, &payload, &tag).is_ok());
        // Any one changed byte of time or body fails verification.
        let i = flip % payload.len();
        payload[i] ^= 0x01;
        proptest::prop_assert!(hmac::verify(&key, &payload, &tag).is_err());
        // A later time with the same body does not verify either (no replay).
        proptest::prop_assert_ne!(sign(&key, timestamp + 1, &body), signature);
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
