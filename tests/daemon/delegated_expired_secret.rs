//! An expired client secret flags the mailboxes of its app, and only those.

use std::time::Duration;

use serde_json::json;

use crate::support::delegated::*;
use crate::support::{CLIENT, Env, SECRET_ENV};

// ---------------------------------------------------------------------------------------
// Expired secret
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_secret_flags_all_of_its_mailboxes_and_no_other_until_it_is_replaced() {
    capture_logs();
    let env = Env::new().await;
    env.settings(json!({"token_lifetime_secs": 2})).await;
    let TwoApps {
        own,
        user,
        other,
        toml,
        daemon,
    } = two_apps(&env, "ex").await;

    env.control(&format!("/_emulator/apps/{CLIENT}/secret"), json!({"expired": true}))
        .await;
    for m in [&own, &user] {
        let v = wait_state(&env, daemon.addr, m, "credential_invalid", LIMIT).await;
        assert_eq!(v["aadsts"], 7000222, "{v}");
        assert!(v["reason"].as_str().unwrap_or_default().contains("secret"), "{v}");
    }
    env.deliver(&other, "other app, secret expired elsewhere").await;
    assert!(
        wait_delivered(
            &env,
            &other,
            "other app, secret expired elsewhere",
            Duration::from_secs(10)
        )
        .await,
        "another app's mailbox stopped"
    );
    assert_eq!(view(daemon.addr, &other).await["state"], "active");
    assert_eq!(in_state(daemon.addr, "credential_invalid").await, 2.0);
    daemon.stop().await;

    // The operator creates a new secret and restarts with it.
    let new_secret = "replacement-secret";
    env.control(
        &format!("/_emulator/apps/{CLIENT}/secret"),
        json!({"rotate_to": new_secret}),
    )
    .await;
    let fixed = toml.replacen(
        &format!("client_secret = \"env:{SECRET_ENV}\""),
        &format!("client_secret = \"dev:{new_secret}\""),
        1,
    );
    assert_ne!(fixed, toml, "the test app's secret line was not found");
    env.deliver(&own, "after the new secret").await;
    env.deliver(&user, "after the new secret").await;
    let daemon = env.start(&fixed).await;
    for m in [&own, &user] {
        assert!(
            wait_delivered(&env, m, "after the new secret", Duration::from_secs(10)).await,
            "{m} did not come back with the new secret: {}",
            view(daemon.addr, m).await
        );
        wait_state(&env, daemon.addr, m, "active", LIMIT).await;
    }
    assert_eq!(in_state(daemon.addr, "credential_invalid").await, 0.0);
    daemon.stop().await;
}
