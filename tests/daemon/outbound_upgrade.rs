//! A reply queued before a schema upgrade is sent after it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::support::Env;
use crate::support::outbound::*;

/// The store as the release before the payload table left it: schema migrations 1 to 7.
const SCHEMA_BEFORE_PAYLOADS: [(i64, &str, &str); 7] = [
    (1, "store", include_str!("../../migrations/0001_store.sql")),
    (2, "outbox", include_str!("../../migrations/0002_outbox.sql")),
    (3, "delegated", include_str!("../../migrations/0003_delegated.sql")),
    (
        4,
        "quarantine_replay",
        include_str!("../../migrations/0004_quarantine_replay.sql"),
    ),
    (
        5,
        "resync_window",
        include_str!("../../migrations/0005_resync_window.sql"),
    ),
    (
        6,
        "outbound_confirm",
        include_str!("../../migrations/0006_outbound_confirm.sql"),
    ),
    (
        7,
        "subscriptions",
        include_str!("../../migrations/0007_subscriptions.sql"),
    ),
];

/// A reply queued by the previous release (its text inside the outbox row) is sent, whole and
/// once, by the real binary after the upgrade moves the text into its own table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_queued_before_the_upgrade_is_sent_after_it() {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};

    let env = Env::new().await;
    env.mailboxes(&[SUPPORT.into(), ANN.into()]).await;
    let original = from_ann(&env, "Queued across the upgrade").await;
    // More than one stored piece's worth, to show a migrated text is read back whole.
    let mut file = vec![0u8; 3 * 1024 * 1024];
    fastrand::fill(&mut file);
    let request = json!({
        "kind": "reply", "original": original, "comment": "Queued before the upgrade, façade €.",
        "body": null, "subject": null, "to": [], "cc": [], "bcc": [],
        "attachments": [{"name": "logs.bin", "content_type": "application/octet-stream",
                         "content_base64": STANDARD.encode(&file), "is_inline": false, "content_id": null}],
    })
    .to_string();

    let url = format!("sqlite://{}?mode=rwc", env.dir.path().join("inboxd.db").display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let previous = Migrator::with_migrations(
        SCHEMA_BEFORE_PAYLOADS
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false))
            .collect(),
    );
    previous.run(&db).await.unwrap();
    let id = "0b6f7f3e-5c1d-4d7a-9a51-7c1f0f0e2a10";
    let then = "2026-01-01T00:00:00.000000000Z";
    sqlx::query(
        "INSERT INTO outbox (id, mailbox, idempotency_key, request_hash, request, kind, status, step, attempts,
                             next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, 'upgrade-1', 'hash-upgrade-1', ?3, 'reply', 'queued', 'new', 0, ?4, ?4, ?4)",
    )
    .bind(id)
    .bind(SUPPORT)
    .bind(&request)
    .bind(then)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    let config = env.write_config(&config(&env, &[SUPPORT]));
    let binary = env.spawn_binary(&config, 0).await;
    let api = Api::at(binary.addr());
    api.wait_sent(id).await;
    let received = exactly_one(&env, ANN, "inbox", "RE: Queued across the upgrade").await;
    exactly_one(&env, SUPPORT, "sentitems", "RE: Queued across the upgrade").await;
    assert!(
        received["body"]["content"]
            .as_str()
            .is_some_and(|b| b.contains("Queued before the upgrade, façade €.")),
        "the comment did not survive: {}",
        received["body"]
    );
    let attachments = received["attachments"].as_array().cloned().unwrap_or_default();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    let content = STANDARD
        .decode(attachments[0]["content_base64"].as_str().unwrap_or_default())
        .unwrap();
    assert_eq!(sha256(&content), sha256(&file), "the attachment changed on the way");

    // The row kept its id and key; its text moved out of it, byte for byte.
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let columns: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info('outbox')")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(
        !columns.iter().any(|(c,)| c == "request"),
        "the outbox row still carries the text: {columns:?}"
    );
    let moved: Vec<u8> = sqlx::query_scalar("SELECT chunk FROM outbox_payloads WHERE id = ?1 AND seq = 0")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(moved, request.as_bytes());
    db.close().await;
    let (status, view) = api.outbound(id).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("sent")), "{view}");
}
