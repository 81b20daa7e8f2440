//! Credentials that expire without warning broke the peers (AADSTS7000222): inboxd warns
//! 30, 7 and 1 days ahead, and says ERROR once a credential has expired.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Days-left thresholds that each get one WARN.
const THRESHOLDS: [i64; 3] = [30, 7, 1];

/// The threshold bucket of `days` left (0 = expired, then 1, 7, 30; `None` = far away).
fn bucket(days_left: f64) -> Option<i64> {
    if days_left <= 0.0 {
        return Some(0);
    }
    THRESHOLDS.iter().rev().find(|t| days_left <= **t as f64).copied()
}

/// Checks every hour until cancelled; logs once per app and threshold.
pub async fn watch_expiry(expiries: Vec<(String, OffsetDateTime)>, cancel: CancellationToken) {
    if expiries.is_empty() {
        return;
    }
    let mut logged: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let now = OffsetDateTime::now_utc();
        for (app, at) in &expiries {
            let days_left = (*at - now).as_seconds_f64() / 86_400.0;
            let Some(b) = bucket(days_left) else { continue };
            if logged.get(app) == Some(&b) {
                continue;
            }
            logged.insert(app.clone(), b);
            let expires_at = at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            if b == 0 {
                tracing::error!(app = %app, expires_at, "The app's secret or certificate has expired; rotate it now (every mailbox of the app stops).");
            } else {
                tracing::warn!(app = %app, expires_at, days_left = days_left.floor() as i64, "The app's secret or certificate expires soon; rotate it and update the config.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn thresholds() {
        assert_eq!(bucket(45.0), None);
        assert_eq!(bucket(29.5), Some(30));
        assert_eq!(bucket(6.0), Some(7));
        assert_eq!(bucket(0.5), Some(1));
        assert_eq!(bucket(-1.0), Some(0));
    }
}
