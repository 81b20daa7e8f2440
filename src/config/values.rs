//! Parsers for the value types the schema uses: durations, addresses, URLs and the small
//! enumerations of the mailbox settings.

use std::net::SocketAddr;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::{Host, Url};

use super::reader::{Errors, Field};
use super::{Access, AfterIngest, StartAt};

/// A human duration: `"30s"`, `"5m"`, `"1h30m"`. Zero is refused unless `allow_zero`; a value
/// over `max` is refused too (inboxd could not honour it, and timer arithmetic must not overflow).
pub(super) fn duration(field: &Field<'_>, errors: &mut Errors, allow_zero: bool, max: Duration) -> Option<Duration> {
    let text = field.text(errors, "a duration such as \"30s\"")?.trim();
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && !allow_zero => {
            field.fail(errors, "must be longer than 0s");
            None
        }
        Ok(d) if d > max => {
            field.fail(
                errors,
                format!("'{text}' is too long; at most {}", humantime::format_duration(max)),
            );
            None
        }
        Ok(d) => Some(d),
        Err(err) => {
            field.fail(
                errors,
                format!("'{text}' is not a duration ({err}); write e.g. \"30s\", \"5m\", \"1h30m\""),
            );
            None
        }
    }
}

/// `ip:port`, e.g. `0.0.0.0:8080` or `[::1]:0`.
pub(super) fn socket_addr(field: &Field<'_>, errors: &mut Errors) -> Option<SocketAddr> {
    let text = field.text(errors, "a socket address such as \"0.0.0.0:8080\"")?.trim();
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            field.fail(
                errors,
                format!("'{text}' is not a socket address; write ip:port, e.g. \"0.0.0.0:8080\""),
            );
            None
        }
    }
}

/// An `https://` URL, or `http://` on a loopback host (the emulator). The URL itself is not
/// echoed: it may carry credentials.
pub(super) fn https_url(field: &Field<'_>, errors: &mut Errors) -> Option<Url> {
    let text = field.text(errors, "a URL")?.trim();
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(err) => {
            field.fail(errors, format!("is not a valid URL ({err})"));
            return None;
        }
    };
    match url.scheme() {
        "https" => Some(url),
        "http" if is_loopback(url.host()) => Some(url),
        "http" => {
            field.fail(
                errors,
                "must use https:// (http:// is allowed only on a loopback host: 127.0.0.0/8, ::1, localhost)",
            );
            None
        }
        other => {
            field.fail(errors, format!("must be an https:// URL, not {other}:"));
            None
        }
    }
}

fn is_loopback(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `app` or `delegated`.
pub(super) fn access(field: &Field<'_>, errors: &mut Errors) -> Option<Access> {
    match field.text(errors, "\"app\" or \"delegated\"")?.trim() {
        "app" => Some(Access::App),
        "delegated" => Some(Access::Delegated),
        other => {
            field.fail(
                errors,
                format!("'{other}' is not an access mode; expected \"app\" or \"delegated\""),
            );
            None
        }
    }
}

/// `none`, `mark_read` or `move:<folder name or id>`.
pub(super) fn after_ingest(field: &Field<'_>, errors: &mut Errors) -> Option<AfterIngest> {
    let text = field
        .text(errors, "\"none\", \"mark_read\" or \"move:<folder>\"")?
        .trim();
    match text {
        "none" => Some(AfterIngest::None),
        "mark_read" => Some(AfterIngest::MarkRead),
        _ => match text.strip_prefix("move:").map(str::trim) {
            Some(folder) if !folder.is_empty() => Some(AfterIngest::Move(folder.to_string())),
            Some(_) => {
                field.fail(errors, "move: needs a folder name or id, e.g. \"move:archive\"");
                None
            }
            None => {
                field.fail(errors, format!("'{text}' is not none, mark_read or \"move:<folder>\""));
                None
            }
        },
    }
}

/// `now`, `all` or an RFC 3339 time.
pub(super) fn start_at(field: &Field<'_>, errors: &mut Errors) -> Option<StartAt> {
    let text = field.text(errors, "\"now\", \"all\" or an RFC 3339 time")?.trim();
    match text {
        "now" => Some(StartAt::Now),
        "all" => Some(StartAt::All),
        _ => match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(time) => Some(StartAt::Since(time)),
            Err(_) => {
                field.fail(
                    errors,
                    format!("'{text}' is not now, all or an RFC 3339 time such as \"2024-05-01T00:00:00Z\""),
                );
                None
            }
        },
    }
}

/// An RFC 3339 time (`secret_expires_at`).
pub(super) fn time(field: &Field<'_>, errors: &mut Errors) -> Option<OffsetDateTime> {
    let text = field.text(errors, "an RFC 3339 time")?.trim();
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => Some(t),
        Err(_) => {
            field.fail(
                errors,
                format!("'{text}' is not an RFC 3339 time such as \"2027-05-01T00:00:00Z\""),
            );
            None
        }
    }
}

/// A non-empty list of distinct folder names or ids.
pub(super) fn folders(field: &Field<'_>, errors: &mut Errors) -> Option<Vec<String>> {
    let items = field.items(errors)?;
    if items.is_empty() {
        field.fail(errors, "must list at least one folder, e.g. [\"inbox\"]");
        return None;
    }
    let mut folders: Vec<String> = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in &items {
        match item.non_empty(errors) {
            Some(name) if folders.iter().any(|f| f.eq_ignore_ascii_case(&name)) => {
                item.fail(errors, format!("folder '{name}' is listed twice"));
                ok = false;
            }
            Some(name) => folders.push(name),
            None => ok = false,
        }
    }
    ok.then_some(folders)
}
