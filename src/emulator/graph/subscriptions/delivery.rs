//! What the emulator sends to client endpoints: the validation handshake, and queued
//! notifications (due items grouped per URL into one POST; a failure or an answer slower than
//! the timeout is retried with doubling delays).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use std::sync::LazyLock;

use super::{BATCH, LOG_CAP, Pending, QUEUED, SubscriptionSettings};
use crate::emulator::Shared;
use crate::emulator::graph::GraphError;
use crate::emulator::util::guid;
use crate::emulator::util::log_time;

/// Delivers queued notifications until `stop`: due items are grouped per URL, one POST per
/// group; a failure or an answer slower than the timeout is retried with doubling delays.
pub(crate) fn spawn_dispatcher(emu: Shared, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let notified = QUEUED.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            let (due, next, settings) = {
                let mut world = emu.world();
                let subs = &mut world.subscriptions;
                let (due, later): (Vec<Pending>, Vec<Pending>) = subs.queue.drain(..).partition(|p| p.due <= now);
                subs.queue = later;
                // A change for a subscription deleted or expired meanwhile is never sent.
                let clock = emu.clock.now();
                let due: Vec<Pending> = due
                    .into_iter()
                    .filter(|p| {
                        p.kind != "change" || subs.items.get(&p.subscription).is_some_and(|s| s.expiration > clock)
                    })
                    .collect();
                (due, subs.queue.iter().map(|p| p.due).min(), subs.settings.clone())
            };
            let mut groups: HashMap<(String, u32), Vec<Pending>> = HashMap::new();
            for p in due {
                groups.entry((p.url.clone(), p.attempt)).or_default().push(p);
            }
            for (_, group) in groups {
                for chunk in group.chunks(BATCH) {
                    tokio::spawn(send_batch(emu.clone(), chunk.to_vec(), settings.clone()));
                }
            }
            let wait = next.unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wait) => {}
            }
        }
    });
}

async fn send_batch(emu: Shared, batch: Vec<Pending>, settings: SubscriptionSettings) {
    let url = batch[0].url.clone();
    let attempt = batch[0].attempt;
    let started = std::time::Instant::now();
    let body = json!({"value": batch.iter().map(|p| p.item.clone()).collect::<Vec<_>>()});
    let answer = CLIENT
        .post(&url)
        .json(&body)
        .timeout(Duration::from_millis(settings.notification_timeout_ms))
        .send()
        .await;
    let outcome = match &answer {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(r.status().as_u16().to_string()),
        Err(e) if e.is_timeout() => Err("timeout".to_string()),
        Err(_) => Err("unreachable".to_string()),
    };
    let mut world = emu.world();
    let at = log_time(emu.clock.now());
    let subs = &mut world.subscriptions;
    for p in &batch {
        subs.log.push(json!({
            "subscription_id": p.subscription, "kind": p.kind, "url": url, "attempt": attempt + 1,
            "status": outcome.as_ref().ok(), "error": outcome.as_ref().err(),
            "elapsed_ms": started.elapsed().as_millis() as u64, "time": at,
        }));
    }
    if subs.log.len() > LOG_CAP {
        let excess = subs.log.len() - LOG_CAP;
        subs.log.drain(..excess);
    }
    if outcome.is_err() && attempt < settings.retries {
        let delay = Duration::from_millis(settings.retry_delay_ms.saturating_mul(1 << attempt.min(16)));
        for mut p in batch {
            p.attempt += 1;
            p.due = tokio::time::Instant::now() + delay;
            subs.queue.push(p);
        }
        QUEUED.notify_waiters();
    }
}

/// Client for handshakes and notifications.
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain client builds")
});

/// The handshake: `POST {url}?validationToken=…` must come back 200, `text/plain`, with the
/// decoded token, within the validation timeout.
pub(super) async fn validate(url: &str, settings: &SubscriptionSettings) -> Result<(), GraphError> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        guid()
    );
    let mut target =
        url::Url::parse(url).map_err(|_| GraphError::bad_request("InvalidRequest", "Bad notificationUrl."))?;
    target.query_pairs_mut().append_pair("validationToken", &token);
    let failed = |why: &str| {
        GraphError::bad_request(
            "ValidationError",
            format!("Subscription validation request failed. {why}"),
        )
    };
    let answer = CLIENT
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(Duration::from_millis(settings.validation_timeout_ms))
        .send()
        .await;
    let resp = match answer {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(GraphError::bad_request(
                "ValidationError",
                "Subscription validation request timeout.",
            ));
        }
        Err(_) => {
            return Err(failed(
                "Notification endpoint must respond with 200 OK to validation request.",
            ));
        }
    };
    if resp.status() != reqwest::StatusCode::OK {
        return Err(failed(
            "Notification endpoint must respond with 200 OK to validation request.",
        ));
    }
    let plain = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/plain"));
    let body = resp.text().await.unwrap_or_default();
    if !plain || body != token {
        return Err(failed("Response must exactly match validationToken query parameter."));
    }
    Ok(())
}
