//! Replies, forwards, drafts being sent, `sendMail`, and delivery to emulated recipients.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::render;
use super::{Ctx, GraphError, GraphRequest, input, messages};
use crate::emulator::model::{BodyType, Message, Recipient, World};
use crate::emulator::util::{graph_time, item_id, key};

/// Which response to an original.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reply,
    ReplyAll,
    Forward,
}

fn kind(action: &str) -> Kind {
    match action {
        "reply" | "createreply" => Kind::Reply,
        "replyall" | "createreplyall" => Kind::ReplyAll,
        _ => Kind::Forward,
    }
}

/// The mailbox owner as a recipient.
fn owner(world: &World, address: &str) -> Recipient {
    let m = &world.mailboxes[address];
    Recipient {
        name: m.display_name.clone(),
        address: m.address.clone(),
    }
}

/// Builds the reply/forward draft of `original`, threaded on it.
fn response_draft(world: &World, ctx: &Ctx<'_>, original: &Message, kind: Kind, comment: Option<&str>) -> Message {
    let me = owner(world, &ctx.address);
    let drafts = world.mailboxes[&ctx.address]
        .folder_id("drafts")
        .expect("drafts exists");
    let domain = ctx
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let mut draft = Message::new(&drafts, ctx.now, &domain);
    draft.is_draft = true;
    draft.is_read = true;
    draft.sent = None;
    draft.from = Some(me.clone());
    let prefix = if kind == Kind::Forward { "FW: " } else { "RE: " };
    let already = original
        .subject
        .to_ascii_lowercase()
        .starts_with(&prefix.to_ascii_lowercase());
    draft.subject = if already {
        original.subject.clone()
    } else {
        format!("{prefix}{}", original.subject)
    };
    if kind != Kind::Forward {
        let sender = original.from.clone().into_iter().collect::<Vec<_>>();
        draft.to = if original.reply_to.is_empty() {
            sender
        } else {
            original.reply_to.clone()
        };
        if kind == Kind::ReplyAll {
            let mut seen: Vec<String> = draft.to.iter().map(|r| key(&r.address)).collect();
            seen.push(key(&me.address));
            for r in original.to.iter().chain(&original.cc) {
                if !seen.contains(&key(&r.address)) {
                    seen.push(key(&r.address));
                    if original.to.contains(r) {
                        draft.to.push(r.clone());
                    } else {
                        draft.cc.push(r.clone());
                    }
                }
            }
        }
    } else {
        draft.attachments = original
            .attachments
            .iter()
            .map(|a| crate::emulator::model::Attachment {
                id: item_id("AAMkADAtt"),
                ..a.clone()
            })
            .collect();
    }
    let quoted = render::convert_body(&original.body, original.body_type, BodyType::Html);
    let from = original
        .from
        .as_ref()
        .map(|r| format!("{} &lt;{}&gt;", r.name, r.address))
        .unwrap_or_default();
    draft.body_type = BodyType::Html;
    draft.body = format!(
        "<html><body><div>{}</div><hr><div id=\"divRplyFwdMsg\"><b>From:</b> {from}<br><b>Sent:</b> {}<br><b>Subject:</b> {}</div>{quoted}</body></html>",
        comment.unwrap_or_default(),
        graph_time(original.sent.unwrap_or(original.received)),
        original.subject,
    );
    draft.in_reply_to = Some(original.internet_message_id.clone());
    draft.references = original.references.clone();
    draft.references.push(original.internet_message_id.clone());
    draft.rethread();
    draft
}

/// Reads `comment` / `message` of a reply body; both `comment` and `message.body` is a 400.
fn response_body(body: &Bytes) -> Result<(Option<String>, Map<String, Value>), GraphError> {
    let mut props = input::object(body)?;
    let comment = props
        .remove("comment")
        .or_else(|| props.remove("Comment"))
        .and_then(|c| c.as_str().map(str::to_string));
    let mut message = match props.remove("message").or_else(|| props.remove("Message")) {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(GraphError::bad_body("'message' must be an object.")),
        None => Map::new(),
    };
    if comment.is_some() && message.keys().any(|k| k.eq_ignore_ascii_case("body")) {
        return Err(GraphError::bad_request(
            "ErrorInvalidRequest",
            "Specifying both the comment and the message body is not allowed.",
        ));
    }
    if let Some(to) = props.remove("toRecipients") {
        message.insert("toRecipients".into(), to);
    }
    if let Some((k, _)) = props.iter().next() {
        return Err(GraphError::bad_body(format!(
            "The parameter '{k}' in the request payload is not a valid parameter for the operation."
        )));
    }
    Ok((comment, message))
}

/// `POST messages/{id}/createReply|createReplyAll|createForward`: 201 with the draft.
pub(crate) fn create_response(ctx: &Ctx<'_>, id: &str, action: &str, body: &Bytes) -> Result<Response, GraphError> {
    let (comment, mut overrides) = response_body(body)?;
    let mut world = ctx.emu.world();
    if world.settings.create_response_ignores_extended_properties {
        overrides.retain(|k, _| !k.eq_ignore_ascii_case("singleValueExtendedProperties"));
    }
    let (_, original) = messages::message(&world, ctx, id)?;
    let mut draft = response_draft(&world, ctx, original, kind(action), comment.as_deref());
    input::apply(&mut draft, &overrides, ctx.now)?;
    let stored = world.insert_message(&ctx.address, draft);
    let mailbox = &world.mailboxes[&ctx.address];
    Ok(ctx.answer(StatusCode::CREATED, render::message(&stored, mailbox, &ctx.view())))
}

/// `POST messages/{id}/reply|replyAll|forward`: 202, handed to transport.
pub(crate) fn respond(ctx: &Ctx<'_>, id: &str, action: &str, body: &Bytes) -> Result<Response, GraphError> {
    let (comment, overrides) = response_body(body)?;
    let mut world = ctx.emu.world();
    let (_, original) = messages::message(&world, ctx, id)?;
    let mut draft = response_draft(&world, ctx, original, kind(action), comment.as_deref());
    input::apply(&mut draft, &overrides, ctx.now)?;
    if kind(action) == Kind::Forward && draft.to.is_empty() && draft.cc.is_empty() && draft.bcc.is_empty() {
        return Err(GraphError::bad_request(
            "ErrorInvalidRecipients",
            "At least one recipient is required.",
        ));
    }
    dispatch(&mut world, ctx, draft, false, true)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST messages/{id}/send`: 202; the draft moves to the Outbox, and transport takes it to
/// Sent Items and to its recipients later.
pub(crate) fn send(ctx: &Ctx<'_>, id: &str, req: &GraphRequest) -> Result<Response, GraphError> {
    if !req.headers.contains_key("content-length") && !req.headers.contains_key("transfer-encoding") {
        return Err(GraphError::new(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired",
            "Content-Length header is required for this request.",
        ));
    }
    let mut world = ctx.emu.world();
    let immutable = messages::find(&world, ctx, id)?;
    let draft = world.mailboxes[&ctx.address].messages[&immutable].clone();
    if !draft.is_draft {
        return Err(GraphError::bad_request(
            "ErrorInvalidOperation",
            "Only a draft can be sent.",
        ));
    }
    dispatch(&mut world, ctx, draft, true, true)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST sendMail` `{"message", "saveToSentItems"}`: 202.
pub(crate) fn send_mail(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, GraphError> {
    let mut props = input::object(body)?;
    let message = match props.remove("message").or_else(|| props.remove("Message")) {
        Some(Value::Object(m)) => m,
        _ => return Err(GraphError::bad_body("sendMail needs a 'message' object.")),
    };
    let save = match props
        .remove("saveToSentItems")
        .or_else(|| props.remove("SaveToSentItems"))
    {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => !s.eq_ignore_ascii_case("false"),
        Some(_) => return Err(GraphError::bad_body("saveToSentItems must be a boolean.")),
    };
    let mut world = ctx.emu.world();
    let drafts = world.mailboxes[&ctx.address]
        .folder_id("drafts")
        .expect("drafts exists");
    let domain = ctx
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let mut m = Message::new(&drafts, ctx.now, &domain);
    m.is_draft = true;
    input::apply(&mut m, &message, ctx.now)?;
    m.from = Some(owner(&world, &ctx.address));
    dispatch(&mut world, ctx, m, false, save)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Hands a finished message to transport (see `transport.rs`): 400 without recipients.
fn dispatch(world: &mut World, ctx: &Ctx<'_>, m: Message, existing: bool, save: bool) -> Result<(), GraphError> {
    if m.to.is_empty() && m.cc.is_empty() && m.bcc.is_empty() {
        return Err(GraphError::bad_request(
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
        ));
    }
    world.submit(&ctx.address, m, existing, save, ctx.now);
    Ok(())
}
