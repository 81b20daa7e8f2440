//! The status board: every mailbox's state as `/v1/mailboxes` and metrics show it. A state
//! change is logged once at WARN (or INFO when it recovers), not on every poll.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{Access, MailboxConfig};
use crate::domain::{MailboxAddress, MailboxState};
use crate::event::{MAILBOX_STATE_SCHEMA, MailboxStateEvent};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::{MailboxStatus, Store};

/// One mailbox as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxView {
    /// Address.
    pub address: MailboxAddress,
    /// App name.
    pub app: String,
    /// `app` or `delegated`.
    pub access: &'static str,
    /// State.
    pub state: MailboxState,
    /// Why, in words.
    pub reason: Option<String>,
    /// AADSTS code behind the state.
    pub aadsts: Option<u32>,
    /// Consent URL (delegated mailboxes needing consent).
    pub consent_url: Option<String>,
    /// Since when in this state (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Last successful poll.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    /// Messages acknowledged by the sink, ever.
    pub delivered_total: u64,
    /// Folders in trouble (the others are fine): each is retried on its own.
    pub failing_folders: Vec<FolderTrouble>,
    /// Where a human consents (delegated mailboxes); shown as `consent_url` when needed.
    #[serde(skip)]
    pub consent_link: Option<String>,
    /// The first sync of a folder in progress (absent otherwise); boxed, as most mailboxes have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_sync: Option<Box<super::progress::FirstSyncView>>,
    /// Change notifications of this mailbox (absent while `[notifications]` is off); boxed,
    /// as most deployments poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Box<NotificationsView>>,
}

/// How a mailbox learns of new mail while `[notifications]` is on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotificationsView {
    /// `active` (Graph wakes it; safety poll only), `pending` (subscribing) or `fallback`
    /// (no subscription could be created or kept: polled at its `poll_interval`).
    pub state: &'static str,
    /// Why it falls back, and what to do.
    pub reason: Option<String>,
    /// The interval between polls in force, seconds.
    pub poll_interval_seconds: f64,
}

/// A folder that failed while its mailbox's other folders kept flowing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FolderTrouble {
    /// The folder as configured.
    pub folder: String,
    /// What failed and what to do.
    pub reason: String,
    /// Since when it fails (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// Shared by mailbox tasks (writers) and the API (reader).
pub struct StatusBoard {
    views: Mutex<BTreeMap<MailboxAddress, MailboxView>>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// State changes also go to routing as `inboxd.mailbox_state.v1`.
    sink: Arc<Sink>,
}

impl StatusBoard {
    /// An empty board.
    pub fn new(metrics: Arc<Metrics>, store: Arc<dyn Store>, sink: Arc<Sink>) -> Arc<StatusBoard> {
        Arc::new(StatusBoard {
            views: Mutex::new(BTreeMap::new()),
            metrics,
            store,
            sink,
        })
    }

    /// Registers a mailbox in `starting` (or `disabled`).
    pub async fn register(&self, config: &MailboxConfig, consent_link: Option<String>) {
        let delivered_total = self.store.delivered_total(&config.address).await.unwrap_or(0);
        let state = if config.enabled {
            MailboxState::Starting
        } else {
            MailboxState::Disabled
        };
        let view = MailboxView {
            address: config.address.clone(),
            app: config.app.to_string(),
            access: if config.access == Access::App {
                "app"
            } else {
                "delegated"
            },
            state,
            reason: None,
            aadsts: None,
            consent_url: None,
            since: OffsetDateTime::now_utc(),
            last_success_at: None,
            delivered_total,
            failing_folders: Vec::new(),
            consent_link,
            first_sync: None,
            notifications: None,
        };
        // What the store knew before a restart: when the mailbox last made progress. Seeding it
        // keeps `last_success_at` across restarts and lets a mailbox stuck since a restart (or
        // never polled) age like any other instead of having no metric until its first success.
        let progress = if config.enabled {
            match self.store.last_progress(&config.address, &config.folders).await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(mailbox = %config.address, error = %e, "Could not read the mailbox's last poll from the store; its last-success metric starts now.");
                    None
                }
            }
        } else {
            None
        };
        let view = MailboxView {
            last_success_at: progress,
            ..view
        };
        let old = self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(config.address.clone(), view);
        self.metrics.mailbox_state(old.map(|v| v.state), state);
        if config.enabled {
            let since = progress.unwrap_or_else(OffsetDateTime::now_utc);
            self.metrics.mailbox_polled(
                config.address.as_str(),
                config.poll_interval.as_secs_f64(),
                since.unix_timestamp() as f64,
            );
        } else {
            self.metrics.forget_mailbox(config.address.as_str());
        }
    }

    /// Moves a mailbox to `state`; logs and persists only real changes.
    pub async fn set(
        &self,
        mailbox: &MailboxAddress,
        state: MailboxState,
        reason: Option<String>,
        aadsts: Option<u32>,
    ) {
        let now = OffsetDateTime::now_utc();
        let changed = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let Some(view) = views.get_mut(mailbox) else { return };
            // Only a new state is a change (logged, sent, persisted); a new wording of the same
            // trouble (another request id) just refreshes the reason.
            let changed = view.state != state;
            if !changed {
                view.reason = reason.clone();
                view.aadsts = aadsts;
            }
            if changed {
                let from = view.state;
                if from != state {
                    view.since = now;
                    self.metrics.mailbox_state(Some(from), state);
                    if state.is_flagged() {
                        self.metrics.hide_last_success(mailbox.as_str());
                    } else if from.is_flagged() {
                        // Polled again: the series resumes from the last success known.
                        let last = view.last_success_at.unwrap_or(now);
                        self.metrics
                            .last_success
                            .get_or_create(&vec![("mailbox", mailbox.to_string())])
                            .set(last.unix_timestamp() as f64);
                    }
                }
                view.state = state;
                view.reason = reason.clone();
                view.aadsts = aadsts;
                view.consent_url = if state == MailboxState::NeedsReconsent {
                    view.consent_link.clone()
                } else {
                    None
                };
                Some((from, view.clone()))
            } else {
                None
            }
        };
        let Some((from, view)) = changed else { return };
        let reason_text = reason.as_deref().unwrap_or("");
        match state {
            MailboxState::Active | MailboxState::Starting | MailboxState::Disabled => {
                tracing::info!(mailbox = %mailbox, from = from.as_str(), state = state.as_str(), "Mailbox state changed.");
            }
            MailboxState::Backoff => {
                tracing::warn!(mailbox = %mailbox, from = from.as_str(), state = state.as_str(), reason = reason_text, "Mailbox is backing off; it will retry by itself.");
            }
            _ => {
                tracing::warn!(
                    mailbox = %mailbox, from = from.as_str(), state = state.as_str(), reason = reason_text, aadsts = aadsts,
                    "Mailbox is flagged and skipped; it is re-probed slowly and resumes when the cause is gone."
                );
            }
        }
        let since = view
            .since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let event = MailboxStateEvent {
            schema: MAILBOX_STATE_SCHEMA.into(),
            event_id: uuid::Uuid::new_v4().to_string(),
            dedup_key: format!("state:{mailbox}:{}:{since}", state.as_str()),
            mailbox: mailbox.to_string(),
            from: from.as_str().into(),
            state: state.as_str().into(),
            reason: view.reason.clone(),
            aadsts,
            consent_url: view.consent_url.clone(),
            since,
        };
        if let Some(Err(e)) = self.sink.deliver(&[event]).await.into_iter().next() {
            tracing::warn!(mailbox = %mailbox, error = %e, "Could not send the state change to the sink; /v1/mailboxes shows it.");
        }
        let status = MailboxStatus {
            state,
            reason,
            aadsts,
            since: view.since,
            last_success_at: view.last_success_at,
        };
        if let Err(e) = self.store.save_status(mailbox, &status).await {
            tracing::warn!(mailbox = %mailbox, error = %e, "Could not persist the mailbox state.");
        }
    }

    /// Records a successful poll and newly delivered messages.
    pub fn succeeded(&self, mailbox: &MailboxAddress, delivered: u64) {
        let now = OffsetDateTime::now_utc();
        if let Some(view) = self.views.lock().unwrap_or_else(|p| p.into_inner()).get_mut(mailbox) {
            view.last_success_at = Some(now);
            view.delivered_total += delivered;
        } else {
            // Removed meanwhile: its series must not come back.
            return;
        }
        self.metrics
            .poll_succeeded(mailbox.as_str(), now.unix_timestamp() as f64);
    }

    /// Records one folder's round: `None` when it went through, else why it failed. A folder
    /// that starts or stops failing is logged once.
    pub fn folder_result(&self, mailbox: &MailboxAddress, folder: &str, failure: Option<String>) {
        let changed = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let Some(view) = views.get_mut(mailbox) else { return };
            let position = view.failing_folders.iter().position(|f| f.folder == folder);
            match (position, failure.clone()) {
                (None, None) => false,
                (Some(i), None) => {
                    view.failing_folders.remove(i);
                    true
                }
                (Some(i), Some(reason)) => {
                    view.failing_folders[i].reason = reason;
                    false
                }
                (None, Some(reason)) => {
                    view.failing_folders.push(FolderTrouble {
                        folder: folder.to_string(),
                        reason,
                        since: OffsetDateTime::now_utc(),
                    });
                    true
                }
            }
        };
        if !changed {
            return;
        }
        let gauge = self
            .metrics
            .folder_failing
            .get_or_create(&vec![("mailbox", mailbox.to_string()), ("folder", folder.to_string())]);
        match failure {
            Some(reason) => {
                gauge.set(1);
                tracing::warn!(mailbox = %mailbox, folder, reason, "A folder of this mailbox fails; its other folders keep flowing and this one is retried with backoff.");
            }
            None => {
                gauge.set(0);
                tracing::info!(mailbox = %mailbox, folder, "The folder is polled again.");
            }
        }
    }

    /// Records how the mailbox learns of new mail; true when that changed.
    pub fn set_notifications(&self, mailbox: &MailboxAddress, view: NotificationsView) -> bool {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = views.get_mut(mailbox) else { return false };
        let changed = v.notifications.as_deref() != Some(&view);
        if changed {
            v.notifications = Some(Box::new(view));
        }
        changed
    }

    /// Records a first sync's progress (`None`: it finished).
    pub fn set_first_sync(&self, mailbox: &MailboxAddress, progress: Option<&super::progress::FirstSyncView>) {
        if let Some(v) = self.views.lock().unwrap_or_else(|p| p.into_inner()).get_mut(mailbox) {
            v.first_sync = progress.map(|p| Box::new(p.clone()));
        }
    }

    /// The first sync's progress recorded for a mailbox, if any.
    pub fn first_sync(&self, mailbox: &MailboxAddress) -> Option<super::progress::FirstSyncView> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mailbox)
            .and_then(|v| v.first_sync.as_deref().cloned())
    }

    /// Forgets a mailbox removed from the configuration.
    pub fn remove(&self, mailbox: &MailboxAddress) {
        let old = self.views.lock().unwrap_or_else(|p| p.into_inner()).remove(mailbox);
        if let Some(old) = &old {
            for trouble in &old.failing_folders {
                self.metrics.folder_failing.remove(&vec![
                    ("mailbox", mailbox.to_string()),
                    ("folder", trouble.folder.clone()),
                ]);
            }
        }
        if let Some(old) = old {
            self.metrics
                .mailboxes
                .get_or_create(&vec![("state", old.state.as_str().to_string())])
                .dec();
        }
        self.metrics.forget_mailbox(mailbox.as_str());
    }

    /// Every mailbox.
    pub fn all(&self) -> Vec<MailboxView> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One mailbox.
    pub fn get(&self, mailbox: &MailboxAddress) -> Option<MailboxView> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mailbox)
            .cloned()
    }
}
