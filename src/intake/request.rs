//! One request read from a broker: the HTTP API's JSON body, addressed by headers (or an
//! envelope), stored in the outbox exactly like `POST …/reply|forward|send?queue=true`.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::domain::MailboxAddress;
use crate::mailbox::StatusBoard;
use crate::outbound::{ApiRequest, Kind, Outbox};
use crate::store::OutboundRecord;

/// Header naming the sending mailbox.
pub const MAILBOX_HEADER: &str = "Inboxd-Mailbox";
/// Header naming the action: `reply`, `forward` or `send`.
pub const ACTION_HEADER: &str = "Inboxd-Action";
/// Header carrying the Graph id of the message replied to or forwarded.
pub const MESSAGE_ID_HEADER: &str = "Inboxd-Message-Id";
/// Header carrying the idempotency key, as in the HTTP API.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header added to a dead-lettered request: why it was refused.
pub const REASON_HEADER: &str = "Inboxd-Dead-Letter-Reason";

/// Longest accepted idempotency key (as in the HTTP API).
const MAX_KEY_LEN: usize = 255;

/// What the intake hands requests to.
pub struct Intake {
    /// The outbox (store + sender wake-up).
    pub outbox: Arc<Outbox>,
    /// Which mailboxes are configured.
    pub board: Arc<StatusBoard>,
}

/// Why a request was not stored.
#[derive(Debug)]
pub enum Refusal {
    /// The request itself is wrong: dead-letter it with this reason, never retry.
    Invalid(String),
    /// The store did not answer: leave the message for redelivery.
    Retry(String),
}

/// The same addressing as headers, for clients that cannot set headers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    mailbox: Option<String>,
    action: Option<String>,
    message_id: Option<String>,
    idempotency_key: Option<String>,
    request: serde_json::Value,
}

impl Intake {
    /// Validates and stores one request; returns the outbound id. The same idempotency key
    /// twice (a redelivery) answers the stored request's id; nothing is stored twice.
    pub async fn accept(&self, header: impl Fn(&str) -> Option<String>, body: &[u8]) -> Result<String, Refusal> {
        let invalid = |code: &str, message: String| Refusal::Invalid(format!("{code}: {message}"));
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| invalid("invalid_json", format!("request body: {e}")))?;
        let is_envelope = value.get("request").is_some();
        let (mailbox, action, original, key, request) = if is_envelope {
            let e: Envelope = serde_json::from_value(value).map_err(|e| invalid("invalid_envelope", e.to_string()))?;
            (e.mailbox, e.action, e.message_id, e.idempotency_key, e.request)
        } else {
            (
                header(MAILBOX_HEADER),
                header(ACTION_HEADER),
                header(MESSAGE_ID_HEADER),
                header(IDEMPOTENCY_HEADER),
                value,
            )
        };
        let address = mailbox.ok_or_else(|| invalid("mailbox_missing", format!("set {MAILBOX_HEADER}")))?;
        let mailbox = MailboxAddress::parse(&address).map_err(|e| invalid("invalid_address", e))?;
        if self.board.get(&mailbox).is_none() {
            return Err(invalid("unknown_mailbox", format!("{mailbox} is not configured")));
        }
        let kind = match action.as_deref().map(str::trim) {
            Some("reply") => Kind::Reply,
            Some("forward") => Kind::Forward,
            Some("send") => Kind::Send,
            Some(other) => {
                return Err(invalid(
                    "invalid_action",
                    format!("'{other}' is not an action; expected reply, forward or send"),
                ));
            }
            None => return Err(invalid("action_missing", format!("set {ACTION_HEADER}"))),
        };
        let original = match (kind, original) {
            (Kind::Send, _) => None,
            (_, Some(id)) if !id.trim().is_empty() => Some(id.trim().to_string()),
            _ => {
                return Err(invalid(
                    "message_id_missing",
                    format!("a reply or forward names the original in {MESSAGE_ID_HEADER}"),
                ));
            }
        };
        let key = match key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_string(),
            Some(_) => {
                return Err(invalid(
                    "idempotency_key_invalid",
                    format!("{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LEN} characters"),
                ));
            }
            None => {
                return Err(invalid(
                    "idempotency_key_missing",
                    format!("{IDEMPOTENCY_HEADER} is required"),
                ));
            }
        };
        let parsed: ApiRequest =
            serde_json::from_value(request).map_err(|e| invalid("invalid_json", format!("request body: {e}")))?;
        let request = parsed
            .validate(kind, original)
            .map_err(|e| invalid(e.code, e.message))?;
        // A flagged mailbox is not refused: the request waits in the outbox, as `?queue=true`.
        let now = OffsetDateTime::now_utc();
        let hash = request.hash(&mailbox);
        let record = OutboundRecord::queued(
            &mailbox,
            key,
            hash.clone(),
            serde_json::to_string(&request).unwrap_or_default(),
            request.kind.as_str(),
            now,
        );
        let stored = self
            .outbox
            .store()
            .enqueue_outbound(&record)
            .await
            .map_err(|e| Refusal::Retry(e.to_string()))?;
        if stored.request_hash != hash {
            return Err(invalid(
                "idempotency_key_reused",
                "this idempotency key was already used for a different request to this mailbox".into(),
            ));
        }
        if stored.id == record.id {
            tracing::info!(mailbox = %mailbox, outbound_id = %stored.id, kind = kind.as_str(), "Outbound message queued from the intake.");
            self.outbox.wake();
        }
        Ok(stored.id)
    }
}
