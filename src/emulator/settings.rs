//! Behaviour knobs, changed through `POST /_emulator/settings`.

use serde::{Deserialize, Serialize};

/// Every knob with its documented default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    /// Fixed access-token lifetime; `None` draws 60–90 minutes like Entra does.
    pub(crate) token_lifetime_secs: Option<u64>,
    /// `ext_expires_in` = `expires_in` + this.
    pub(crate) ext_expires_extra_secs: u64,
    /// When set, token responses carry `refresh_in`.
    pub(crate) refresh_in_secs: Option<u64>,
    /// `"allow"` or `"deny"`: what `/authorize` answers.
    pub(crate) consent: Consent,
    /// Delta page size when the client sends no `Prefer: odata.maxpagesize`.
    pub(crate) delta_page_size: usize,
    /// Repeat the last item of the previous page at the start of each next page.
    pub(crate) delta_replay: bool,
    /// Every delta page carries its first item a second time, at its end.
    pub(crate) delta_duplicates: bool,
    /// A message updated after a round announced it comes back with only `id`,
    /// `parentFolderId` and the changed properties (Graph's behaviour); false sends it whole.
    pub(crate) delta_partial_updates: bool,
    /// Most items a delta round with `$filter=receivedDateTime …` returns in total.
    pub(crate) filtered_delta_cap: usize,
    /// Links older than this many newer delta links of the folder answer 410.
    pub(crate) delta_max_generations: u64,
    /// Links older than this answer 410.
    pub(crate) delta_max_age_secs: Option<u64>,
    /// Concurrent requests per app + mailbox.
    pub(crate) throttle_concurrency: usize,
    /// Requests per app + mailbox per window.
    pub(crate) throttle_requests: u64,
    /// The window of `throttle_requests`.
    pub(crate) throttle_window_secs: u64,
    /// `Retry-After` sent with a throttling 429.
    pub(crate) throttle_retry_after_secs: f64,
    /// Added to every Graph request.
    pub(crate) latency_ms: u64,
    /// How long a sent message waits in the Outbox before it reaches Sent Items and its
    /// recipients (emulator time: advancing the clock makes it pass).
    pub(crate) transport_delay_ms: u64,
    /// While set, transport fails: nobody receives the message and a non-delivery report
    /// with this reason arrives in the sender's Inbox.
    pub(crate) transport_failure: Option<String>,
    /// `createReply`, `createReplyAll` and `createForward` drop `singleValueExtendedProperties`
    /// given in `message` (no document says they keep them).
    pub(crate) create_response_ignores_extended_properties: bool,
}

/// What the consent screen answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Consent {
    /// Redirect with a code at once.
    Allow,
    /// Redirect with `error=access_denied`.
    Deny,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime_secs: None,
            ext_expires_extra_secs: 3600,
            refresh_in_secs: None,
            consent: Consent::Allow,
            delta_page_size: 10,
            delta_replay: false,
            delta_duplicates: false,
            delta_partial_updates: true,
            filtered_delta_cap: 5000,
            delta_max_generations: 16,
            delta_max_age_secs: None,
            throttle_concurrency: 4,
            throttle_requests: 10_000,
            throttle_window_secs: 600,
            throttle_retry_after_secs: 2.5,
            latency_ms: 0,
            transport_delay_ms: 500,
            transport_failure: None,
            create_response_ignores_extended_properties: false,
        }
    }
}

impl Settings {
    /// Applies a partial update given as JSON; unknown keys are an error naming the key.
    pub(crate) fn merge(&mut self, patch: &serde_json::Value) -> Result<(), String> {
        let mut current = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let (Some(target), Some(changes)) = (current.as_object_mut(), patch.as_object()) else {
            return Err("settings must be a JSON object".into());
        };
        for (key, value) in changes {
            if !target.contains_key(key) {
                return Err(format!("unknown setting `{key}`"));
            }
            target.insert(key.clone(), value.clone());
        }
        let updated: Settings = serde_json::from_value(current).map_err(|e| format!("invalid settings: {e}"))?;
        if updated.throttle_concurrency == 0 || updated.delta_page_size == 0 || updated.throttle_window_secs == 0 {
            return Err("throttle_concurrency, delta_page_size and throttle_window_secs must be positive".into());
        }
        *self = updated;
        Ok(())
    }
}
