//! The outbox: a row per request, advanced step by step by the sender and loaded one at a
//! time; the request text apart in `outbox_payloads`, written once in pieces, read back once
//! when its row's turn comes and deleted once the row is finished and past retention.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use time::OffsetDateTime;

use super::{SqliteStore, db_err, to_address, to_stored};
use crate::domain::MailboxAddress;
use crate::store::rows;
use crate::store::{OutboundRecord, OutboxStore, SendStep, StoreError};

/// The outbox row's columns, as a macro so queries stay `&'static str` (sqlx refuses built strings).
macro_rules! columns {
    () => {
        "id, mailbox, idempotency_key, request_hash, kind, status, step, draft_id, error, attempts, \
         next_attempt_at, created_at, updated_at, submitted_at, internet_message_id, conversation_id"
    };
}

/// A row without its request text (`request` is empty).
fn record(op: &'static str, r: &SqliteRow) -> Result<OutboundRecord, StoreError> {
    rows::outbound(op, r, String::new())
}

/// Largest stored piece of a request's text, in bytes. Binding a value makes copies of it
/// (sqlx's argument, SQLite's own): pieces keep those small, whatever the request's size.
const PIECE_BYTES: usize = 1024 * 1024;

/// `text` cut into pieces of at most [`PIECE_BYTES`], each ending on a character boundary.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(PIECE_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

pub(super) async fn enqueue(pool: &SqlitePool, rec: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
    const OP: &str = "enqueue outbound";
    let mut tx = pool.begin().await.map_err(db_err(OP))?;
    let inserted = sqlx::query(
        "INSERT INTO outbox (id, mailbox, idempotency_key, request_hash, kind, status, step, draft_id, error,
                             attempts, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (mailbox, idempotency_key) DO NOTHING",
    )
    .bind(&rec.id)
    .bind(rec.mailbox.as_str())
    .bind(&rec.idempotency_key)
    .bind(&rec.request_hash)
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
    .map_err(db_err(OP))?
    .rows_affected();
    // A key already used keeps the request stored with it.
    if inserted == 1 {
        for (seq, piece) in pieces(&rec.request).enumerate() {
            sqlx::query("INSERT INTO outbox_payloads (id, seq, chunk) VALUES (?1, ?2, ?3)")
                .bind(&rec.id)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .bind(piece.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(db_err(OP))?;
        }
    }
    // The stored row without its payload: the caller has the request it just sent.
    let row = sqlx::query(concat!(
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
    record(OP, &row)
}

/// The request text stored for row `id`, its pieces read one at a time into one string.
async fn payload(pool: &SqlitePool, id: &str) -> Result<String, StoreError> {
    const OP: &str = "read outbound request";
    // One read transaction: the size and the pieces come from the same snapshot.
    let mut tx = pool.begin().await.map_err(db_err(OP))?;
    // length() of a blob is read from the record header, not from its pages.
    let size: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(length(chunk)), 0) FROM outbox_payloads WHERE id = ?1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(OP))?;
    let mut text = String::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut after = -1i64;
    while let Some(row) =
        sqlx::query("SELECT seq, chunk FROM outbox_payloads WHERE id = ?1 AND seq > ?2 ORDER BY seq LIMIT 1")
            .bind(id)
            .bind(after)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err(OP))?
    {
        after = row.try_get("seq").map_err(db_err(OP))?;
        let bytes: &[u8] = row.try_get("chunk").map_err(db_err(OP))?;
        let piece = std::str::from_utf8(bytes)
            .map_err(|e| StoreError::Database(format!("{OP}: piece {after} of outbound {id} is not UTF-8: {e}")))?;
        text.push_str(piece);
    }
    tx.commit().await.map_err(db_err(OP))?;
    Ok(text)
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read outbound";
    let row = sqlx::query(concat!("SELECT ", columns!(), " FROM outbox WHERE id = ?1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err(OP))?;
    row.map(|r| record(OP, &r)).transpose()
}

/// The newest `limit` requests, newest first, without their payloads (the status page).
pub(super) async fn recent(pool: &SqlitePool, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
    const OP: &str = "read recent outbound";
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM outbox ORDER BY created_at DESC, id LIMIT ?1"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    rows.iter().map(|r| record(OP, r)).collect()
}

pub(super) async fn by_key(
    pool: &SqlitePool,
    mailbox: &MailboxAddress,
    key: &str,
) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read outbound by key";
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM outbox WHERE mailbox = ?1 AND idempotency_key = ?2"
    ))
    .bind(mailbox.as_str())
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    row.map(|r| record(OP, &r)).transpose()
}

pub(super) async fn due_mailboxes(pool: &SqlitePool, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError> {
    const OP: &str = "read outbound mailboxes";
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT mailbox FROM outbox WHERE status IN ('queued', 'sending') AND next_attempt_at <= ?1",
    )
    .bind(to_stored(OP, now)?)
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    rows.into_iter().map(|(m,)| to_address(OP, &m)).collect()
}

/// The mailbox's oldest due row, with its request text unless `send` was already asked for
/// (from then on the sender only looks for the sent copy).
pub(super) async fn next_due(
    pool: &SqlitePool,
    mailbox: &MailboxAddress,
    now: OffsetDateTime,
) -> Result<Option<OutboundRecord>, StoreError> {
    const OP: &str = "read due outbound";
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM outbox WHERE mailbox = ?1 AND status IN ('queued', 'sending') AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, created_at LIMIT 1"
    ))
    .bind(mailbox.as_str())
    .bind(to_stored(OP, now)?)
    .fetch_optional(pool)
    .await
    .map_err(db_err(OP))?;
    let Some(mut rec) = row.map(|r| record(OP, &r)).transpose()? else {
        return Ok(None);
    };
    if !matches!(rec.step, SendStep::SendRequested | SendStep::Accepted) {
        rec.request = payload(pool, &rec.id).await?;
    }
    Ok(Some(rec))
}

/// Writes the row's progress; the request text is never rewritten.
pub(super) async fn update(pool: &SqlitePool, rec: &OutboundRecord) -> Result<(), StoreError> {
    const OP: &str = "update outbound";
    sqlx::query(
        "UPDATE outbox SET status = ?2, step = ?3, draft_id = ?4, error = ?5, attempts = ?6, next_attempt_at = ?7,
                           updated_at = ?8, submitted_at = ?9, internet_message_id = ?10, conversation_id = ?11
         WHERE id = ?1",
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
    .execute(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(())
}

/// Deletes the request text of rows finished before `before`; returns how many rows lost it.
/// The rows stay: status, ids and the idempotency answer outlive the payload.
pub(super) async fn prune(pool: &SqlitePool, before: OffsetDateTime) -> Result<u64, StoreError> {
    const OP: &str = "prune outbound";
    let ids: Vec<(String,)> = sqlx::query_as(
        "DELETE FROM outbox_payloads WHERE id IN (
             SELECT id FROM outbox WHERE status IN ('sent', 'failed', 'unconfirmed') AND updated_at < ?1)
         RETURNING id",
    )
    .bind(to_stored(OP, before)?)
    .fetch_all(pool)
    .await
    .map_err(db_err(OP))?;
    Ok(ids.into_iter().map(|(id,)| id).collect::<HashSet<_>>().len() as u64)
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn enqueue_outbound(&self, record: &OutboundRecord) -> Result<OutboundRecord, StoreError> {
        enqueue(&self.pool, record).await
    }

    async fn outbound(&self, id: &str) -> Result<Option<OutboundRecord>, StoreError> {
        get(&self.pool, id).await
    }

    async fn update_outbound(&self, record: &OutboundRecord) -> Result<(), StoreError> {
        update(&self.pool, record).await
    }

    async fn recent_outbound(&self, limit: u32) -> Result<Vec<OutboundRecord>, StoreError> {
        recent(&self.pool, limit).await
    }

    async fn outbound_by_key(&self, mailbox: &MailboxAddress, key: &str) -> Result<Option<OutboundRecord>, StoreError> {
        by_key(&self.pool, mailbox, key).await
    }

    async fn outbound_due_mailboxes(&self, now: OffsetDateTime) -> Result<Vec<MailboxAddress>, StoreError> {
        due_mailboxes(&self.pool, now).await
    }

    async fn next_due_outbound(
        &self,
        mailbox: &MailboxAddress,
        now: OffsetDateTime,
    ) -> Result<Option<OutboundRecord>, StoreError> {
        next_due(&self.pool, mailbox, now).await
    }

    async fn prune_outbound(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        prune(&self.pool, before).await
    }
}

#[cfg(test)]
mod tests {
    use time::{Duration, OffsetDateTime};

    use super::super::SqliteStore;
    use crate::domain::MailboxAddress;
    use crate::store::prelude::*;
    use crate::store::{OutboundRecord, OutboundStatus, SendStep};

    fn row(mailbox: &MailboxAddress, key: &str, now: OffsetDateTime) -> OutboundRecord {
        OutboundRecord::queued(
            mailbox,
            key.into(),
            format!("hash-{key}"),
            format!("{{\"kind\":\"reply\",\"payload\":\"{}\"}}", "x".repeat(10_000)),
            "reply",
            now,
        )
    }

    #[tokio::test]
    async fn rows_load_one_at_a_time_and_finished_ones_lose_their_payload_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("inboxd.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let (a, b) = (
            MailboxAddress::parse("a@x.test").unwrap(),
            MailboxAddress::parse("b@x.test").unwrap(),
        );
        let now = OffsetDateTime::now_utc();
        let first = store
            .enqueue_outbound(&row(&a, "k1", now - Duration::seconds(2)))
            .await
            .unwrap();
        let second = store
            .enqueue_outbound(&row(&a, "k2", now - Duration::seconds(1)))
            .await
            .unwrap();
        store.enqueue_outbound(&row(&b, "k3", now)).await.unwrap();
        assert!(first.request.is_empty(), "enqueue answers without echoing the payload");
        let mut due = store.outbound_due_mailboxes(now).await.unwrap();
        due.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(due, vec![a.clone(), b.clone()]);

        // The oldest due row of the mailbox, with its payload.
        let mut next = store.next_due_outbound(&a, now).await.unwrap().unwrap();
        assert_eq!(next.id, first.id);
        assert!(next.request.len() > 10_000);
        // Handed to Graph: loaded without the payload from then on.
        next.step = SendStep::Accepted;
        next.status = OutboundStatus::Sending;
        next.submitted_at = Some(now);
        next.internet_message_id = Some("<m@x>".into());
        store.update_outbound(&next).await.unwrap();
        let again = store.next_due_outbound(&a, now).await.unwrap().unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.request.is_empty());
        assert_eq!(again.internet_message_id.as_deref(), Some("<m@x>"));
        assert_eq!(
            again.submitted_at.map(|t| t.unix_timestamp()),
            Some(now.unix_timestamp())
        );

        // Finished long ago: pruned; finished recently or unfinished: kept.
        let mut done = again;
        done.status = OutboundStatus::Sent;
        done.updated_at = now - Duration::days(8);
        store.update_outbound(&done).await.unwrap();
        let mut recent = store.next_due_outbound(&a, now).await.unwrap().unwrap();
        assert_eq!(recent.id, second.id);
        recent.status = OutboundStatus::Unconfirmed;
        store.update_outbound(&recent).await.unwrap();
        assert_eq!(store.prune_outbound(now - Duration::days(7)).await.unwrap(), 1);
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT o.id, COALESCE((SELECT SUM(length(chunk)) FROM outbox_payloads p WHERE p.id = o.id), 0)
             FROM outbox o ORDER BY o.created_at",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(sizes[0], (first.id.clone(), 0));
        assert!(sizes[1].1 > 10_000 && sizes[2].1 > 10_000, "{sizes:?}");
        // Status, ids and the idempotency answer stay.
        let kept = store.outbound_by_key(&a, "k1").await.unwrap().unwrap();
        assert_eq!(
            (kept.id, kept.status, kept.request_hash),
            (first.id, OutboundStatus::Sent, "hash-k1".into())
        );
        assert!(store.next_due_outbound(&a, now).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_text_is_stored_in_pieces_on_character_boundaries_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("inboxd.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let a = MailboxAddress::parse("a@x.test").unwrap();
        let now = OffsetDateTime::now_utc();
        // Two- and three-byte characters straddle every piece boundary.
        let unit = format!("{}é€", "x".repeat(1000));
        let text = unit.repeat(3 * super::PIECE_BYTES / unit.len() + 7);
        let mut rec = row(&a, "big", now);
        rec.request = text.clone();
        let stored = store.enqueue_outbound(&rec).await.unwrap();
        let pieces: Vec<(i64, i64)> =
            sqlx::query_as("SELECT seq, length(chunk) FROM outbox_payloads WHERE id = ?1 ORDER BY seq")
                .bind(&stored.id)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(pieces.len(), 4, "{pieces:?}");
        assert!(
            pieces.iter().all(|(_, n)| *n as usize <= super::PIECE_BYTES),
            "{pieces:?}"
        );
        assert_eq!(pieces.iter().map(|(_, n)| *n as usize).sum::<usize>(), text.len());
        let due = store.next_due_outbound(&a, now).await.unwrap().unwrap();
        assert_eq!(due.id, stored.id);
        assert!(due.request == text, "the text read back differs from the one stored");

        // The same key again stores nothing new and keeps the first text.
        let mut again = row(&a, "big", now);
        again.request = "other".into();
        assert_eq!(store.enqueue_outbound(&again).await.unwrap().id, stored.id);
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_payloads")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(count, 4);
        // Status updates leave the text alone.
        let mut progress = due;
        progress.request = String::new();
        progress.step = SendStep::Draft;
        progress.draft_id = Some("draft-1".into());
        store.update_outbound(&progress).await.unwrap();
        let due = store.next_due_outbound(&a, now).await.unwrap().unwrap();
        assert_eq!(due.draft_id.as_deref(), Some("draft-1"));
        assert!(due.request == text, "an update changed the stored text");
    }
}
