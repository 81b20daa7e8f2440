//! `[defaults]` and `[[mailboxes]]`: per-mailbox settings, where a mailbox's own key wins over
//! `[defaults]`, which wins over the built-in default.

use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::reader::{Errors, Field, Table};
use super::tree::Node;
use super::values;
use super::{Access, AfterIngest, MailboxConfig, StartAt};
use crate::domain::{AppName, MailboxAddress};

/// `max_inline_attachment_bytes` when not set.
pub const DEFAULT_MAX_INLINE_ATTACHMENT_BYTES: u64 = 3_000_000;

/// The settings `[defaults]` provides; `None` where its value was invalid (already reported).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    poll_interval: Option<Duration>,
    folders: Option<Vec<String>>,
    after_ingest: Option<AfterIngest>,
    max_inline_attachment_bytes: Option<u64>,
    max_concurrent_requests: Option<usize>,
    start_at: Option<StartAt>,
}

/// Reads the per-mailbox settings of a table: `[defaults]` (with `inherited` = `None`, so
/// built-in defaults fill the gaps) or one mailbox (inheriting from `[defaults]`).
pub(super) fn settings(table: &mut Table<'_>, inherited: Option<&Settings>, errors: &mut Errors) -> Settings {
    Settings {
        poll_interval: setting(
            table,
            "poll_interval",
            inherited.map(|s| &s.poll_interval),
            str_node("30s"),
            errors,
            |f, e| values::duration(f, e, false, Duration::from_secs(24 * 3600)),
        ),
        folders: match (table.get("folders"), inherited) {
            (Some(field), _) => values::folders(&field, errors),
            (None, Some(base)) => base.folders.clone(),
            (None, None) => {
                let inbox = Node::Array(vec![Node::Str("inbox".to_string())]);
                values::folders(&Field::builtin(table.path_of("folders"), inbox), errors)
            }
        },
        after_ingest: setting(
            table,
            "after_ingest",
            inherited.map(|s| &s.after_ingest),
            str_node("none"),
            errors,
            values::after_ingest,
        ),
        max_inline_attachment_bytes: setting(
            table,
            "max_inline_attachment_bytes",
            inherited.map(|s| &s.max_inline_attachment_bytes),
            Node::Int(DEFAULT_MAX_INLINE_ATTACHMENT_BYTES as i64),
            errors,
            |f, e| f.int_in(e, 0, i64::MAX).and_then(|v| u64::try_from(v).ok()),
        ),
        max_concurrent_requests: setting(
            table,
            "max_concurrent_requests",
            inherited.map(|s| &s.max_concurrent_requests),
            Node::Int(4),
            errors,
            |f, e| f.int_in(e, 1, 4).and_then(|v| usize::try_from(v).ok()),
        ),
        start_at: setting(
            table,
            "start_at",
            inherited.map(|s| &s.start_at),
            str_node("now"),
            errors,
            values::start_at,
        ),
    }
}

/// One setting: the table's own value, else the inherited one, else the built-in default
/// (read through the same parser).
fn setting<T: Clone>(
    table: &mut Table<'_>,
    key: &'static str,
    inherited: Option<&Option<T>>,
    default: Node,
    errors: &mut Errors,
    parse: impl Fn(&Field<'_>, &mut Errors) -> Option<T>,
) -> Option<T> {
    match (table.get(key), inherited) {
        (Some(field), _) => parse(&field, errors),
        (None, Some(value)) => value.clone(),
        (None, None) => parse(&Field::builtin(table.path_of(key), default), errors),
    }
}

/// Reads every `[[mailboxes]]` entry, then checks what spans entries: duplicate addresses and
/// delegated access without `store.encryption_key`.
pub(super) fn mailboxes(
    tables: Vec<Table<'_>>,
    defaults: &Settings,
    app_names: &[String],
    encryption_key_given: bool,
    errors: &mut Errors,
) -> Option<Vec<Arc<MailboxConfig>>> {
    let mut out = Vec::with_capacity(tables.len());
    let mut ok = true;
    // Where each address was first configured (a map: 100,000 mailboxes must not cost n²).
    let mut seen: std::collections::HashMap<MailboxAddress, String> = std::collections::HashMap::new();
    let mut delegated: Vec<String> = Vec::new();
    for mut table in tables {
        let address = table.require("address", errors, "").and_then(|field| {
            let text = field.text(errors, "an email address")?;
            let parsed = MailboxAddress::parse(text)
                .map_err(|err| field.fail(errors, err))
                .ok()?;
            if let Some(first) = seen.get(&parsed) {
                field.fail(
                    errors,
                    format!("duplicate mailbox address {parsed}, already configured at {first}"),
                );
                return None;
            }
            seen.insert(parsed.clone(), table.path().to_string());
            Some(parsed)
        });
        let app = table
            .require("app", errors, " (the name of an [[apps]] entry)")
            .and_then(|field| app_ref(&field, app_names, errors));
        let access = values::access(&table.get_or("access", "app"), errors);
        if access == Some(Access::Delegated) {
            delegated.push(table.path().to_string());
        }
        let fallback_app = match (table.get("fallback_app"), access) {
            (None, _) => Some(None),
            (Some(field), Some(Access::Delegated)) => app_ref(&field, app_names, errors).map(Some),
            (Some(field), Some(Access::App)) => {
                field.fail(
                    errors,
                    "applies only to access = \"delegated\"; an app-only mailbox has no fallback",
                );
                None
            }
            (Some(_), None) => None,
        };
        let own = settings(&mut table, Some(defaults), errors);
        let enabled = match table.get("enabled") {
            None => Some(true),
            Some(field) => field.bool(errors),
        };
        table.finish(errors);
        let mailbox = (|| {
            Some(MailboxConfig {
                address: address?,
                app: app?,
                access: access?,
                fallback_app: fallback_app?,
                poll_interval: own.poll_interval?,
                folders: own.folders?,
                after_ingest: own.after_ingest?,
                max_inline_attachment_bytes: own.max_inline_attachment_bytes?,
                max_concurrent_requests: own.max_concurrent_requests?,
                start_at: own.start_at?,
                enabled: enabled?,
            })
        })();
        match mailbox {
            Some(mailbox) => out.push(Arc::new(mailbox)),
            None => ok = false,
        }
    }
    if !delegated.is_empty() && !encryption_key_given {
        errors.push(ConfigError::new(
            "store.encryption_key",
            format!(
                "missing; required because {} use access = \"delegated\" (refresh tokens are sealed with it)",
                delegated.join(", ")
            ),
        ));
        ok = false;
    }
    ok.then_some(out)
}

/// A reference to an `[[apps]]` entry by name.
fn app_ref(field: &Field<'_>, app_names: &[String], errors: &mut Errors) -> Option<AppName> {
    let name = field.non_empty(errors)?;
    if app_names.contains(&name) {
        return Some(AppName(name));
    }
    let known = if app_names.is_empty() {
        "no [[apps]] are configured".to_string()
    } else {
        format!("configured apps: {}", app_names.join(", "))
    };
    field.fail(errors, format!("names app '{name}', which is not configured ({known})"));
    None
}

fn str_node(text: &str) -> Node {
    Node::Str(text.to_string())
}
