//! How both SQL stores write the values they share: timestamps as fixed-width UTC text (text
//! order is time order, nanoseconds survive), receipt times as unix milliseconds, errors that
//! name the operation.

use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use super::StoreError;
use crate::domain::MailboxAddress;

/// Stored timestamps: UTC, always nine fractional digits, so text order is time order.
const STORED_TIME: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Maps a database error to a `StoreError` that names the operation that failed.
pub(super) fn db_err(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Database(format!("{operation}: {e}"))
}

/// Formats a timestamp the way the schema stores them.
pub(super) fn to_stored(operation: &'static str, t: OffsetDateTime) -> Result<String, StoreError> {
    t.to_offset(UtcOffset::UTC)
        .format(STORED_TIME)
        .map_err(|e| StoreError::Database(format!("{operation}: cannot store timestamp {t}: {e}")))
}

/// Parses a stored timestamp.
pub(super) fn from_stored(operation: &'static str, s: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| StoreError::Database(format!("{operation}: bad stored timestamp '{s}': {e}")))
}

/// Parses a stored mailbox address.
pub(super) fn to_address(operation: &'static str, s: &str) -> Result<MailboxAddress, StoreError> {
    MailboxAddress::parse(s).map_err(|e| StoreError::Database(format!("{operation}: bad stored mailbox: {e}")))
}

/// Unix milliseconds, the unit of `delivered_keys.delivered_at`.
pub(super) fn unix_millis(t: OffsetDateTime) -> i64 {
    // Always in range: OffsetDateTime spans far fewer than 2^63 milliseconds.
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`unix_millis`].
pub(super) fn from_unix_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Database(format!("bad stored time {ms}: {e}")))
}
