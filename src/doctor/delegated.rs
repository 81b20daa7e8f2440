//! Delegated mailboxes: a consent is stored, it still refreshes (the rotated refresh token is
//! stored again, as the daemon does), its scopes cover what inboxd needs; else the consent link.

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::apps::{NEEDED, claims, list, token_failure};
use super::mailboxes::{Bearer, Probe};
use super::report::Check;
use crate::auth::seal::Sealer;
use crate::auth::{DELEGATED_SCOPES, DelegatedTokens, TokenEndpoint};
use crate::config::{Config, MailboxConfig};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The delegated checks, sharing one store.
pub struct Consent {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Opened at the first delegated mailbox; `Err` says why it could not be.
    store: Option<Result<Arc<dyn Store>, StoreError>>,
}

impl Consent {
    /// Nothing is opened until a delegated mailbox is checked.
    pub fn new(http: &reqwest::Client, metrics: &Arc<Metrics>) -> Consent {
        Consent {
            http: http.clone(),
            metrics: metrics.clone(),
            store: None,
        }
    }

    /// Checks one delegated mailbox: its consent, then reading and writing with it.
    pub async fn check(&mut self, mailbox: &MailboxConfig, probe: &Probe, config: &Config) -> Vec<Check> {
        let address = mailbox.address.as_str();
        let link = config.server.consent_link(config.server.listen, &mailbox.address);
        let consent_fix = format!(
            "the mailbox's user (or one with full access to it) consents: run `inboxd consent {address}` against the running daemon, or open {link}"
        );
        let fail = |detail: String| Check::fail("mailbox", address, "consent", detail);
        let Some(key) = &config.store.encryption_key else {
            return vec![
                fail("store.encryption_key is not set, so no delegated consent can be stored".into())
                    .fix("set store.encryption_key (a secret reference such as env:INBOXD_STORE_KEY)"),
            ];
        };
        let Some(app) = config.apps.iter().find(|a| a.name == mailbox.app) else {
            return vec![fail(format!("app '{}' is not configured", mailbox.app))];
        };
        let endpoint = match TokenEndpoint::new(
            app,
            &config.microsoft.authority_host,
            self.http.clone(),
            self.metrics.clone(),
        ) {
            Ok(e) => Arc::new(e),
            Err(_) => {
                return vec![Check::skip(
                    "mailbox",
                    address,
                    "consent",
                    format!("app '{}' has no usable credential (see its checks above)", app.name),
                )];
            }
        };
        if self.store.is_none() {
            self.store = Some(crate::store::open(&config.store.url).await);
        }
        let store = match self.store.as_ref() {
            Some(Ok(s)) => s.clone(),
            Some(Err(StoreError::Locked(_))) => {
                return vec![Check::skip(
                    "mailbox",
                    address,
                    "consent",
                    "the store is in use by a running inboxd, so the stored grant was not tried; `inboxd status` shows this mailbox's state".into(),
                )];
            }
            Some(Err(e)) => {
                return vec![fail(format!("the store cannot be opened: {e}")).fix("check store.url")];
            }
            None => return Vec::new(),
        };
        let sealer = Arc::new(Sealer::with_previous(key, &config.store.previous_encryption_keys));
        let stored = match store.delegated_token(&mailbox.address).await {
            Ok(Some(t)) => t,
            Ok(None) => return vec![fail("no consent has been given for this mailbox yet".into()).fix(consent_fix)],
            Err(e) => return vec![fail(format!("the store failed: {e}")).fix("check store.url")],
        };
        let Some(refresh) = sealer.open(address, &stored.sealed_token) else {
            return vec![
                fail("the stored grant cannot be opened with store.encryption_key (was the key changed?)".into())
                    .fix(consent_fix),
            ];
        };
        let grant = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh.expose_secret().to_string()),
            ("scope", DELEGATED_SCOPES.to_string()),
        ];
        let granted = match endpoint.request(grant, true).await {
            Ok(g) => g,
            Err(e) => {
                let mut check = token_failure(address, &e);
                check.area = "mailbox";
                check.check = "consent";
                return vec![check.fix(consent_fix)];
            }
        };
        // The endpoint rotated the refresh token: keep the new one, as the daemon would.
        let tokens = DelegatedTokens::new(mailbox.address.clone(), endpoint.clone(), store.clone(), sealer);
        let rotated = granted.refresh_token.clone().unwrap_or(refresh);
        let scope = granted.scope.clone().unwrap_or_else(|| stored.scopes.clone());
        if let Err(e) = tokens.save(&rotated, &scope).await {
            return vec![fail(format!("the rotated refresh token could not be stored: {e}")).fix("check store.url")];
        }
        let scopes = claims(granted.access.bearer())
            .map(|c| list(&c["scp"]))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| scope.split_whitespace().map(str::to_string).collect());
        let granted_names: Vec<&str> = scopes.iter().map(|s| s.rsplit('/').next().unwrap_or(s)).collect();
        let missing: Vec<&str> = NEEDED
            .iter()
            .copied()
            .filter(|n| !granted_names.iter().any(|g| g.eq_ignore_ascii_case(n)))
            .collect();
        let mut checks = vec![Check::ok(
            "mailbox",
            address,
            "consent",
            format!("the stored grant refreshes; scopes: {}", granted_names.join(" ")),
        )];
        if !missing.is_empty() {
            checks.push(
                Check::fail(
                    "mailbox",
                    address,
                    "permissions",
                    format!("the grant lacks {}", missing.join(" and ")),
                )
                .fix(format!(
                    "add the delegated permissions {} to the app registration, then {consent_fix}",
                    missing.join(" and ")
                )),
            );
            return checks;
        }
        let bearer = Bearer {
            access: Arc::new(granted.access),
            client_id: app.client_id.clone(),
            delegated: true,
            consent: link,
        };
        checks.extend(probe.check(mailbox, &bearer).await);
        checks
    }
}
