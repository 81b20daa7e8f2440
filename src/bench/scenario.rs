//! The benchmark scenarios and their smoke versions: what is seeded, how the daemon is
//! configured, how long it runs, and the budget each figure is held to.

use serde_json::{Value, json};

/// A scenario name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Mail already waiting; runs until all of it is delivered.
    Backlog,
    /// Many mailboxes, no mail; runs for a fixed time.
    Idle,
    /// New mail at a steady rate; runs for a fixed time.
    Steady,
    /// A minimal client doing the backlog's Graph requests, compared with the daemon.
    Reference,
    /// The steady load with change notifications on (safety poll 5 minutes), plus idle mailboxes.
    Notify,
}

impl Kind {
    /// Parses a scenario name; `all` is handled by the caller.
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "backlog" => Some(Kind::Backlog),
            "idle" => Some(Kind::Idle),
            "steady" => Some(Kind::Steady),
            "reference" => Some(Kind::Reference),
            "notify" => Some(Kind::Notify),
            _ => None,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Backlog => "backlog",
            Kind::Idle => "idle",
            Kind::Steady => "steady",
            Kind::Reference => "reference",
            Kind::Notify => "notify",
        }
    }
}

/// One scenario, fully sized.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which scenario.
    pub kind: Kind,
    /// Smoke size (CI) or full size.
    pub smoke: bool,
    /// Load generator calls made before the daemon starts (mailboxes and waiting mail).
    pub seed: Vec<Value>,
    /// Load generator call made once every mailbox has finished its first round (steady mail).
    pub live: Option<Value>,
    /// Every mailbox address the seed creates.
    pub mailboxes: Vec<String>,
    /// The daemon's `poll_interval`.
    pub poll_secs: u64,
    /// Messages that must be delivered.
    pub messages: usize,
    /// Fixed run time after start (idle, steady); `None` = until every message is delivered.
    pub run_secs: Option<f64>,
    /// Rate of the live load, messages per second.
    pub rate_per_sec: Option<f64>,
    /// Hard stop: the run is abandoned (and reported incomplete) after this long.
    pub deadline_secs: f64,
    /// `notifications.safety_poll_interval` in seconds when change notifications are on.
    pub safety_poll_secs: Option<u64>,
    /// Mailboxes that get no mail (their Graph calls are counted per hour).
    pub idle: Vec<String>,
}

/// Load generator domain of every bench mailbox.
const DOMAIN: &str = "load.example.com";

/// One load generator call and the addresses it creates.
fn load(
    prefix: &str,
    mailboxes: usize,
    per_mailbox: usize,
    body_bytes: usize,
    rate: Option<f64>,
) -> (Value, Vec<String>) {
    let mut spec = json!({
        "mailboxes": mailboxes, "messages_per_mailbox": per_mailbox, "body_bytes": body_bytes,
        "attachment_share": 0.2, "attachment_bytes": 100_000, "address_prefix": prefix, "domain": DOMAIN,
    });
    if let Some(r) = rate {
        spec["rate_per_sec"] = json!(r);
    }
    let addresses = (0..mailboxes).map(|i| format!("{prefix}{i}@{DOMAIN}")).collect();
    (spec, addresses)
}

impl Plan {
    /// The plan of `kind` at full or smoke size.
    pub fn new(kind: Kind, smoke: bool) -> Plan {
        Plan::sized(kind, smoke, None)
    }

    /// The plan of `kind` at full or smoke size, or over `mailboxes` mailboxes: `backlog` and
    /// `reference` then spread the same 20,000 messages over them (a multiple of 4), `idle`
    /// polls that many.
    pub fn sized(kind: Kind, smoke: bool, mailboxes: Option<usize>) -> Plan {
        match kind {
            // The reference needs the backlog's mail; `Reference` reuses its plan.
            Kind::Backlog | Kind::Reference => {
                // Bodies of 5–50 KB: the load generator takes one size per call, so four groups
                // of mailboxes get 5, 20, 35 and 50 KB (mean 27.5 KB); 20 % carry 100 KB.
                let (per_group, per_mailbox) = match (smoke, mailboxes) {
                    (true, _) => (1, 10),
                    (false, Some(n)) => ((n / 4).max(1), (20_000 / (n / 4).max(1) / 4).max(1)),
                    (false, None) => (25, 200),
                };
                let mut seed = Vec::new();
                let mut mailboxes = Vec::new();
                for kb in [5, 20, 35, 50] {
                    let (spec, addrs) = load(&format!("backlog{kb}k-"), per_group, per_mailbox, kb * 1000, None);
                    seed.push(spec);
                    mailboxes.extend(addrs);
                }
                Plan {
                    kind,
                    smoke,
                    seed,
                    live: None,
                    messages: mailboxes.len() * per_mailbox,
                    mailboxes,
                    poll_secs: 5,
                    run_secs: None,
                    rate_per_sec: None,
                    deadline_secs: if smoke { 60.0 } else { 1800.0 },
                    safety_poll_secs: None,
                    idle: Vec::new(),
                }
            }
            Kind::Idle => {
                let (n, poll, secs) = if smoke {
                    (50, 1, 5.0)
                } else {
                    (mailboxes.unwrap_or(10_000), 60, 180.0)
                };
                let (spec, mailboxes) = load("idle-", n, 0, 0, None);
                Plan {
                    kind,
                    smoke,
                    seed: vec![spec],
                    live: None,
                    mailboxes,
                    poll_secs: poll,
                    messages: 0,
                    run_secs: Some(secs),
                    rate_per_sec: None,
                    deadline_secs: secs + 120.0,
                    safety_poll_secs: None,
                    idle: Vec::new(),
                }
            }
            Kind::Steady => {
                // 20 messages/s over 1,000 mailboxes: 4 each = 4,000 messages over 200 s.
                let (n, per_mailbox, rate, poll) = if smoke { (10, 2, 4.0, 1) } else { (1_000, 4, 20.0, 10) };
                let (mailboxes_spec, mailboxes) = load("steady-", n, 0, 0, None);
                let (live, _) = load("steady-", n, per_mailbox, 10_000, Some(rate));
                let messages = n * per_mailbox;
                let generate = messages as f64 / rate;
                Plan {
                    kind,
                    smoke,
                    seed: vec![mailboxes_spec],
                    live: Some(live),
                    mailboxes,
                    poll_secs: poll,
                    messages,
                    run_secs: Some(generate),
                    rate_per_sec: Some(rate),
                    deadline_secs: generate + 3.0 * poll as f64 + 60.0,
                    safety_poll_secs: None,
                    idle: Vec::new(),
                }
            }
            Kind::Notify => {
                // The steady load (20 messages/s over 1,000 mailboxes, poll_interval 10 s as the
                // fallback) with notifications on and a 5-minute safety poll, plus 100 mailboxes
                // without mail. The run outlasts one safety interval, so idle mailboxes poll.
                let (n, idle_n, per_mailbox, rate, poll, safety, run) = if smoke {
                    (10, 5, 2, 4.0, 1, 4, 9.0)
                } else {
                    (1_000, 100, 4, 20.0, 10, 300, 330.0)
                };
                let (mailboxes_spec, mut mailboxes) = load("notify-", n, 0, 0, None);
                let (idle_spec, idle) = load("notify-idle-", idle_n, 0, 0, None);
                mailboxes.extend(idle.iter().cloned());
                let (live, _) = load("notify-", n, per_mailbox, 10_000, Some(rate));
                let messages = n * per_mailbox;
                Plan {
                    kind,
                    smoke,
                    seed: vec![mailboxes_spec, idle_spec],
                    live: Some(live),
                    mailboxes,
                    poll_secs: poll,
                    messages,
                    run_secs: Some(run),
                    rate_per_sec: Some(rate),
                    deadline_secs: run + 3.0 * poll as f64 + 240.0,
                    safety_poll_secs: Some(safety),
                    idle,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_have_their_documented_sizes() {
        let b = Plan::new(Kind::Backlog, false);
        assert_eq!((b.mailboxes.len(), b.messages), (100, 20_000));
        let i = Plan::new(Kind::Idle, false);
        assert_eq!((i.mailboxes.len(), i.poll_secs, i.run_secs), (10_000, 60, Some(180.0)));
        let s = Plan::new(Kind::Steady, false);
        assert_eq!(
            (s.mailboxes.len(), s.poll_secs, s.rate_per_sec),
            (1_000, 10, Some(20.0))
        );
        assert_eq!(Plan::new(Kind::Backlog, true).messages, 40);
        let wide = Plan::sized(Kind::Backlog, false, Some(1_000));
        assert_eq!((wide.mailboxes.len(), wide.messages), (1_000, 20_000));
        let many = Plan::sized(Kind::Idle, false, Some(100_000));
        assert_eq!(many.mailboxes.len(), 100_000);
        assert_eq!(Kind::parse("reference"), Some(Kind::Reference));
    }
}
