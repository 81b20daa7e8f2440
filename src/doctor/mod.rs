//! `inboxd doctor`: checks a configuration against the real services, in the order a set-up
//! goes wrong (config, app credentials, permissions, each mailbox, the sink), and says for
//! every check what is wrong and what fixes it. Changes nothing but a draft it deletes again
//! (and, when asked, one test event in the sink).

mod apps;
mod delegated;
mod fixes;
mod mailboxes;
mod report;
mod sink;

use std::path::PathBuf;
use std::sync::Arc;

pub use report::{Check, Outcome, Report};

use crate::config::{Access, Config};
use crate::domain::AppName;

/// What to check, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// Skip the write check (no draft is created).
    pub read_only: bool,
    /// Deliver one test event to the sink.
    pub send_test_event: bool,
}

/// Runs every check and returns the report; never panics on bad input.
pub async fn run(options: &Options) -> Report {
    let mut report = Report::new(options.config.display().to_string());
    let config = match crate::config::load_file(&options.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.iter() {
                report.push(
                    Check::fail("config", e.path.to_string(), "valid", e.message.to_string())
                        .fix("correct this key (`inboxd check-config --config FILE` lists every problem)"),
                );
            }
            report.config_invalid = true;
            return report;
        }
    };
    report.push(Check::ok(
        "config",
        "file",
        "valid",
        format!("{} apps, {} mailboxes", config.apps.len(), config.mailboxes.len()),
    ));
    let http = match crate::http::client(&config) {
        Ok(h) => h,
        Err(e) => {
            report.push(
                Check::fail("config", "microsoft.ca_file", "usable", format!("{e:#}"))
                    .fix("point microsoft.ca_file at a readable PEM certificate"),
            );
            return report;
        }
    };
    let metrics = crate::metrics::Metrics::new();

    let mut tokens = std::collections::HashMap::new();
    let mut no_roles = Vec::new();
    for app in &config.apps {
        let needs_roles = uses_app_only(&config, &app.name);
        let checked = apps::check(app, &config, &http, &metrics, needs_roles).await;
        report.extend(checked.checks);
        if checked.no_roles {
            no_roles.push(app.name.0.clone());
        }
        if let Some(t) = checked.token {
            tokens.insert(app.name.clone(), t);
        }
    }

    let graph = Arc::new(crate::graph::Graph::new(
        http.clone(),
        &config.microsoft.graph_url,
        config.microsoft.request_timeout,
        metrics.clone(),
    ));
    let probe = mailboxes::Probe {
        graph,
        read_only: options.read_only,
    };
    let mut consent = delegated::Consent::new(&http, &metrics);
    for mailbox in &config.mailboxes {
        let subject = mailbox.address.as_str().to_string();
        if !mailbox.enabled {
            report.push(Check::skip(
                "mailbox",
                subject,
                "enabled",
                "enabled = false in the configuration".into(),
            ));
            continue;
        }
        let checks = match mailbox.access {
            Access::App => match tokens.get(&mailbox.app) {
                Some(token) => probe.check(mailbox, token).await,
                None => vec![Check::skip(
                    "mailbox",
                    subject,
                    "read",
                    format!("no token for app '{}' (see its checks above)", mailbox.app),
                )],
            },
            Access::Delegated => consent.check(mailbox, &probe, &config).await,
        };
        report.extend(checks);
    }
    apps::soften_rbac(&mut report, &config, &no_roles);
    report.extend(sink::check(&config, &http, &metrics, options.send_test_event).await);
    report
}

/// Whether any enabled app-only mailbox (or a delegated one's fallback) uses this app's own token.
fn uses_app_only(config: &Config, app: &AppName) -> bool {
    config
        .mailboxes
        .iter()
        .any(|m| m.enabled && ((m.access == Access::App && &m.app == app) || m.fallback_app.as_ref() == Some(app)))
}
