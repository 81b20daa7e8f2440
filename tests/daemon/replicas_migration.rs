//! A single-node SQLite store moved to PostgreSQL with the documented script: a replica on
//! PostgreSQL carries on with nothing lost or repeated.

use std::collections::HashSet;

use inboxd::store::prelude::*;
use time::OffsetDateTime;

use crate::replicas::{LIMIT, Schema};
use crate::support::{Env, eventually, read_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_to_postgres_with_nothing_lost_or_repeated() {
    let env = Env::new().await;
    let addresses: Vec<String> = (0..2).map(|n| format!("move{n}@contoso.com")).collect();
    env.mailboxes(&addresses).await;
    for m in &addresses {
        for n in 0..3 {
            env.deliver(m, &format!("before the move {n}")).await;
        }
    }
    // A single-node daemon on SQLite reads the first messages, then stops.
    let sqlite_config = env.config(&addresses, "1s");
    let daemon = env.start(&sqlite_config).await;
    assert_eq!(env.wait_for_events(6, LIMIT).await.len(), 6);
    daemon.stop().await;
    let before: HashSet<String> = env.events().into_iter().map(|e| e.graph_id).collect();
    // What the ingest did not write: an outbox row, a sealed token, a quarantined message and a
    // subscription, with empty and missing values on the way.
    let sqlite_url = format!("sqlite://{}", env.dir.path().join("inboxd.db").display());
    let m0 = inboxd::domain::MailboxAddress::parse(&addresses[0]).unwrap();
    let now = OffsetDateTime::now_utc();
    let outbound = inboxd::store::OutboundRecord::queued(
        &m0,
        "key, with \"quotes\"".into(),
        "hash".into(),
        // Several stored pieces in SQLite, with multi-byte characters: joined back in order.
        format!(
            "{{\"kind\":\"reply\",\"comment\":\"line1\\nline2 {}\"}}",
            "é€x".repeat(450_000)
        ),
        "reply",
        now,
    );
    let token = inboxd::store::DelegatedToken {
        mailbox: m0.clone(),
        sealed_token: vec![0, 1, 2, 254, 255],
        scopes: "Mail.ReadWrite offline_access".into(),
        last_used_at: now,
    };
    let quarantined = inboxd::store::QuarantineEntry {
        id: String::new(),
        mailbox: m0.clone(),
        folder: "inbox".into(),
        graph_id: "AAMk=".into(),
        reason: "sink refused: 422".into(),
        at: now,
    };
    {
        let sqlite = inboxd::store::SqliteStore::open(&sqlite_url).await.unwrap();
        sqlite.enqueue_outbound(&outbound).await.unwrap();
        sqlite.save_delegated_token(&token).await.unwrap();
        sqlite.quarantine(&quarantined).await.unwrap();
        sqlite.close().await;
    }

    // The documented move: inboxd creates its tables on an empty schema, the script copies.
    let schema = Schema::create().await;
    inboxd::store::PgStore::open(&schema.url()).await.unwrap().close().await;
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/migrate-sqlite-to-postgres.sh"
        ))
        .arg(env.dir.path().join("inboxd.db"))
        .arg(schema.url())
        .output()
        .expect("the script runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        let pg = inboxd::store::PgStore::open(&schema.url()).await.unwrap();
        let copied = pg
            .outbound_by_key(&m0, &outbound.idempotency_key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (copied.id.as_str(), copied.status),
            (outbound.id.as_str(), outbound.status)
        );
        let due = pg.next_due_outbound(&m0, now).await.unwrap().unwrap();
        assert_eq!(due.request, outbound.request, "the payload survives the copy");
        assert_eq!(due.draft_id, None);
        assert_eq!(pg.delegated_token(&m0).await.unwrap(), Some(token.clone()));
        let q = pg.quarantined(Some(&m0)).await.unwrap();
        assert_eq!(
            (q.len(), q[0].graph_id.as_str(), q[0].reason.as_str()),
            (1, "AAMk=", "sink refused: 422")
        );
        assert_eq!(pg.delivered_total(&m0).await.unwrap(), 3);
        pg.close().await;
    }

    // More mail arrives; a replica on PostgreSQL carries on where SQLite stopped.
    for m in &addresses {
        env.deliver(m, "after the move").await;
    }
    let pg_events = env.dir.path().join("after-move.ndjson");
    let pg_config = sqlite_config
        .replace(
            &format!("url = \"sqlite://{}\"", env.dir.path().join("inboxd.db").display()),
            &format!(
                "url = \"{}\"\n\n[cluster]\nreplica_id = \"mover\"\nlease_ttl = \"3s\"",
                schema.url()
            ),
        )
        .replace(
            &env.events_path().display().to_string(),
            &pg_events.display().to_string(),
        );
    assert!(pg_config.contains("[cluster]"), "{pg_config}");
    let daemon = env.start(&pg_config).await;
    let arrived = eventually(LIMIT, || async { read_events(&pg_events).len() >= 2 }).await;
    assert!(arrived, "the PostgreSQL replica delivered nothing");
    daemon.stop().await;
    let after = read_events(&pg_events);
    let repeated: Vec<_> = after.iter().filter(|e| before.contains(&e.graph_id)).collect();
    println!(
        "{} messages before the move, {} after it, {} delivered again",
        before.len(),
        after.len(),
        repeated.len()
    );
    assert!(
        repeated.is_empty(),
        "messages delivered again after the move: {repeated:?}"
    );
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|e| e.subject == "after the move"));
}
