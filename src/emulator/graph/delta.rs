//! Mail folders and per-folder delta queries.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::render::{self, View};
use super::{Ctx, GraphError};
use crate::emulator::model::DeltaCursor;
use crate::emulator::util::{opaque, parse_time};

/// `GET mailFolders`.
pub(crate) fn list_folders(ctx: &Ctx<'_>) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let mailbox = &world.mailboxes[&ctx.address];
    let value: Vec<Value> = mailbox
        .folders
        .iter()
        .filter(|f| f.well_known.as_deref() != Some("msgfolderroot"))
        .map(|f| render::folder(f, mailbox))
        .collect();
    Ok(Json(json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{}')/mailFolders", ctx.emu.base(), ctx.user_segment),
        "value": value,
    }))
    .into_response())
}

/// `GET mailFolders/{id or well-known name}`.
pub(crate) fn get_folder(ctx: &Ctx<'_>, folder: &str) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let mailbox = &world.mailboxes[&ctx.address];
    let f = mailbox.folder(folder).ok_or_else(folder_not_found)?;
    Ok(Json(render::folder(f, mailbox)).into_response())
}

/// 404 for an unknown folder.
pub(crate) fn folder_not_found() -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified folder could not be found in the store.",
    )
}

fn sync_state_not_found(generation: u64, highest: u64, location: String) -> GraphError {
    let mut err = GraphError::new(
        StatusCode::GONE,
        "SyncStateNotFound",
        format!("The sync state generation is not found; generation={generation};[highest={highest}]."),
    );
    err.location = Some(location);
    err
}

/// `$filter=receivedDateTime ge|gt <time>`: the only filter delta takes for messages.
pub(crate) fn received_filter(filter: &str) -> Result<(OffsetDateTime, bool), GraphError> {
    let parts: Vec<&str> = filter.split_whitespace().collect();
    match parts.as_slice() {
        [prop, op, value]
            if prop.eq_ignore_ascii_case("receivedDateTime")
                && (op.eq_ignore_ascii_case("ge") || op.eq_ignore_ascii_case("gt")) =>
        {
            let t = parse_time(value.trim_matches('\'')).ok_or_else(|| {
                GraphError::bad_request("BadRequest", format!("'{value}' is not a valid DateTimeOffset."))
            })?;
            Ok((t, op.eq_ignore_ascii_case("ge")))
        }
        _ => Err(GraphError::bad_request(
            "ErrorInvalidUrlQueryFilter",
            "The delta query for messages supports only $filter=receivedDateTime ge|gt {value}.",
        )),
    }
}

/// One entry of a delta page.
enum Item {
    /// A message currently in the folder (immutable id); true when it is an update of a
    /// message an earlier round announced.
    Present(String, bool),
    /// A message that left: (regular id, immutable id).
    Removed(String, String),
}

/// `GET mailFolders/{id}/messages/delta`.
pub(crate) fn delta(ctx: &Ctx<'_>, folder: &str) -> Result<Response, GraphError> {
    let mut world = ctx.emu.world();
    let settings = world.settings.clone();
    let current_seq = world.seq;
    let mailbox = world.mailboxes.get_mut(&ctx.address).expect("resolved mailbox exists");
    let folder_id = mailbox.folder_id(folder).ok_or_else(folder_not_found)?;
    let folder_index = mailbox
        .folders
        .iter()
        .position(|f| f.id == folder_id)
        .expect("folder exists");
    let link_base = format!(
        "{}/v1.0/{}/mailFolders('{folder}')/messages/delta",
        ctx.emu.base(),
        user_path(&ctx.user_segment)
    );
    let token = ctx
        .q("$skiptoken")
        .or_else(|| ctx.q("$deltatoken"))
        .filter(|t| !t.is_empty());
    let highest = mailbox.folders[folder_index].delta_generation;
    let mut cursor = match token {
        Some(token) => {
            let restart = format!("{link_base}?$deltatoken=");
            let c = mailbox
                .delta_links
                .get(token)
                .cloned()
                .ok_or_else(|| sync_state_not_found(0, highest, restart.clone()))?;
            let too_many = highest.saturating_sub(c.generation) >= settings.delta_max_generations;
            let too_old = settings
                .delta_max_age_secs
                .is_some_and(|max| (ctx.now - c.issued_at).whole_seconds() > max as i64);
            if c.folder_id != folder_id || too_many || too_old {
                return Err(sync_state_not_found(c.generation, highest, restart));
            }
            c
        }
        None => DeltaCursor {
            folder_id: folder_id.clone(),
            since: 0,
            upto: current_seq,
            after: None,
            select: ctx.select(),
            received_from: ctx.q("$filter").map(received_filter).transpose()?,
            change_type: ctx.q("changeType").map(str::to_ascii_lowercase),
            initial: true,
            generation: highest,
            issued_at: ctx.now,
            replay: None,
        },
    };
    if cursor.after.is_none() && !cursor.initial {
        // A delta link starts a new round: everything changed since the last one.
        cursor.upto = current_seq;
    }
    let wants = |kind: &str| {
        cursor
            .change_type
            .as_deref()
            .is_none_or(|c| c.split(',').any(|x| x.trim() == kind))
    };
    let mut items: Vec<(u64, String, Item)> = Vec::new();
    for m in mailbox
        .messages
        .values()
        .filter(|m| m.folder_id == folder_id && m.seq > cursor.since && m.seq <= cursor.upto)
    {
        if let Some((from, inclusive)) = cursor.received_from
            && (m.received < from || (!inclusive && m.received == from))
        {
            continue;
        }
        let created = cursor.initial || m.entered_seq > cursor.since;
        if (created && wants("created")) || (!created && wants("updated")) {
            items.push((
                m.seq,
                m.immutable_id.clone(),
                Item::Present(m.immutable_id.clone(), !created),
            ));
        }
    }
    if !cursor.initial && wants("deleted") {
        for t in mailbox.folders[folder_index]
            .tombstones
            .iter()
            .filter(|t| t.seq > cursor.since && t.seq <= cursor.upto)
        {
            items.push((
                t.seq,
                t.immutable_id.clone(),
                Item::Removed(t.id.clone(), t.immutable_id.clone()),
            ));
        }
    }
    items.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if cursor.initial && cursor.received_from.is_some() {
        // A round filtered on receivedDateTime returns a limited number of items in total;
        // past that it simply ends.
        items.truncate(settings.filtered_delta_cap);
    }
    if let Some((seq, id)) = &cursor.after {
        items.retain(|(s, i, _)| (*s, i) > (*seq, id));
    }
    let page_size = ctx
        .prefer
        .max_page_size
        .or_else(|| ctx.q("$top").and_then(|t| t.parse().ok()))
        .unwrap_or(settings.delta_page_size)
        .max(1);
    let more = items.len() > page_size;
    items.truncate(page_size);
    let view = View {
        immutable: ctx.prefer.immutable_ids,
        body_type: ctx.prefer.body_type,
        select: cursor.select.clone(),
        allow_unsafe_html: ctx.prefer.allow_unsafe_html,
        expand_extended: None,
    };
    let since = cursor.since;
    let partial = settings.delta_partial_updates;
    let present = |m: &crate::emulator::model::Message, updated: bool| {
        let full = render::message(m, mailbox, &view);
        delta_item(if updated && partial {
            partial_item(full, m, since)
        } else {
            full
        })
    };
    let mut value = Vec::with_capacity(items.len() + 2);
    if settings.delta_replay
        && let Some(m) = cursor
            .replay
            .as_ref()
            .and_then(|id| mailbox.messages.get(id))
            .filter(|m| m.folder_id == folder_id)
    {
        value.push(present(m, !cursor.initial && m.entered_seq <= since));
    }
    for (_, _, item) in &items {
        value.push(match item {
            Item::Present(id, updated) => present(&mailbox.messages[id], *updated),
            Item::Removed(id, immutable) => json!({
                "@odata.type": "#microsoft.graph.message",
                "id": if view.immutable { immutable } else { id },
                "@removed": {"reason": "deleted"},
            }),
        });
    }
    if settings.delta_duplicates
        && let Some(first) = value.first().cloned()
    {
        // Graph may announce one item more than once in a round; clients must cope.
        value.push(first);
    }
    let mut body =
        json!({"@odata.context": format!("{}/v1.0/$metadata#Collection(message)", ctx.emu.base()), "value": value});
    let new_token = opaque(48);
    if more {
        let last = items.last().map(|(s, i, _)| (*s, i.clone()));
        let last_present = items.iter().rev().find_map(|(_, _, it)| {
            if let Item::Present(id, _) = it {
                Some(id.clone())
            } else {
                None
            }
        });
        mailbox.delta_links.insert(
            new_token.clone(),
            DeltaCursor {
                after: last,
                replay: last_present,
                issued_at: ctx.now,
                ..cursor
            },
        );
        body["@odata.nextLink"] = json!(format!("{link_base}?$skiptoken={new_token}"));
    } else {
        let generation = highest + 1;
        mailbox.folders[folder_index].delta_generation = generation;
        let keep = settings.delta_max_generations;
        mailbox
            .delta_links
            .retain(|_, c| c.folder_id != folder_id || generation.saturating_sub(c.generation) < keep);
        let next = DeltaCursor {
            since: cursor.upto,
            after: None,
            initial: false,
            received_from: None,
            generation,
            issued_at: ctx.now,
            replay: None,
            ..cursor
        };
        mailbox.delta_links.insert(new_token.clone(), next);
        body["@odata.deltaLink"] = json!(format!("{link_base}?$deltatoken={new_token}"));
    }
    let mut resp = Json(body).into_response();
    if let Some(applied) = ctx.prefer.applied(true).and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert("preference-applied", applied);
    }
    Ok(resp)
}

/// An updated item as Graph sends it: `id`, `parentFolderId`, the etag and only the
/// properties (among those rendered) that changed after the previous round.
fn partial_item(full: Value, m: &crate::emulator::model::Message, since: u64) -> Value {
    let Value::Object(all) = full else {
        return full;
    };
    let mut out = serde_json::Map::new();
    for (k, v) in all {
        if k == "@odata.etag" || k == "id" || m.changed_since(&k, since) {
            out.insert(k, v);
        }
    }
    out.insert("parentFolderId".into(), json!(m.folder_id));
    Value::Object(out)
}

/// Delta items carry their type.
fn delta_item(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("@odata.type".into(), json!("#microsoft.graph.message"));
    }
    v
}

/// `me` or `users/{id}` for links.
pub(crate) fn user_path(segment: &str) -> String {
    if segment == "me" {
        "me".into()
    } else {
        format!("users/{segment}")
    }
}
