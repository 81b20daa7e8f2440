//! Mail transport: what happens after Graph answered 202 to `send`, `sendMail`, `reply`,
//! `replyAll` or `forward`. The item waits in the Outbox for `transport_delay_ms` of emulator
//! time; then a copy with new ids (immutable ones too) lands in Sent Items and one in each
//! emulated recipient's Inbox, or, while `transport_failure` is set, the copy still lands in
//! Sent Items but nobody receives it and a non-delivery report arrives in the sender's Inbox.
//!
//! Transport runs lazily: whoever locks the world next moves what is due, so advancing the
//! emulator clock is enough to make a long delay pass.

use time::OffsetDateTime;

use super::model::{Attachment, BodyType, Message, Recipient, World};
use super::util::{item_id, key};

/// A submitted message waiting in its mailbox's Outbox.
pub(crate) struct InTransit {
    /// Sending mailbox (key form).
    pub(crate) address: String,
    /// Immutable id of the item in the Outbox.
    pub(crate) immutable: String,
    /// When transport handles it.
    pub(crate) due: OffsetDateTime,
    /// Keep a copy in Sent Items (`saveToSentItems`).
    pub(crate) save: bool,
}

/// Sender of non-delivery reports, as Exchange Online names it.
const NDR_SENDER: &str = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e";

impl World {
    /// Hands a finished message to transport: it is no longer a draft, it sits in the Outbox
    /// (an existing item moves there, keeping its immutable id) until transport takes it.
    pub(crate) fn submit(&mut self, address: &str, mut m: Message, existing: bool, save: bool, now: OffsetDateTime) {
        let Some(outbox) = self.mailboxes.get(address).and_then(|mb| mb.folder_id("outbox")) else {
            return;
        };
        m.is_draft = false;
        m.sent = Some(now);
        m.received = now;
        if m.from.is_none() {
            let owner = &self.mailboxes[address];
            m.from = Some(Recipient {
                name: owner.display_name.clone(),
                address: owner.address.clone(),
            });
        }
        let immutable = m.immutable_id.clone();
        if existing {
            if let Some(mb) = self.mailboxes.get_mut(address) {
                let keep = mb
                    .messages
                    .get(&immutable)
                    .map(|old| (old.id.clone(), old.folder_id.clone()));
                if let Some((id, folder)) = keep {
                    m.id = id;
                    m.folder_id = folder;
                }
                mb.messages.insert(immutable.clone(), m);
            }
            self.move_message(address, &immutable, &outbox, now);
        } else {
            m.folder_id = outbox;
            self.insert_message(address, m);
        }
        let delay = time::Duration::milliseconds(i64::try_from(self.settings.transport_delay_ms).unwrap_or(i64::MAX));
        self.transport.push(InTransit {
            address: address.to_string(),
            immutable,
            due: now + delay,
            save,
        });
    }

    /// Moves every message whose transport time has come.
    pub(crate) fn run_transport(&mut self, now: OffsetDateTime) {
        if self.transport.iter().all(|t| t.due > now) {
            return;
        }
        let (due, waiting): (Vec<InTransit>, Vec<InTransit>) = std::mem::take(&mut self.transport)
            .into_iter()
            .partition(|t| t.due <= now);
        self.transport = waiting;
        for t in due {
            self.transmit(&t, now);
        }
    }

    /// One message leaves the Outbox.
    fn transmit(&mut self, t: &InTransit, now: OffsetDateTime) {
        // Deleted or moved out of the Outbox meanwhile: transport never sees it.
        let Some(mb) = self.mailboxes.get(&t.address) else {
            return;
        };
        let outbox = mb.folder_id("outbox");
        let Some(m) = mb
            .messages
            .get(&t.immutable)
            .filter(|m| Some(&m.folder_id) == outbox.as_ref())
            .cloned()
        else {
            return;
        };
        self.delete_message(&t.address, &t.immutable);
        if t.save
            && let Some(sent_items) = self.mailboxes[&t.address].folder_id("sentitems")
        {
            let copy = Message {
                immutable_id: item_id("AAkALg"),
                id: item_id("AAMkAD"),
                folder_id: sent_items,
                is_read: true,
                ..m.clone()
            };
            self.insert_message(&t.address, copy);
        }
        let recipients: Vec<String> =
            m.to.iter()
                .chain(&m.cc)
                .chain(&m.bcc)
                .map(|r| key(&r.address))
                .collect();
        if let Some(reason) = self.settings.transport_failure.clone() {
            self.non_delivery_report(&t.address, &m, &reason, now);
            return;
        }
        let mut delivered: Vec<String> = Vec::new();
        for address in recipients {
            if delivered.contains(&address) || !self.mailboxes.contains_key(&address) {
                continue;
            }
            delivered.push(address.clone());
            let inbox = self.mailboxes[&address].folder_id("inbox").expect("inbox exists");
            let copy = Message {
                immutable_id: item_id("AAkALg"),
                id: item_id("AAMkAD"),
                folder_id: inbox,
                is_read: false,
                bcc: Vec::new(),
                extended: Vec::new(),
                categories: Vec::new(),
                received: now,
                attachments: m
                    .attachments
                    .iter()
                    .map(|a| Attachment {
                        id: item_id("AAMkADAtt"),
                        ..a.clone()
                    })
                    .collect(),
                ..m.clone()
            };
            self.insert_message(&address, copy);
        }
    }

    /// A non-delivery report for `m` in the sender's Inbox: threaded on the message
    /// (In-Reply-To, References, same conversation), marked as an NDR, carrying the reason.
    fn non_delivery_report(&mut self, address: &str, m: &Message, reason: &str, now: OffsetDateTime) {
        let Some(inbox) = self.mailboxes.get(address).and_then(|mb| mb.folder_id("inbox")) else {
            return;
        };
        let domain = address.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
        let mut ndr = Message::new(&inbox, now, &domain);
        ndr.from = Some(Recipient {
            name: "Microsoft Outlook".into(),
            address: format!("{NDR_SENDER}@{domain}"),
        });
        ndr.to = m.from.clone().into_iter().collect();
        ndr.subject = format!("Undeliverable: {}", m.subject);
        let failed: Vec<String> =
            m.to.iter()
                .chain(&m.cc)
                .chain(&m.bcc)
                .map(|r| r.address.clone())
                .collect();
        ndr.body_type = BodyType::Html;
        ndr.body = format!(
            "<html><body><p><b>Your message to {} couldn't be delivered.</b></p>\
             <p>Delivery has failed to these recipients or groups: {}</p>\
             <p>Diagnostic information for administrators:</p>\
             <p>Remote Server returned '{}'</p></body></html>",
            failed.join(", "),
            failed.join(", "),
            reason.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"),
        );
        ndr.in_reply_to = Some(m.internet_message_id.clone());
        ndr.references = m.references.clone();
        ndr.references.push(m.internet_message_id.clone());
        ndr.conversation_id = m.conversation_id.clone();
        ndr.extra_headers = vec![
            ("X-MS-Exchange-Message-Is-Ndr".into(), String::new()),
            ("Auto-Submitted".into(), "auto-replied".into()),
            ("Content-Language".into(), "en-US".into()),
        ];
        self.insert_message(address, ndr);
    }
}
