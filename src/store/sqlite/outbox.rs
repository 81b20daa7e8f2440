//! The outbox table: stored before the API answers, advanced step by step by the sender.

use sqlx::sqlite::SqlitePool;
use time::OffsetDateTime;

use super::{db_err, from_stored, to_stored};
use crate::domain::MailboxAddress;
use crate::store::{OutboundRecord, OutboundStatus, SendStep, StoreError};

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    String,
);

/// The column list, as a macro so queries stay `&'static str` (sqlx refuses built strings).
macro_rules! columns {
    () => {
        "id, mailbox, idempotency_key, request_hash, request, status, step, draft_id, error, attempts, \
         next_attempt_at, created_at, updated_at"
    };
}

fn record(op: &'static str, r: Row) -> Result<OutboundRecord, StoreError> {
    let bad = |what: &str, v: &str| StoreError::Database(format!("{op}: bad stored {what} '{v}'"));
    Ok(OutboundRecord {
        mailbox: MailboxAddress::parse(&r.1).map_err(|_| bad("mailbox", &r.1))?,
        status: OutboundStatus::parse(&r.5).ok_or_else(|| bad("status", &r.5))?,
        step: SendStep::parse(&r.6).ok_or_else(|| bad("step", &r.6))?,
        id: r.0,
        idempotency_key: r.2,
        request_hash: r.3,
        request: r.4,
        draft_id: r.7,
        error: r.8,
        attempts: u32::try_from(r.9).unwrap_or(0),
        next_attempt_at: from_stored(op, &r.10)?,
        created_at: from_stored(op, &r.11)?,
        updated_at: from_stored(op, &r.12)?,
    })
}

pub(super) async fn enqueue(pool: &SqlitePool, rec: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
    const OP: &str = "enqueue outbound";
    let mut tx = pool.begin().await.map_err(db_err(OP))?;
    sqlx::query(
        "INSERT INTO outbox (id, mailbox, idempotency_key, request_hash, request, status, step, draft_id, error, attempts,
                             next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (mailbox, idempotency_key) DO NOTHING",
    )
    .bind(&rec.id)
    .bind(rec.mailbox.as_str())
    .bind(&rec.idempotency_key)
    .bind(&rec.request_hash)
    .bind(&rec.request)
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
    let row: Row = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM outbox WHERE mailbox = ?1 AND idempotency_key = ?2"
    ))
    .bind(rec.mailbox.as_str())
    .bind(&rec.idempotency_key)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err(OP))?;
    tx.commit().await.map_err(db_err(OP))?;
    record(OP, row)
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read outbound";
    let row: Option<Row> = sqlx::query_as(concat!("SELECT ", columns!(), " FROM outbox WHERE id = ?1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err(OP))?;
    row.map(|r| record(OP, r)).transpose()
}

pub(super) async fn due(pool: &SqlitePool, now: OffsetDateTime, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
    const OP: &str = "read due outbound";
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM outbox WHERE status IN ('queued', 'sending') AND next_attempt_at <= ?1
         ORDER BY next_attempt_at, created_at LIMIT ?2"
    ))
    .bind(to_stored(OP, now)?)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    rows.into_iter().map(|r| record(OP, r)).collect()
}

pub(super) async fn update(pool: &SqlitePool, rec: &OutboundRecord) -> Result<(), StoreError> {
    const OP: &str = "update outbound";
    sqlx::query(
        "UPDATE outbox SET status = ?2, step = ?3, draft_id = ?4, error = ?5, attempts = ?6, next_attempt_at = ?7,
                           updated_at = ?8 WHERE id = ?1",
    )
    .bind(&rec.id)
    .bind(rec.status.as_str())
    .bind(rec.step.as_str())
    .bind(&rec.draft_id)
    .bind(&rec.error)
    .bind(i64::from(rec.attempts))
    .bind(to_stored(OP, rec.next_attempt_at)?)
    .bind(to_stored(OP, rec.updated_at)?)
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(())
}
