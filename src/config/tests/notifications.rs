//! `[notifications]`: off by default, every key checked by path.

use std::time::Duration;

use super::{BASE, assert_has, lines, ok};

#[test]
fn notifications_are_off_unless_enabled_and_have_documented_defaults() {
    let config = ok(BASE, &[]);
    assert!(!config.notifications.enabled);
    let config = ok(
        &format!("[store]\nencryption_key = \"dev:k\"\n[notifications]\nenabled = true\n{BASE}"),
        &[],
    );
    let n = &config.notifications;
    assert!(n.enabled);
    assert_eq!(n.public_url, None);
    assert_eq!(n.safety_poll_interval, Duration::from_secs(300));
    assert_eq!(n.subscription_lifetime, Duration::from_secs(4230 * 60));
    assert_eq!(n.rate_limit, 200);
    let config = ok(
        &format!(
            "[store]\nencryption_key = \"dev:k\"\n[notifications]\nenabled = true\npublic_url = \"https://inboxd.example.com\"\nsafety_poll_interval = \"10m\"\n{BASE}"
        ),
        &[("INBOXD__NOTIFICATIONS__RATE_LIMIT", "50")],
    );
    assert_eq!(config.notifications.safety_poll_interval, Duration::from_secs(600));
    assert_eq!(
        config.notifications.public_url.as_ref().map(|u| u.as_str()),
        Some("https://inboxd.example.com/")
    );
    assert_eq!(config.notifications.rate_limit, 50);
}

#[test]
fn every_bad_notifications_key_is_listed_by_path() {
    let found = lines(
        &format!(
            "[notifications]\nenabled = \"yes\"\npublic_url = \"http://inboxd.example.com\"\nsafety_poll_interval = \"0s\"\nsubscription_lifetime = \"30d\"\nrate_limit = 0\nsecret = 1\n{BASE}"
        ),
        &[],
    );
    assert_has(&found, "notifications.enabled", "true or false");
    assert_has(&found, "notifications.public_url", "https://");
    assert_has(&found, "notifications.safety_poll_interval", "longer than 0s");
    assert_has(&found, "notifications.subscription_lifetime", "too long");
    assert_has(&found, "notifications.rate_limit", "between 1 and");
    assert_has(&found, "notifications.secret", "");
}

#[test]
fn enabled_notifications_need_the_store_key() {
    let found = lines(&format!("[notifications]\nenabled = true\n{BASE}"), &[]);
    assert_has(&found, "store.encryption_key", "notifications.enabled");
}
