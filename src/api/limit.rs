//! A token bucket per client address, for the endpoints anyone may call (`/oauth/start`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most client addresses remembered; beyond, the table starts afresh (a flood of addresses
/// then gets one burst each, which is still bounded by the connection limit).
const MAX_CLIENTS: usize = 10_000;

/// `burst` requests at once per client address, then `per_second`.
pub struct PerClient {
    /// Tokens left and when they were counted, per address.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Bucket size.
    burst: f64,
    /// Refill rate.
    per_second: f64,
}

impl PerClient {
    /// A limiter allowing `burst` at once and `per_second` after.
    pub fn new(burst: u32, per_second: f64) -> PerClient {
        PerClient {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst),
            per_second,
        }
    }

    /// Takes a token for `client`; false when it has none left.
    pub fn allow(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.clear();
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_per_address() {
        let limiter = PerClient::new(3, 0.0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!((0..3).all(|_| limiter.allow(a)));
        assert!(!limiter.allow(a));
        assert!(limiter.allow(b), "another address has its own bucket");
    }
}
