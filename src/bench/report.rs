//! Turns what a run observed into the JSON report: request counts as Graph counts them,
//! lag percentiles, CPU and memory per message, the budget it is held to next to each figure.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Requests seen by one emulator, classified.
#[derive(Debug, Default, Clone)]
pub struct RequestCounts {
    /// Graph API requests as Graph counts them: every request inside a `$batch`, not the `$batch`.
    pub graph: u64,
    /// Of those, the attachment listings (`…/attachments`).
    pub attachments: u64,
    /// HTTP round trips to Graph (outer requests only, a `$batch` counts once).
    pub round_trips: u64,
    /// Delta page requests.
    pub delta: u64,
    /// Token endpoint requests.
    pub tokens: u64,
    /// When the first of them arrived, in Unix seconds.
    pub first_token_at: Option<f64>,
    /// Answers with status 429.
    pub throttled: u64,
    /// Graph requests per mailbox: (count, first, last) arrival in Unix seconds.
    pub per_mailbox: HashMap<String, (u64, f64, f64)>,
}

pub fn unix(time: &str) -> Option<f64> {
    OffsetDateTime::parse(time, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Classifies the emulator's request log (`GET /_emulator/requests`).
pub fn count_requests(entries: &[Value]) -> RequestCounts {
    let mut c = RequestCounts::default();
    for e in entries {
        let path = e.get("path").and_then(Value::as_str).unwrap_or_default();
        let inner = e.get("batch").is_some_and(|b| !b.is_null());
        if e.get("status").and_then(Value::as_u64) == Some(429) {
            c.throttled += 1;
        }
        if path.ends_with("/oauth2/v2.0/token") {
            c.tokens += 1;
            let at = e.get("time").and_then(Value::as_str).and_then(unix);
            c.first_token_at = c.first_token_at.into_iter().chain(at).reduce(f64::min);
            continue;
        }
        if !path.starts_with("/v1.0/") {
            continue;
        }
        if !inner {
            c.round_trips += 1;
        }
        if path == "/v1.0/$batch" && !inner {
            continue;
        }
        c.graph += 1;
        if path.ends_with("/attachments") {
            c.attachments += 1;
        }
        if path.ends_with("/messages/delta") {
            c.delta += 1;
        }
        if let (Some(mailbox), Some(at)) = (
            e.get("mailbox").and_then(Value::as_str),
            e.get("time").and_then(Value::as_str).and_then(unix),
        ) {
            let slot = c.per_mailbox.entry(mailbox.to_ascii_lowercase()).or_insert((0, at, at));
            slot.0 += 1;
            slot.1 = slot.1.min(at);
            slot.2 = slot.2.max(at);
        }
    }
    c
}

/// Graph requests per mailbox per poll interval, from each mailbox's own span of requests:
/// Σ(requests − 1) / Σ(span / interval). One delta call per interval gives just under 1.
pub fn requests_per_mailbox_interval(c: &RequestCounts, interval: f64) -> Option<f64> {
    let (mut extra, mut intervals) = (0.0, 0.0);
    for (n, first, last) in c.per_mailbox.values() {
        if *n >= 2 {
            extra += (*n - 1) as f64;
            intervals += (last - first) / interval;
        }
    }
    (intervals > 0.0).then(|| extra / intervals)
}

/// The `q` quantile (0–1) by nearest rank; `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Rounds for the report (3 decimals), `null` when not finite.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// `a / b`, or `null` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 { num(a / b) } else { Value::Null }
}

/// A budget line: the target, the figure, and whether it is met.
pub fn budget(target: &str, figure: &Value, met: Option<bool>) -> Value {
    json!({"target": target, "figure": figure, "met": met})
}

/// Fields every report carries, numbers unless noted.
pub const COMMON_FIELDS: &[&str] = &[
    "scenario",
    "messages_delivered",
    "duration_s",
    "graph_api_requests",
    "http_round_trips",
    "token_requests",
    "daemon_cpu_seconds",
    "daemon_peak_rss_mb",
    "machine",
    "command",
];

/// Fields that need delivered mail (`null` in `idle`).
pub const MESSAGE_FIELDS: &[&str] = &[
    "messages_per_s",
    "graph_api_requests_per_message",
    "graph_api_requests_per_message_without_attachments",
    "http_round_trips_per_message",
    "delivery_lag_p50_s",
    "delivery_lag_p99_s",
    "daemon_cpu_seconds_per_1000_messages",
];

/// Fields only some scenarios carry.
fn scenario_fields(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "idle" => &[
            "mailboxes",
            "poll_interval_s",
            "graph_requests_per_mailbox_per_interval",
            "mailboxes_polled",
            "daemon_cpu_percent_of_one_core",
        ],
        "steady" => &["messages_seeded", "messages_lost", "poll_interval_s"],
        "notify" => &[
            "messages_seeded",
            "messages_lost",
            "poll_interval_s",
            "safety_poll_interval_s",
            "subscriptions_active",
            "graph_calls_per_idle_mailbox_per_hour",
        ],
        "reference" => &[
            "reference_messages",
            "reference_messages_per_s",
            "reference_graph_api_requests",
            "reference_http_round_trips",
            "daemon_to_reference_throughput",
        ],
        _ => &["messages_seeded", "messages_lost"],
    }
}

/// Every problem that makes a report incomplete: a missing field, a non-finite number,
/// mail not delivered.
pub fn problems(report: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let scenario = report
        .get("scenario")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let mut need: Vec<&str> = COMMON_FIELDS.to_vec();
    need.extend_from_slice(scenario_fields(&scenario));
    if scenario != "idle" {
        need.extend_from_slice(MESSAGE_FIELDS);
    }
    for key in need {
        match report.get(key) {
            None | Some(Value::Null) => out.push(format!("{scenario}: '{key}' is missing")),
            Some(Value::Number(n)) if !n.as_f64().is_some_and(f64::is_finite) => {
                out.push(format!("{scenario}: '{key}' is not finite"))
            }
            _ => {}
        }
    }
    if let (Some(seeded), Some(delivered)) = (
        report.get("messages_seeded").and_then(Value::as_u64),
        report.get("messages_delivered").and_then(Value::as_u64),
    ) && delivered < seeded
    {
        out.push(format!("{scenario}: {delivered} of {seeded} messages delivered"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_as_graph_does() {
        let log = json!([
            {"path": "/bench-tenant/oauth2/v2.0/token", "batch": null, "status": 200},
            {"path": "/v1.0/users/a@x/mailFolders/inbox/messages/delta", "batch": null, "status": 200, "mailbox": "a@x", "time": "2024-01-01T00:00:00Z"},
            {"path": "/v1.0/$batch", "batch": null, "status": 200},
            {"path": "/v1.0/users/a@x/messages/1/attachments", "batch": 3, "status": 200, "mailbox": "a@x", "time": "2024-01-01T00:01:00Z"},
            {"path": "/v1.0/users/a@x/messages/2/attachments", "batch": 3, "status": 429, "mailbox": "a@x", "time": "2024-01-01T00:02:00Z"},
        ]);
        let c = count_requests(log.as_array().unwrap());
        assert_eq!(
            (c.graph, c.attachments, c.round_trips, c.tokens, c.delta, c.throttled),
            (3, 2, 2, 1, 1, 1)
        );
        assert_eq!(requests_per_mailbox_interval(&c, 60.0), Some(1.0));
    }

    #[test]
    fn quantiles_and_completeness() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
        let report = json!({"scenario": "idle", "messages_delivered": 0})
            .as_object()
            .unwrap()
            .clone();
        assert!(problems(&report).iter().any(|p| p.contains("'duration_s' is missing")));
    }
}
