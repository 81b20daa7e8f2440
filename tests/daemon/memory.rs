//! Memory follows `microsoft.in_flight_bytes`: a mailbox whose mail is large is read in pages
//! small enough for its share of the budget, and every message still arrives whole.

use std::time::Duration;

use serde_json::json;

use crate::support::{Env, log_path, with_microsoft};

/// Bound on every wait for the daemon (a hang guard on a loaded machine, not what is measured).
const LIMIT: Duration = Duration::from_secs(60);

/// The `odata.maxpagesize` each delta request of the log asked for, in order.
fn delta_page_sizes(requests: &[serde_json::Value]) -> Vec<u32> {
    requests
        .iter()
        .filter(|r| log_path(r).ends_with("/messages/delta"))
        .filter_map(|r| {
            let prefer = r["headers"]["prefer"].as_str()?;
            prefer
                .split(',')
                .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

#[tokio::test]
async fn large_mail_is_read_in_pages_that_fit_the_budget_and_arrives_whole() {
    let env = Env::new().await;
    let mailbox = "large@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    // 4 MiB in flight: a page may carry about 87 KB of mail; each of these bodies is 300 KB.
    let paragraph = "<p>".to_string() + &"word ".repeat(60_000) + "</p>";
    for i in 0..14 {
        env.control(
            &format!("/_emulator/mailboxes/{mailbox}/messages"),
            json!({
                "from": {"name": "Customer", "address": "customer@example.net"},
                "to": [{"name": "", "address": mailbox}],
                "subject": format!("Large {i}"),
                "body": {"content_type": "html", "content": format!("<html><body>{paragraph}</body></html>")},
            }),
        )
        .await;
    }
    let toml = with_microsoft(
        &env.config(std::slice::from_ref(&mailbox), "1s"),
        "in_flight_bytes = 4194304\n",
    );
    let daemon = env.start(&toml).await;
    let events = env.wait_for_events(14, LIMIT).await;
    daemon.stop().await;

    assert_eq!(events.len(), 14, "every large message arrives");
    for e in &events {
        let text = e.body.text.as_deref().unwrap_or_default();
        assert_eq!(
            text.len(),
            "word ".repeat(60_000).trim_end().len(),
            "{} arrives whole",
            e.subject
        );
    }
    let sizes = delta_page_sizes(&env.requests().await);
    println!("delta page sizes asked for: {sizes:?}");
    // The first page (10) knows nothing of the mail yet; the 4 left come one per page.
    assert!(sizes.len() >= 5, "one message per page after the first: {sizes:?}");
    assert_eq!(sizes[0], 10, "{sizes:?}");
    assert!(
        sizes[1..].iter().all(|&n| n == 1),
        "after a page of 300 KB messages, pages of one: {sizes:?}"
    );
}
