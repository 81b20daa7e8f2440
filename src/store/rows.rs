//! How both SQL stores turn the rows they read into the store's types: the same columns in the
//! same order on SQLite and PostgreSQL, so one decoder each, whatever the dialect of the query.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::codec::{db_err, from_stored, from_unix_millis, to_address};
use super::{
    ConsentState, DelegatedToken, DeltaWindow, MailboxStatus, OutboundRecord, OutboundStatus, QuarantineEntry,
    SendStep, StoreError, SubscriptionRecord,
};
use crate::domain::{MailboxAddress, MailboxState};

/// A row of `start_from_ms, checkpoint_ms` (none: the folder has no link yet).
pub(super) fn delta_window(row: Option<(Option<i64>, Option<i64>)>) -> Result<DeltaWindow, StoreError> {
    let (start, checkpoint) = row.unwrap_or_default();
    Ok(DeltaWindow {
        start_from: start.map(from_unix_millis).transpose()?,
        checkpoint: checkpoint.map(from_unix_millis).transpose()?,
    })
}

/// A row of `mailbox, state, reason, aadsts, since, last_success_at`.
pub(super) type StatusRow = (String, String, Option<String>, Option<i64>, String, Option<String>);

/// A stored status and its mailbox.
pub(super) fn status(
    op: &'static str,
    (mailbox, state, reason, aadsts, since, last_success_at): StatusRow,
) -> Result<(MailboxAddress, MailboxStatus), StoreError> {
    let status = MailboxStatus {
        state: MailboxState::parse(&state)
            .ok_or_else(|| StoreError::Database(format!("{op}: unknown state '{state}' of {mailbox}")))?,
        reason,
        aadsts: aadsts
            .map(u32::try_from)
            .transpose()
            .map_err(|e| StoreError::Database(format!("{op}: bad aadsts of {mailbox}: {e}")))?,
        since: from_stored(op, &since)?,
        last_success_at: last_success_at.as_deref().map(|t| from_stored(op, t)).transpose()?,
    };
    Ok((to_address(op, &mailbox)?, status))
}

/// A row of `id, mailbox, folder, graph_id, reason, at`.
pub(super) type QuarantineRow = (String, String, String, String, String, String);

/// A stored quarantine entry.
pub(super) fn quarantine_entry(
    op: &'static str,
    (id, mailbox, folder, graph_id, reason, at): QuarantineRow,
) -> Result<QuarantineEntry, StoreError> {
    Ok(QuarantineEntry {
        id,
        mailbox: to_address(op, &mailbox)?,
        folder,
        graph_id,
        reason,
        at: from_stored(op, &at)?,
    })
}

/// A row of `sealed_token, scopes, last_used_at`.
pub(super) type TokenRow = (Vec<u8>, String, String);

/// The stored refresh token of `mailbox`.
pub(super) fn delegated_token(
    op: &'static str,
    mailbox: &MailboxAddress,
    (sealed_token, scopes, last_used_at): TokenRow,
) -> Result<DelegatedToken, StoreError> {
    Ok(DelegatedToken {
        mailbox: mailbox.clone(),
        sealed_token,
        scopes,
        last_used_at: from_stored(op, &last_used_at)?,
    })
}

/// A row of `mailbox, sealed_verifier, expires_at`.
pub(super) type ConsentRow = (String, Vec<u8>, String);

/// The stored consent flow of `state`.
pub(super) fn consent_state(
    op: &'static str,
    state: &str,
    (mailbox, sealed_verifier, expires_at): ConsentRow,
) -> Result<ConsentState, StoreError> {
    Ok(ConsentState {
        state: state.to_string(),
        mailbox: to_address(op, &mailbox)?,
        sealed_verifier,
        expires_at: from_stored(op, &expires_at)?,
    })
}

/// A row of `folder, id, expires_at, sealed_client_state, notification_url`.
pub(super) type SubscriptionRow = (String, String, String, Vec<u8>, String);

/// A stored subscription of `mailbox`.
pub(super) fn subscription(
    op: &'static str,
    mailbox: &MailboxAddress,
    (folder, id, expires_at, sealed_client_state, notification_url): SubscriptionRow,
) -> Result<SubscriptionRecord, StoreError> {
    Ok(SubscriptionRecord {
        mailbox: mailbox.clone(),
        folder,
        id,
        expires_at: from_stored(op, &expires_at)?,
        sealed_client_state,
        notification_url,
    })
}

/// An outbox row (every column but the request) with the request text given; the status and
/// step are stored by name.
pub(super) fn outbound<R>(op: &'static str, r: &R, request: String) -> Result<OutboundRecord, StoreError>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let text = |name: &str| -> Result<String, StoreError> { r.try_get::<String, _>(name).map_err(db_err(op)) };
    let opt =
        |name: &str| -> Result<Option<String>, StoreError> { r.try_get::<Option<String>, _>(name).map_err(db_err(op)) };
    let bad = |what: &str, v: &str| StoreError::Database(format!("{op}: bad stored {what} '{v}'"));
    let (mailbox, status, step) = (text("mailbox")?, text("status")?, text("step")?);
    Ok(OutboundRecord {
        mailbox: MailboxAddress::parse(&mailbox).map_err(|_| bad("mailbox", &mailbox))?,
        status: OutboundStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        step: SendStep::parse(&step).ok_or_else(|| bad("step", &step))?,
        id: text("id")?,
        idempotency_key: text("idempotency_key")?,
        request_hash: text("request_hash")?,
        request,
        kind: text("kind")?,
        draft_id: opt("draft_id")?,
        error: opt("error")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts").map_err(db_err(op))?).unwrap_or(0),
        next_attempt_at: from_stored(op, &text("next_attempt_at")?)?,
        created_at: from_stored(op, &text("created_at")?)?,
        updated_at: from_stored(op, &text("updated_at")?)?,
        submitted_at: opt("submitted_at")?.map(|t| from_stored(op, &t)).transpose()?,
        internet_message_id: opt("internet_message_id")?,
        conversation_id: opt("conversation_id")?,
    })
}
