//! The outbox table on Postgres: enqueued on any replica, advanced by the owner's sender
//! (its updates fenced by the caller's transaction), loaded one row at a time.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

use super::{PgStore, db_err, to_address, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{OutboundRecord, OutboxStore, StoreError};

/// The columns after `request`, as a macro so queries stay `&'static str` (sqlx refuses built strings).
macro_rules! columns_after_request {
    () => {
        "kind, status, step, draft_id, error, attempts, next_attempt_at, created_at, updated_at, submitted_at, \
         internet_message_id, conversation_id"
    };
}

/// A row with its `request` column (empty where the query left the text out).
fn record(op: &'static str, r: &PgRow) -> Result<OutboundRecord, StoreError> {
    rows::outbound(op, r, r.try_get("request").map_err(db_err(op))?)
}

pub(super) async fn enqueue(pool: &PgPool, rec: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
    const OP: &str = "enqueue outbound";
    let mut tx = pool.begin().await.map_err(db_err(OP))?;
    sqlx::query(
        "INSERT INTO outbox (id, mailbox, idempotency_key, request_hash, request, kind, status, step, draft_id, error,
                             attempts, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (mailbox, idempotency_key) DO NOTHING",
    )
    .bind(&rec.id)
    .bind(rec.mailbox.as_str())
    .bind(&rec.idempotency_key)
    .bind(&rec.request_hash)
    .bind(&rec.request)
    .bind(&rec.kind)
    .bind(rec.status.as_str())
    .bind(rec.step.as_str())
    .bind(&rec.draft_id)
    .bind(&rec.error)
    .bind(i64::from(rec.attempts))
    .bind(to_stored(OP, rec.next_attempt_at)?)
    .bind(to_stored(OP, rec.created_at)?)
    .bind(to_stored(OP, rec.updated_at)?)
    .execute(&mut *tx)
    .await
    .map_err(db_err(OP))?;
    // The stored row without its payload: the caller has the request it just sent.
    let row = sqlx::query(concat!(
        "SELECT id, mailbox, idempotency_key, request_hash, '' AS request, ",
        columns_after_request!(),
        " FROM outbox WHERE mailbox = $1 AND idempotency_key = $2"
    ))
    .bind(rec.mailbox.as_str())
    .bind(&rec.idempotency_key)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err(OP))?;
    tx.commit().await.map_err(db_err(OP))?;
    record(OP, &row)
}

pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read outbound";
    let row = sqlx::query(concat!(
        "SELECT id, mailbox, idempotency_key, request_hash, '' AS request, ",
        columns_after_request!(),
        " FROM outbox WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|r| record(OP, &r)).transpose()
}

/// The newest `limit` requests, newest first, without their payloads (the status page).
pub(super) async fn recent(pool: &PgPool, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
    const OP: &str = "read recent outbound";
    let rows = sqlx::query(concat!(
        "SELECT id, mailbox, idempotency_key, request_hash, '' AS request, ",
        columns_after_request!(),
        " FROM outbox ORDER BY created_at DESC, id LIMIT $1"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    rows.iter().map(|r| record(OP, r)).collect()
}

pub(super) async fn by_key(
    pool: &PgPool,
    mailbox: &MailboxAddress,
    key: &str,
) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read outbound by key";
    let row = sqlx::query(concat!(
        "SELECT id, mailbox, idempotency_key, request_hash, '' AS request, ",
        columns_after_request!(),
        " FROM outbox WHERE mailbox = $1 AND idempotency_key = $2"
    ))
    .bind(mailbox.as_str())
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|r| record(OP, &r)).transpose()
}

/// Mailboxes with due rows; only those in `held` when given (the leases this replica holds).
pub(super) async fn due_mailboxes(
    pool: &PgPool,
    now: OffsetDateTime,
    held: Option<&[String]>,
) -> Result<Vec<MailboxAddress>, StoreError> {
    const OP: &str = "read outbound mailboxes";
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT mailbox FROM outbox WHERE status IN ('queued', 'sending') AND next_attempt_at <= $1
         AND ($2::TEXT[] IS NULL OR mailbox = ANY($2))",
    )
    .bind(to_stored(OP, now)?)
    .bind(held)
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    rows.into_iter().map(|(m,)| to_address(OP, &m)).collect()
}

pub(super) async fn next_due(
    pool: &PgPool,
    mailbox: &MailboxAddress,
    now: OffsetDateTime,
) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read due outbound";
    let row = sqlx::query(concat!(
        "SELECT id, mailbox, idempotency_key, request_hash,
                CASE WHEN step IN ('send_requested', 'accepted') THEN '' ELSE request END AS request, ",
        columns_after_request!(),
        " FROM outbox WHERE mailbox = $1 AND status IN ('queued', 'sending') AND next_attempt_at <= $2
         ORDER BY next_attempt_at, created_at LIMIT 1"
    ))
    .bind(mailbox.as_str())
    .bind(to_stored(OP, now)?)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|r| record(OP, &r)).transpose()
}

pub(super) async fn update(mut tx: Transaction<'static, Postgres>, rec: &OutboundRecord) -> Result<(), StoreError> {
    const OP: &str = "update outbound";
    sqlx::query(
        "UPDATE outbox SET status = $2, step = $3, draft_id = $4, error = $5, attempts = $6, next_attempt_at = $7,
                           updated_at = $8, submitted_at = $9, internet_message_id = $10, conversation_id = $11
         WHERE id = $1",
    )
    .bind(&rec.id)
    .bind(rec.status.as_str())
    .bind(rec.step.as_str())
    .bind(&rec.draft_id)
    .bind(&rec.error)
    .bind(i64::from(rec.attempts))
    .bind(to_stored(OP, rec.next_attempt_at)?)
    .bind(to_stored(OP, rec.updated_at)?)
    .bind(rec.submitted_at.map(|t| to_stored(OP, t)).transpose()?)
    .bind(&rec.internet_message_id)
    .bind(&rec.conversation_id)
    .execute(&mut *tx)
    .await
    .map_err(db_err(OP))?;
    tx.commit().await.map_err(db_err(OP))
}

pub(super) async fn prune(pool: &PgPool, before: OffsetDateTime) -> Result<u64, StoreError> {
    const OP: &str = "prune outbound";
    let done = sqlx::query(
        "UPDATE outbox SET request = '' WHERE status IN ('sent', 'failed', 'unconfirmed') AND updated_at < $1
         AND request <> ''",
    )
    .bind(to_stored(OP, before)?)
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(done.rows_affected())
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn enqueue_outbound(&self, record: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
        enqueue(&self.pool, record).await
    }

    async fn outbound(&self, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
        get(&self.pool, id).await
    }

    async fn update_outbound(&self, record: &OutboundRecord) -> Result<(), StoreError> {
        let tx = self.begin_for("update outbound", &record.mailbox).await?;
        update(tx, record).await
    }

    async fn recent_outbound(&self, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
        recent(&self.pool, limit).await
    }

    async fn outbound_by_key(&self, mailbox: &MailboxAddress, key: &str) -> Result<Option<OutboundRecord>, StoreError> {
        by_key(&self.pool, mailbox, key).await
    }

    async fn outbound_due_mailboxes(&self, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError> {
        // Each replica's sender sees only the mailboxes whose lease it holds.
        let held = self.fence.as_ref().map(|f| f.held_addresses());
        due_mailboxes(&self.pool, now, held.as_deref()).await
    }

    async fn next_due_outbound(
        &self,
        mailbox: &MailboxAddress,
        now: OffsetDateTime,
    ) -> Result<Option<OutboundRecord>, StoreError> {
        // Nothing is due here for a mailbox another replica owns: the sender's worker for it
        // ends (rather than retrying an error) and a new one starts if the lease comes back.
        if self.fence.as_ref().is_some_and(|f| !f.holds(mailbox)) {
            return Ok(None);
        }
        next_due(&self.pool, mailbox, now).await
    }

    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        prune(&self.pool, before).await
    }
}
