//! Small helpers: identifiers, timestamps as the services write them, base64.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// A random GUID, lower case, as Entra and Graph print them.
pub(crate) fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An opaque Exchange-style item id: a fixed prefix and random URL-safe base64.
pub(crate) fn item_id(prefix: &str) -> String {
    let bytes: [u8; 30] = std::array::from_fn(|_| fastrand::u8(..));
    format!("{prefix}{}", URL_SAFE.encode(bytes))
}

/// An opaque token (codes, refresh tokens, delta tokens).
pub(crate) fn opaque(len: usize) -> String {
    let bytes: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Graph's timestamps: RFC 3339, whole seconds, `Z`.
pub(crate) fn graph_time(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

/// Graph's `innerError.date`: no zone designator.
pub(crate) fn inner_error_date(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

/// The identity platform's error timestamp: `YYYY-MM-DD hh:mm:ssZ`.
pub(crate) fn aad_time(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

/// RFC 3339 with microseconds, for the request log.
pub(crate) fn log_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp (Graph `$filter` values, control API input).
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

/// Standard base64 (Graph `contentBytes`).
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64, tolerating missing padding.
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s.trim())
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim()).ok())
}

/// base64url without padding (JWT parts, thumbprints).
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding.
pub(crate) fn unb64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Lower-cases an address or id for map keys.
pub(crate) fn key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// Percent-decodes a URL path (`users/a%40b` → `users/a@b`); `+` stays a plus.
pub(crate) fn decode_path(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    url::form_urlencoded::parse(format!("x={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// A list-valued control field: a JSON list of strings, or one string with the items
/// separated by spaces (the way OAuth writes scopes).
pub(crate) fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Spaced(String),
    }
    Ok(match <Either as serde::Deserialize>::deserialize(d)? {
        Either::List(items) => items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Either::Spaced(s) => s.split_whitespace().map(str::to_string).collect(),
    })
}
