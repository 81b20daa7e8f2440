//! Consent in a cluster: the browser may come back to any replica, not the one that owns the
//! mailbox (a load balancer picks). The callback completes there, through the shared store, and
//! the owner resumes the mailbox.

use serde_json::Value;

use crate::replicas::{LIMIT, Setup, client_id, owners, replica_id};
use crate::support::delegated::{STORE_KEY, wait_state};
use crate::support::{API_TOKEN, addr, get_url, poll_until};

/// Where the load balancer is: every replica's `server.public_url`, so the redirect URI is the
/// same whichever replica started the flow.
const PUBLIC_URL: &str = "https://inboxd.lb.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consent_callback_reaching_a_replica_that_does_not_own_the_mailbox_resumes_it() {
    let user = addr("rc-user");
    let setup = Setup::new(&[]).await;
    setup.env.mailboxes(std::slice::from_ref(&user)).await;
    // One app registration for the cluster (as one ConfigMap gives every replica), a store key
    // for refresh tokens, the shared public URL, and the delegated mailbox.
    for path in &setup.configs {
        let mut toml = std::fs::read_to_string(path).unwrap();
        for i in 1..3 {
            toml = toml.replace(&format!("\"{}\"", client_id(i)), &format!("\"{}\"", client_id(0)));
        }
        toml = toml
            .replacen(
                "[store]\n",
                &format!("[store]\nencryption_key = \"dev:{STORE_KEY}\"\n"),
                1,
            )
            .replacen("[server]\n", &format!("[server]\npublic_url = \"{PUBLIC_URL}\"\n"), 1);
        toml.push_str(&format!(
            "\n[[mailboxes]]\naddress = \"{user}\"\napp = \"test\"\naccess = \"delegated\"\n"
        ));
        std::fs::write(path, toml).unwrap();
    }
    let replicas = setup.start_all().await;

    // Wait for an owner; every replica shows the mailbox flagged until someone consents.
    let owner = poll_until(LIMIT, &format!("an owner for {user}"), || async {
        let seen = owners(&replicas[0]).await.unwrap_or_default();
        match seen.get(&user) {
            Some(Some(owner)) => Ok(owner.clone()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await;
    let other = (0..3).find(|&i| replica_id(i) != owner).unwrap();
    let other_addr = replicas[other].addr();
    wait_state(&setup.env, other_addr, &user, "needs_reconsent", LIMIT).await;

    // The flow starts on the replica that does not own the mailbox...
    let resp = reqwest::Client::new()
        .get(format!("http://{other_addr}/v1/mailboxes/{user}/consent"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let url = resp.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_string();
    let (status, location, body) = get_url(&url, false).await;
    assert_eq!(status, 302, "authorize: {body}");
    let callback = location.expect("authorize redirects back");
    let rest = callback
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("the redirect goes to the public URL: {callback}"));
    // ...and the browser comes back to it too (the load balancer's pick): not the owner.
    setup.env.deliver(&user, "after consent in a cluster").await;
    let (status, _, page) = get_url(&format!("http://{other_addr}{rest}"), false).await;
    assert_eq!(status, 200, "callback on {}: {page}", replica_id(other));

    // The owner was woken through the store: active on every replica's view, and the mail flows.
    for binary in &replicas {
        wait_state(&setup.env, binary.addr(), &user, "active", LIMIT).await;
    }
    poll_until(
        LIMIT,
        &format!(
            "mail of {user} delivered after consent on {} (owner {owner})",
            replica_id(other)
        ),
        || async {
            if setup.delivered().is_empty() {
                Err("nothing delivered".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    println!(
        "consent completed on {} for a mailbox owned by {owner}; {} message(s) delivered",
        replica_id(other),
        setup.delivered().len()
    );
}
