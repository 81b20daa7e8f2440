//! Reading and changing messages: get, list, create drafts, PATCH, DELETE, move, MIME.

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::delta::{folder_not_found, user_path};
use super::input;
use super::render::{self, View};
use super::{Ctx, GraphError};
use crate::emulator::model::{Mailbox, Message, World};

impl Ctx<'_> {
    /// The render view this request asks for.
    pub(crate) fn view(&self) -> View {
        let expand_extended = self
            .q("$expand")
            .filter(|e| e.to_ascii_lowercase().starts_with("singlevalueextendedproperties"))
            .map(|e| {
                input::extended_filter(&format!(
                    "singleValueExtendedProperties/Any(ep: ep/{}",
                    e.split_once("$filter=").map(|(_, f)| f).unwrap_or("")
                ))
                .map(|(id, _)| vec![id])
                .unwrap_or_default()
            });
        View {
            immutable: self.prefer.immutable_ids,
            body_type: self.prefer.body_type,
            select: self.select(),
            allow_unsafe_html: self.prefer.allow_unsafe_html,
            expand_extended,
        }
    }

    /// A JSON answer with `Preference-Applied` when a Prefer value was honoured.
    pub(crate) fn answer(&self, status: StatusCode, body: Value) -> Response {
        let mut resp = (status, Json(body)).into_response();
        if let Some(applied) = self.prefer.applied(false).and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert("preference-applied", applied);
        }
        resp
    }
}

/// The immutable id of a message of this mailbox, or 404.
pub(crate) fn find(world: &World, ctx: &Ctx<'_>, id: &str) -> Result<String, GraphError> {
    world
        .find_message(&ctx.address, id)
        .ok_or_else(GraphError::item_not_found)
}

/// Mailbox and message, both borrowed.
pub(crate) fn message<'w>(world: &'w World, ctx: &Ctx<'_>, id: &str) -> Result<(&'w Mailbox, &'w Message), GraphError> {
    let immutable = find(world, ctx, id)?;
    let mailbox = &world.mailboxes[&ctx.address];
    Ok((mailbox, &mailbox.messages[&immutable]))
}

/// `GET users/{id}`: the user object.
pub(crate) fn user(ctx: &Ctx<'_>) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let m = &world.mailboxes[&ctx.address];
    Ok(Json(json!({
        "id": m.id, "displayName": m.display_name, "mail": m.address, "userPrincipalName": m.address,
    }))
    .into_response())
}

/// `GET messages/{id}`.
pub(crate) fn get(ctx: &Ctx<'_>, id: &str) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let (mailbox, m) = message(&world, ctx, id)?;
    Ok(ctx.answer(StatusCode::OK, render::message(m, mailbox, &ctx.view())))
}

/// `GET messages/{id}/$value`: MIME.
pub(crate) fn mime(ctx: &Ctx<'_>, id: &str) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let (_, m) = message(&world, ctx, id)?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], render::mime(m)).into_response())
}

/// `GET messages` or `mailFolders/{id}/messages`, with `$top`, `$skip`, `$filter`.
pub(crate) fn list(ctx: &Ctx<'_>, folder: Option<&str>) -> Result<Response, GraphError> {
    let world = ctx.emu.world();
    let mailbox = &world.mailboxes[&ctx.address];
    let folder_id = folder
        .map(|f| mailbox.folder_id(f).ok_or_else(folder_not_found))
        .transpose()?;
    let filter = ctx.q("$filter");
    let extended = filter.and_then(input::extended_filter);
    let is_read = filter.and_then(|f| {
        let f = f.to_ascii_lowercase().replace(' ', "");
        f.strip_prefix("isreadeq").map(|v| v == "true")
    });
    let received_from = filter
        .filter(|f| f.trim_start().to_ascii_lowercase().starts_with("receiveddatetime"))
        .map(super::delta::received_filter)
        .transpose()?;
    let conversation = filter.and_then(|f| {
        let (name, value) = f.trim().split_once(" eq ")?;
        name.trim()
            .eq_ignore_ascii_case("conversationId")
            .then(|| value.trim().trim_matches('\'').replace("''", "'"))
    });
    if filter.is_some() && extended.is_none() && is_read.is_none() && received_from.is_none() && conversation.is_none()
    {
        return Err(GraphError::bad_request(
            "ErrorInvalidUrlQueryFilter",
            "The emulator supports $filter on singleValueExtendedProperties/Any(…), isRead eq true|false, conversationId eq '…' and receivedDateTime ge|gt {value}.",
        ));
    }
    let mut selected: Vec<&Message> = mailbox
        .messages
        .values()
        .filter(|m| folder_id.as_ref().is_none_or(|f| &m.folder_id == f))
        .filter(|m| is_read.is_none_or(|r| m.is_read == r))
        .filter(|m| conversation.as_ref().is_none_or(|c| &m.conversation_id == c))
        .filter(|m| {
            received_from.is_none_or(|(from, inclusive)| m.received > from || (inclusive && m.received == from))
        })
        .filter(|m| {
            extended.as_ref().is_none_or(|(id, value)| {
                m.extended
                    .iter()
                    .any(|(i, v)| i.eq_ignore_ascii_case(id) && value.as_ref().is_none_or(|want| want == v))
            })
        })
        .collect();
    selected.sort_by(|a, b| {
        b.received
            .cmp(&a.received)
            .then_with(|| a.immutable_id.cmp(&b.immutable_id))
    });
    let top: usize = ctx.q("$top").and_then(|t| t.parse().ok()).unwrap_or(10).clamp(1, 1000);
    let skip: usize = ctx.q("$skip").and_then(|t| t.parse().ok()).unwrap_or(0);
    let view = ctx.view();
    let value: Vec<Value> = selected
        .iter()
        .skip(skip)
        .take(top)
        .map(|m| render::message(m, mailbox, &view))
        .collect();
    let mut body =
        json!({"@odata.context": format!("{}/v1.0/$metadata#Collection(message)", ctx.emu.base()), "value": value});
    if selected.len() > skip + top {
        let mut params: Vec<(String, String)> = ctx
            .query
            .iter()
            .filter(|(k, _)| *k != "$skip" && *k != "$top")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("$top".into(), top.to_string()));
        params.push(("$skip".into(), (skip + top).to_string()));
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let path = match folder {
            Some(f) => format!("mailFolders('{f}')/messages"),
            None => "messages".into(),
        };
        body["@odata.nextLink"] = json!(format!(
            "{}/v1.0/{}/{path}?{query}",
            ctx.emu.base(),
            user_path(&ctx.user_segment)
        ));
    }
    Ok(ctx.answer(StatusCode::OK, body))
}

/// `POST messages` (a draft in Drafts) or `POST mailFolders/{id}/messages`.
pub(crate) fn create(ctx: &Ctx<'_>, folder: Option<&str>, body: &Bytes) -> Result<Response, GraphError> {
    let props = input::object(body)?;
    let mut world = ctx.emu.world();
    let mailbox = &world.mailboxes[&ctx.address];
    let folder_id = mailbox
        .folder_id(folder.unwrap_or("drafts"))
        .ok_or_else(folder_not_found)?;
    let domain = ctx
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let mut m = Message::new(&folder_id, ctx.now, &domain);
    m.is_draft = true;
    m.is_read = true;
    m.sent = None;
    input::apply(&mut m, &props, ctx.now)?;
    let stored = world.insert_message(&ctx.address, m);
    let mailbox = &world.mailboxes[&ctx.address];
    Ok(ctx.answer(StatusCode::CREATED, render::message(&stored, mailbox, &ctx.view())))
}

/// `PATCH messages/{id}`.
pub(crate) fn patch(ctx: &Ctx<'_>, id: &str, body: &Bytes) -> Result<Response, GraphError> {
    let props = input::object(body)?;
    let mut world = ctx.emu.world();
    let immutable = find(&world, ctx, id)?;
    let mailbox = world.mailboxes.get_mut(&ctx.address).expect("resolved");
    let mut updated = mailbox.messages[&immutable].clone();
    input::apply(&mut updated, &props, ctx.now)?;
    mailbox.messages.insert(immutable.clone(), updated);
    world.touch(&ctx.address, &immutable, ctx.now, &input::changed_properties(&props));
    let mailbox = &world.mailboxes[&ctx.address];
    Ok(ctx.answer(
        StatusCode::OK,
        render::message(&mailbox.messages[&immutable], mailbox, &ctx.view()),
    ))
}

/// `DELETE messages/{id}`: 204; a soft delete: the message moves to Deleted Items (deleted
/// there, it is gone).
pub(crate) fn delete(ctx: &Ctx<'_>, id: &str) -> Result<Response, GraphError> {
    let mut world = ctx.emu.world();
    let immutable = find(&world, ctx, id)?;
    let mailbox = &world.mailboxes[&ctx.address];
    let deleted_items = mailbox.folder_id("deleteditems").expect("deleteditems exists");
    if mailbox.messages[&immutable].folder_id == deleted_items {
        world.delete_message(&ctx.address, &immutable);
    } else {
        world.move_message(&ctx.address, &immutable, &deleted_items, ctx.now);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST messages/{id}/permanentDelete`: 204; the message is purged wherever it is.
pub(crate) fn permanent_delete(ctx: &Ctx<'_>, id: &str) -> Result<Response, GraphError> {
    let mut world = ctx.emu.world();
    let immutable = find(&world, ctx, id)?;
    world.delete_message(&ctx.address, &immutable);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST messages/{id}/move` `{"destinationId"}`: 201 with the moved message.
pub(crate) fn move_to(ctx: &Ctx<'_>, id: &str, body: &Bytes) -> Result<Response, GraphError> {
    let props = input::object(body)?;
    let destination = props
        .get("destinationId")
        .or_else(|| props.get("DestinationId"))
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::bad_body("destinationId is required."))?
        .to_string();
    let mut world = ctx.emu.world();
    let immutable = find(&world, ctx, id)?;
    let folder_id = world.mailboxes[&ctx.address]
        .folder_id(&destination)
        .ok_or_else(folder_not_found)?;
    world.move_message(&ctx.address, &immutable, &folder_id, ctx.now);
    let mailbox = &world.mailboxes[&ctx.address];
    Ok(ctx.answer(
        StatusCode::CREATED,
        render::message(&mailbox.messages[&immutable], mailbox, &ctx.view()),
    ))
}
