//! `/v1/mailboxes` on any replica: the mailboxes this replica runs as its status board shows
//! them, every other one as the shared store last recorded it; each with its `owner`.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;

use super::Cluster;
use crate::config::{Access, MailboxConfig};
use crate::domain::{MailboxAddress, MailboxState};
use crate::mailbox::MailboxView;
use crate::store::prelude::*;
use crate::store::{MailboxStatus, StoreError};

/// The configured mailboxes (or only `only`), each with its `owner` (null while nobody holds
/// its lease).
pub async fn annotate(
    cluster: &Cluster,
    local: Vec<MailboxView>,
    only: Option<&MailboxAddress>,
) -> Result<Vec<Value>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let store = cluster.store();
    let owners = store.owners(now).await?;
    let statuses: HashMap<MailboxAddress, _> = store.statuses().await?.into_iter().collect();
    let totals = store.delivered_totals().await?;
    let mut local: HashMap<MailboxAddress, MailboxView> = local.into_iter().map(|v| (v.address.clone(), v)).collect();
    let configured = cluster.configured();
    let mut sorted: Vec<&MailboxConfig> = configured.iter().map(|m| &**m).collect();
    sorted.sort_by(|a, b| a.address.as_str().cmp(b.address.as_str()));
    let mut out = Vec::new();
    for m in sorted {
        if only.is_some_and(|o| *o != m.address) {
            continue;
        }
        let view = match local.remove(&m.address) {
            Some(v) if cluster.fence.holds(&m.address) => v,
            _ => stored_view(m, statuses.get(&m.address), totals.get(&m.address).copied(), now),
        };
        let mut json = serde_json::to_value(&view).map_err(|e| StoreError::Database(format!("mailbox view: {e}")))?;
        if let Value::Object(map) = &mut json {
            map.insert(
                "owner".into(),
                owners
                    .get(&m.address)
                    .cloned()
                    .flatten()
                    .map_or(Value::Null, Value::String),
            );
        }
        out.push(json);
    }
    Ok(out)
}

/// A mailbox another replica runs, as the shared store last recorded it.
fn stored_view(
    m: &MailboxConfig,
    status: Option<&MailboxStatus>,
    delivered_total: Option<u64>,
    now: OffsetDateTime,
) -> MailboxView {
    MailboxView {
        address: m.address.clone(),
        app: m.app.to_string(),
        access: if m.access == Access::App { "app" } else { "delegated" },
        state: match status {
            _ if !m.enabled => MailboxState::Disabled,
            Some(s) => s.state,
            None => MailboxState::Starting,
        },
        reason: status.and_then(|s| s.reason.clone()),
        aadsts: status.and_then(|s| s.aadsts),
        consent_url: None,
        since: status.map_or(now, |s| s.since),
        last_success_at: status.and_then(|s| s.last_success_at),
        delivered_total: delivered_total.unwrap_or(0),
        failing_folders: Vec::new(),
        consent_link: None,
        first_sync: None,
        notifications: None,
    }
}

/// One configured mailbox this replica does not run, as the shared store knows it (None:
/// not configured).
pub async fn remote(cluster: &Cluster, mailbox: &MailboxAddress) -> Result<Option<MailboxView>, StoreError> {
    let configured = cluster.configured();
    let Some(m) = configured.iter().find(|m| m.address == *mailbox) else {
        return Ok(None);
    };
    let store = cluster.store();
    let status = store
        .statuses()
        .await?
        .into_iter()
        .find(|(a, _)| a == mailbox)
        .map(|(_, s)| s);
    let total = store.delivered_total(mailbox).await?;
    Ok(Some(stored_view(
        m,
        status.as_ref(),
        Some(total),
        OffsetDateTime::now_utc(),
    )))
}
