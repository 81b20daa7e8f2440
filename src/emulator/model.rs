//! The emulated directory and mail store: tenants, apps, mailboxes, folders, messages, grants.

use std::collections::{BTreeSet, HashMap};

use time::OffsetDateTime;

use super::keys::AppCertificate;
use super::settings::Settings;
use super::util::{guid, item_id, key};

pub(crate) use super::message::{Attachment, BodyType, Malformed, Message, Recipient};

/// Well-known folders every mailbox gets, with their display names.
pub(crate) const WELL_KNOWN_FOLDERS: &[(&str, &str)] = &[
    ("msgfolderroot", "Top of Information Store"),
    ("inbox", "Inbox"),
    ("drafts", "Drafts"),
    ("sentitems", "Sent Items"),
    ("deleteditems", "Deleted Items"),
    ("junkemail", "Junk Email"),
    ("archive", "Archive"),
    ("outbox", "Outbox"),
    ("conversationhistory", "Conversation History"),
];

/// Everything the emulator knows.
#[derive(Default)]
pub(crate) struct World {
    /// Behaviour knobs.
    pub(crate) settings: Settings,
    /// Tenant id → its verified domains.
    pub(crate) tenants: HashMap<String, BTreeSet<String>>,
    /// Domain → tenant id.
    pub(crate) domains: HashMap<String, String>,
    /// Client id → app registration.
    pub(crate) apps: HashMap<String, App>,
    /// Address → mailbox.
    pub(crate) mailboxes: HashMap<String, Mailbox>,
    /// User object id → address.
    pub(crate) user_ids: HashMap<String, String>,
    /// Any message id (regular or immutable) → (mailbox address, immutable id).
    pub(crate) items: HashMap<String, (String, String)>,
    /// Refresh token → grant.
    pub(crate) refresh_tokens: HashMap<String, RefreshGrant>,
    /// Authorization code → pending grant.
    pub(crate) codes: HashMap<String, AuthCode>,
    /// Upload session token → session.
    pub(crate) uploads: HashMap<String, UploadSession>,
    /// Global change counter: every message change gets the next value (delta order).
    pub(crate) seq: u64,
    /// Some message was delivered with `malformed`: answers need the post-processing pass.
    pub(crate) malformed_messages: bool,
    /// Change-notification subscriptions and their delivery queue.
    pub(crate) subscriptions: super::graph::subscriptions::Subscriptions,
    /// Submitted messages waiting in an Outbox, oldest first.
    pub(crate) transport: Vec<super::transport::InTransit>,
}

/// An app registration.
pub(crate) struct App {
    /// Directory the app lives in.
    pub(crate) tenant_id: String,
    /// Application (client) id.
    pub(crate) client_id: String,
    /// Shown in consent errors.
    pub(crate) display_name: String,
    /// Client secrets; old ones stay until rotated away.
    pub(crate) secrets: Vec<Secret>,
    /// Certificate credential.
    pub(crate) certificate: Option<AppCertificate>,
    /// Application permissions granted (admin-consented) to the app.
    pub(crate) roles: Vec<String>,
    /// Allowed redirect URIs; empty accepts any.
    pub(crate) redirect_uris: Vec<String>,
    /// Service principal object id (`oid` of app tokens).
    pub(crate) object_id: String,
}

/// One client secret.
pub(crate) struct Secret {
    /// The secret value.
    pub(crate) value: String,
    /// Expired secrets fail with AADSTS7000222.
    pub(crate) expired: bool,
}

/// A delegated grant behind a refresh token.
#[derive(Clone)]
pub(crate) struct RefreshGrant {
    /// Tenant of the user.
    pub(crate) tenant_id: String,
    /// App the token was issued to.
    pub(crate) client_id: String,
    /// The user (mailbox address).
    pub(crate) address: String,
    /// Scopes granted (plain names, e.g. `Mail.ReadWrite`, `offline_access`).
    pub(crate) scopes: Vec<String>,
    /// Set by `/_emulator/revoke`: every use fails with this AADSTS code.
    pub(crate) failure: Option<u32>,
    /// Last redemption (or issue) time: Entra expires unused tokens after 90 days.
    pub(crate) last_used: OffsetDateTime,
}

/// A pending authorization code.
pub(crate) struct AuthCode {
    /// Tenant it was issued in.
    pub(crate) tenant_id: String,
    /// App that asked.
    pub(crate) client_id: String,
    /// Must match at redemption.
    pub(crate) redirect_uri: String,
    /// Scopes consented.
    pub(crate) scopes: Vec<String>,
    /// PKCE challenge and method.
    pub(crate) challenge: Option<(String, String)>,
    /// The consenting user.
    pub(crate) address: String,
    /// Codes live about 10 minutes.
    pub(crate) issued_at: OffsetDateTime,
    /// A code is single-use.
    pub(crate) redeemed: bool,
}

/// A large-attachment upload in progress.
pub(crate) struct UploadSession {
    /// Mailbox of the draft.
    pub(crate) address: String,
    /// Immutable id of the draft.
    pub(crate) message: String,
    /// Attachment being built.
    pub(crate) name: String,
    /// Its content type.
    pub(crate) content_type: String,
    /// Inline flag and content id.
    pub(crate) is_inline: bool,
    /// Content id for inline attachments.
    pub(crate) content_id: Option<String>,
    /// Declared total size.
    pub(crate) size: usize,
    /// Bytes received so far.
    pub(crate) received: Vec<u8>,
    /// Expiry.
    pub(crate) expires_at: OffsetDateTime,
}

/// A mailbox (user).
pub(crate) struct Mailbox {
    /// User object id.
    pub(crate) id: String,
    /// Tenant of the user.
    pub(crate) tenant_id: String,
    /// Primary SMTP address.
    pub(crate) address: String,
    /// Display name.
    pub(crate) display_name: String,
    /// Application access policy: app-only calls are denied.
    pub(crate) denied: bool,
    /// The denial comes from an application access policy (the documented wording) rather
    /// than RBAC for Applications.
    pub(crate) denied_by_policy: bool,
    /// Folders, well-known ones first.
    pub(crate) folders: Vec<Folder>,
    /// Immutable id → message.
    pub(crate) messages: HashMap<String, Message>,
    /// Delta/next link token → cursor.
    pub(crate) delta_links: HashMap<String, DeltaCursor>,
}

/// A mail folder.
pub(crate) struct Folder {
    /// Folder id.
    pub(crate) id: String,
    /// Well-known name, if any.
    pub(crate) well_known: Option<String>,
    /// Display name.
    pub(crate) display_name: String,
    /// Messages that left this folder (deleted or moved out), for `@removed`.
    pub(crate) tombstones: Vec<Tombstone>,
    /// Generation of the newest delta link issued for this folder.
    pub(crate) delta_generation: u64,
}

/// A message that left a folder.
pub(crate) struct Tombstone {
    /// Change sequence at which it left.
    pub(crate) seq: u64,
    /// Its regular id at that time.
    pub(crate) id: String,
    /// Its immutable id.
    pub(crate) immutable_id: String,
}

/// Where a delta round stands; a link token maps to one of these.
#[derive(Clone)]
pub(crate) struct DeltaCursor {
    /// Folder id.
    pub(crate) folder_id: String,
    /// Changes after this sequence are in the round.
    pub(crate) since: u64,
    /// ... up to this one (the snapshot of the round).
    pub(crate) upto: u64,
    /// Last (seq, immutable id) returned in this round; `None` at a round's start.
    pub(crate) after: Option<(u64, String)>,
    /// `$select` of the first request.
    pub(crate) select: Option<Vec<String>>,
    /// `$filter=receivedDateTime ge|gt …` of the first request (initial round only).
    pub(crate) received_from: Option<(OffsetDateTime, bool)>,
    /// `changeType` of the first request.
    pub(crate) change_type: Option<String>,
    /// First round: no `@removed` entries.
    pub(crate) initial: bool,
    /// Folder delta generation the link belongs to.
    pub(crate) generation: u64,
    /// When the link was issued.
    pub(crate) issued_at: OffsetDateTime,
    /// Last item of the previous page (replayed when `delta_replay` is on).
    pub(crate) replay: Option<String>,
}

impl World {
    /// Registers a tenant and one of its domains.
    pub(crate) fn add_domain(&mut self, tenant_id: &str, domain: Option<&str>) {
        let domains = self.tenants.entry(key(tenant_id)).or_default();
        if let Some(domain) = domain {
            domains.insert(key(domain));
            self.domains.insert(key(domain), key(tenant_id));
        }
    }

    /// Tenant id for a path segment: a tenant id or one of its domains.
    pub(crate) fn resolve_tenant(&self, segment: &str) -> Option<String> {
        let k = key(segment);
        if self.tenants.contains_key(&k) {
            return Some(k);
        }
        self.domains.get(&k).cloned()
    }

    /// Mailbox for a Graph path segment: address or user object id.
    pub(crate) fn resolve_mailbox(&self, segment: &str) -> Option<String> {
        let k = key(segment);
        if self.mailboxes.contains_key(&k) {
            return Some(k);
        }
        self.user_ids.get(&k).cloned()
    }

    /// The next change sequence.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Creates a mailbox with the well-known folders.
    pub(crate) fn create_mailbox(&mut self, tenant_id: &str, address: &str, display_name: Option<&str>) -> &Mailbox {
        let domain = address.rsplit_once('@').map(|(_, d)| d.to_string());
        self.add_domain(tenant_id, domain.as_deref());
        let k = key(address);
        let id = guid();
        self.user_ids.insert(id.clone(), k.clone());
        let folders = WELL_KNOWN_FOLDERS
            .iter()
            .map(|(wk, name)| Folder {
                id: item_id("AQMkAD"),
                well_known: Some((*wk).to_string()),
                display_name: (*name).to_string(),
                tombstones: Vec::new(),
                delta_generation: 0,
            })
            .collect();
        let local = address.split('@').next().unwrap_or(address);
        self.mailboxes.insert(
            k.clone(),
            Mailbox {
                id,
                tenant_id: key(tenant_id),
                address: k.clone(),
                display_name: display_name.map(str::to_string).unwrap_or_else(|| local.to_string()),
                denied: false,
                denied_by_policy: false,
                folders,
                messages: HashMap::new(),
                delta_links: HashMap::new(),
            },
        );
        &self.mailboxes[&k]
    }

    /// Stores a message in a mailbox folder (it enters the folder now).
    pub(crate) fn insert_message(&mut self, address: &str, mut message: Message) -> Message {
        let seq = self.next_seq();
        message.seq = seq;
        message.entered_seq = seq;
        let k = key(address);
        self.items
            .insert(message.id.clone(), (k.clone(), message.immutable_id.clone()));
        self.items
            .insert(message.immutable_id.clone(), (k.clone(), message.immutable_id.clone()));
        if let Some(mailbox) = self.mailboxes.get_mut(&k) {
            mailbox.messages.insert(message.immutable_id.clone(), message.clone());
            let user_id = mailbox.id.clone();
            self.subscriptions
                .message_created(&k, &user_id, &message.folder_id, &message.id);
        }
        message
    }

    /// Finds a message of a mailbox by regular or immutable id.
    pub(crate) fn find_message(&self, address: &str, id: &str) -> Option<String> {
        match self.items.get(id) {
            Some((owner, immutable)) if owner == address => Some(immutable.clone()),
            _ => None,
        }
    }

    /// Marks a message changed (delta sees it again) and records which Graph properties
    /// changed. A read-state change alone leaves `lastModifiedDateTime` as it was, like
    /// Exchange does.
    pub(crate) fn touch(&mut self, address: &str, immutable: &str, now: OffsetDateTime, properties: &[&'static str]) {
        let seq = self.next_seq();
        if let Some(m) = self
            .mailboxes
            .get_mut(address)
            .and_then(|mb| mb.messages.get_mut(immutable))
        {
            m.seq = seq;
            m.change_key = item_id("CQAAAB");
            m.record_change(properties, seq);
            if properties.is_empty() || properties.iter().any(|p| *p != "isRead") {
                m.modified = now;
                m.record_change(&["lastModifiedDateTime", "changeKey"], seq);
            }
        }
    }

    /// Moves a message to another folder; a new regular id unless `keep_id`.
    pub(crate) fn move_message(&mut self, address: &str, immutable: &str, folder_id: &str, now: OffsetDateTime) {
        let seq = self.next_seq();
        let Some(mailbox) = self.mailboxes.get_mut(address) else {
            return;
        };
        let Some(message) = mailbox.messages.get_mut(immutable) else {
            return;
        };
        let old_id = std::mem::replace(&mut message.id, item_id("AAMkAD"));
        if let Some(folder) = mailbox.folders.iter_mut().find(|f| f.id == message.folder_id) {
            folder.tombstones.push(Tombstone {
                seq,
                id: old_id.clone(),
                immutable_id: immutable.to_string(),
            });
        }
        message.folder_id = folder_id.to_string();
        message.seq = seq;
        message.entered_seq = seq;
        message.modified = now;
        message.change_key = item_id("CQAAAB");
        let new_id = message.id.clone();
        self.items.remove(&old_id);
        self.items.insert(new_id, (address.to_string(), immutable.to_string()));
    }

    /// Deletes a message for good (leaves a tombstone in its folder).
    pub(crate) fn delete_message(&mut self, address: &str, immutable: &str) {
        let seq = self.next_seq();
        let Some(mailbox) = self.mailboxes.get_mut(address) else {
            return;
        };
        let Some(message) = mailbox.messages.remove(immutable) else {
            return;
        };
        if let Some(folder) = mailbox.folders.iter_mut().find(|f| f.id == message.folder_id) {
            folder.tombstones.push(Tombstone {
                seq,
                id: message.id.clone(),
                immutable_id: immutable.to_string(),
            });
        }
        self.items.remove(&message.id);
        self.items.remove(immutable);
    }
}

impl Mailbox {
    /// Folder by id or well-known name (case-insensitive).
    pub(crate) fn folder(&self, id_or_name: &str) -> Option<&Folder> {
        let k = key(id_or_name);
        self.folders
            .iter()
            .find(|f| f.id == id_or_name || f.well_known.as_deref() == Some(k.as_str()))
    }

    /// Folder id by id or well-known name.
    pub(crate) fn folder_id(&self, id_or_name: &str) -> Option<String> {
        self.folder(id_or_name).map(|f| f.id.clone())
    }
}
