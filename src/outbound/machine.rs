//! The send state machine of one row: build the marked draft (looking before creating), ask
//! Graph to send it, then find out what became of it.

use std::time::Duration;

use time::OffsetDateTime;

use super::confirm::{self, Whereabouts};
use super::request::{Kind, StoredRequest};
use super::sender::{Failure, Outbox};
use super::steps;
use crate::graph::{CallError, GraphErrorKind};
use crate::mailbox::MailboxCtx;
use crate::store::{OutboundRecord, SendStep};

/// How one attempt left a row that is not finished with an error.
pub(super) enum Progress {
    /// The copy is in Sent Items and no non-delivery report came back.
    Sent,
    /// Accepted, never found within the confirmation period.
    Unconfirmed(String),
    /// Look again after this long; the note is shown as the row's `error`.
    Wait(Duration, String),
}

impl Outbox {
    /// The send state machine: build the marked draft (looking before creating), send it,
    /// then confirm.
    pub(super) async fn advance(&self, ctx: &MailboxCtx, row: &mut OutboundRecord) -> Result<Progress, Failure> {
        if matches!(row.step, SendStep::SendRequested | SendStep::Accepted) {
            return self.confirm(ctx, row).await;
        }
        // Taken, not copied: the row is written back without its request, and the attachments'
        // content is borrowed from this text, the only copy the sender holds.
        let text = std::mem::take(&mut row.request);
        let req: StoredRequest =
            serde_json::from_str(&text).map_err(|e| Failure::Permanent(format!("stored request unreadable: {e}")))?;
        let mut check_marker = false;
        if !(row.step == SendStep::New && row.attempts <= 1) {
            // An earlier attempt may have created drafts whose outcome it never heard.
            let mut drafts = steps::find(ctx, "drafts", &row.id).await?;
            if drafts.is_empty()
                && let Some(id) = &row.draft_id
                && let Some(found) = steps::get(ctx, id).await?
            {
                // Recorded, but Graph dropped the marker before it could be set.
                drafts.push(found);
                check_marker = true;
            }
            if drafts.is_empty() {
                row.step = SendStep::New;
                row.draft_id = None;
            } else {
                let keep = drafts
                    .iter()
                    .position(|d| Some(&d.id) == row.draft_id.as_ref())
                    .unwrap_or(0);
                let kept = drafts.remove(keep);
                for extra in drafts {
                    steps::discard(ctx, &extra.id).await?;
                }
                row.draft_id = Some(kept.id);
                row.internet_message_id = kept.internet_message_id.or(row.internet_message_id.take());
                row.conversation_id = kept.conversation_id.or(row.conversation_id.take());
                if row.step == SendStep::New {
                    row.step = SendStep::Draft;
                }
            }
        }
        let mut fresh = false;
        if row.step == SendStep::New {
            let draft = steps::create_draft(ctx, &req, &row.id).await?;
            row.draft_id = Some(draft.id);
            row.internet_message_id = draft.internet_message_id;
            row.conversation_id = draft.conversation_id;
            row.step = SendStep::Draft;
            fresh = true;
            check_marker = true;
            self.checkpoint(row).await?;
        }
        let draft = row
            .draft_id
            .clone()
            .ok_or_else(|| Failure::Transient("draft id missing".into()))?;
        if check_marker {
            steps::ensure_marker(ctx, &draft, &row.id).await?;
        }
        if row.step == SendStep::Draft {
            // Only what is missing is added: an earlier attempt may have added some.
            let mut present = if fresh {
                Vec::new()
            } else {
                steps::attachments(ctx, &draft).await?
            };
            if req.kind == Kind::Forward && fresh {
                present.clear();
            }
            for a in &req.attachments {
                if !steps::take_present(&mut present, a) {
                    steps::attach(&self.upload, ctx, &draft, a).await?;
                }
            }
            row.step = SendStep::Attachments;
            self.checkpoint(row).await?;
        }
        drop(req);
        drop(text);
        self.submit(ctx, row, &draft).await
    }

    /// Asks Graph to send the draft. From the checkpoint before the request on, no new
    /// draft is ever made for this row.
    async fn submit(&self, ctx: &MailboxCtx, row: &mut OutboundRecord, draft: &str) -> Result<Progress, Failure> {
        let before = (row.step, row.submitted_at);
        row.step = SendStep::SendRequested;
        row.submitted_at = Some(OffsetDateTime::now_utc());
        if let Err(e) = self.checkpoint(row).await {
            // Not recorded, so not asked: the row stays where it was.
            (row.step, row.submitted_at) = before;
            return Err(e);
        }
        // Not idempotent: `send_draft` makes the request once, never repeated blindly.
        match ctx.mailbox_graph().send_draft(draft).await {
            Ok(_) => {
                row.step = SendStep::Accepted;
                if let Err(e) = self.checkpoint(row).await {
                    // Still `send_requested` in the store: the confirmation finds out anyway.
                    tracing::warn!(mailbox = %row.mailbox, outbound_id = %row.id, reason = ?e, "Cannot record that Graph accepted the send.");
                }
                Ok(Progress::Wait(
                    self.confirm_wait(row),
                    "accepted by Graph; waiting for its copy in Sent Items".into(),
                ))
            }
            // A 400 is Graph refusing this message: nothing was sent, and it never will be.
            Err(CallError::Graph(g)) if g.kind == GraphErrorKind::Rejected => Err(Failure::Permanent(format!(
                "Graph refused to send the message: {} {}",
                g.code.as_deref().unwrap_or(""),
                g.message
            ))),
            // Refused before anything happened (throttled, or no token to ask with): the
            // draft is complete and unsent, sending it again later is safe.
            Err(e)
                if matches!(&e, CallError::Token(_))
                    || matches!(&e, CallError::Graph(g) if g.kind == GraphErrorKind::Throttled) =>
            {
                row.step = SendStep::Attachments;
                row.submitted_at = None;
                Err(Failure::Transient(format!("send refused for now: {e}")))
            }
            // Sent or not? Unknown: the confirmation finds out before anything else is done.
            Err(e) => Ok(Progress::Wait(
                self.confirm_wait(row),
                format!("send not confirmed: {e}"),
            )),
        }
    }

    /// What became of a message whose `send` was asked for.
    async fn confirm(&self, ctx: &MailboxCtx, row: &mut OutboundRecord) -> Result<Progress, Failure> {
        let now = OffsetDateTime::now_utc();
        let submitted = row.submitted_at.unwrap_or(row.updated_at);
        let within = time::Duration::try_from(self.settings.confirm_within).unwrap_or(time::Duration::minutes(10));
        let overdue = now >= submitted + within;
        let in_transit = |row: &OutboundRecord| -> Result<Progress, Failure> {
            if overdue {
                return Ok(Progress::Unconfirmed(format!(
                    "Graph accepted the send, but the message did not reach Sent Items within {}; it is not sent again automatically",
                    humantime::format_duration(self.settings.confirm_within)
                )));
            }
            Ok(Progress::Wait(
                self.confirm_wait(row),
                "accepted by Graph; waiting for its copy in Sent Items".into(),
            ))
        };
        match confirm::locate(ctx, &row.id).await? {
            Whereabouts::Sent(copy) => {
                row.internet_message_id = copy.internet_message_id.or(row.internet_message_id.take());
                row.conversation_id = copy.conversation_id.or(row.conversation_id.take());
                if let Some(reason) = self.report(ctx, row).await? {
                    return Err(Failure::Permanent(reason));
                }
                Ok(Progress::Sent)
            }
            Whereabouts::Outbox => in_transit(row),
            Whereabouts::Drafts(draft) => {
                let settle = (self.settings.confirm_within / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if row.step == SendStep::SendRequested && now >= submitted + settle {
                    // Never accepted as far as we know, and Graph has not taken it: the request
                    // did not reach Graph. The same draft is sent again, never a new one.
                    tracing::info!(mailbox = %row.mailbox, outbound_id = %row.id, "The draft was not taken by Graph; sending it again.");
                    row.draft_id = Some(draft.id.clone());
                    return self.submit(ctx, row, &draft.id).await;
                }
                in_transit(row)
            }
            Whereabouts::Nowhere => {
                if let Some(reason) = self.report(ctx, row).await? {
                    return Err(Failure::Permanent(reason));
                }
                in_transit(row)
            }
        }
    }

    /// A non-delivery report's reason, when one came back for this row's message.
    async fn report(&self, ctx: &MailboxCtx, row: &OutboundRecord) -> Result<Option<String>, Failure> {
        match (&row.internet_message_id, &row.conversation_id) {
            (Some(message), Some(conversation)) => confirm::non_delivery(ctx, message, conversation).await,
            _ => Ok(None),
        }
    }

    /// When to look again for a sent message: soon at first, then less often, and never past
    /// the end of the confirmation period.
    pub(super) fn confirm_wait(&self, row: &OutboundRecord) -> Duration {
        let now = OffsetDateTime::now_utc();
        let submitted = row.submitted_at.unwrap_or(now);
        let elapsed = Duration::try_from(now - submitted).unwrap_or_default();
        let wait = (elapsed / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let left = Duration::try_from(submitted + self.settings.confirm_within - now).unwrap_or_default();
        wait.min(left.max(Duration::from_millis(200)))
    }

    async fn checkpoint(&self, row: &OutboundRecord) -> Result<(), Failure> {
        let mut saved = row.clone();
        saved.updated_at = OffsetDateTime::now_utc();
        self.store.update_outbound(&saved).await?;
        Ok(())
    }
}
