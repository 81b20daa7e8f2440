//! `[notifications]`: Graph change notifications as a wake-up for the delta rounds.

use std::time::Duration;

use super::NotificationsConfig;
use super::reader::{Errors, Table};
use super::values::{duration, https_url};

/// Longest subscription lifetime a client may ask for (Graph's highest documented cap, 7 days).
const MAX_LIFETIME: Duration = Duration::from_secs(10_080 * 60);

/// Reads the section; `encryption_key_given` says whether `store.encryption_key` is set, which
/// seals each subscription's clientState at rest.
pub(super) fn notifications(
    t: Option<Table<'_>>,
    encryption_key_given: bool,
    errors: &mut Errors,
) -> Option<NotificationsConfig> {
    let Some(mut t) = t else {
        return Some(NotificationsConfig::default());
    };
    let enabled = match t.get("enabled") {
        None => Some(false),
        Some(field) => field.bool(errors),
    };
    let public_url = match t.get("public_url") {
        None => Some(None),
        Some(field) => https_url(&field, errors).map(Some),
    };
    let safety_poll_interval = duration(
        &t.get_or("safety_poll_interval", "5m"),
        errors,
        false,
        Duration::from_secs(24 * 3600),
    );
    let subscription_lifetime = duration(&t.get_or("subscription_lifetime", "4230m"), errors, false, MAX_LIFETIME);
    let rate_limit = match t.get("rate_limit") {
        None => Some(200),
        Some(field) => field.int_in(errors, 1, 100_000).and_then(|v| u32::try_from(v).ok()),
    };
    t.finish(errors);
    if enabled == Some(true) && !encryption_key_given {
        errors.push(super::ConfigError::new(
            "store.encryption_key",
            "missing; required because notifications.enabled = true (each subscription's clientState is sealed with it)",
        ));
        return None;
    }
    Some(NotificationsConfig {
        enabled: enabled?,
        public_url: public_url?,
        safety_poll_interval: safety_poll_interval?,
        subscription_lifetime: subscription_lifetime?,
        rate_limit: rate_limit?,
    })
}
