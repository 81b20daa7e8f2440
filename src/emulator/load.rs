//! Load generator and scenario files: many mailboxes and realistic mail, at once or at a rate.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::model::Recipient;
use super::seed::{self, AppSpec, AttachmentSpec, BodySpec, HeaderSpec, MailboxSpec, MessageSpec};
use super::util::b64;

/// `POST /_emulator/load`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadSpec {
    /// Tenant of the generated mailboxes.
    pub(crate) tenant_id: String,
    /// App registered (if not yet) with Mail.ReadWrite + Mail.Send.
    pub(crate) client_id: String,
    /// Its secret.
    pub(crate) client_secret: String,
    /// How many mailboxes.
    pub(crate) mailboxes: usize,
    /// Messages per mailbox.
    pub(crate) messages_per_mailbox: usize,
    /// Approximate body size in bytes.
    #[serde(default = "default_body")]
    pub(crate) body_bytes: usize,
    /// Share of messages with an attachment (0.0–1.0).
    #[serde(default)]
    pub(crate) attachment_share: f64,
    /// Attachment size.
    #[serde(default = "default_attachment")]
    pub(crate) attachment_bytes: usize,
    /// Messages per second across all mailboxes; absent = all at once.
    #[serde(default)]
    pub(crate) rate_per_sec: Option<f64>,
    /// Mailbox addresses are `{prefix}{n}@{domain}`.
    #[serde(default = "default_prefix")]
    pub(crate) address_prefix: String,
    /// Their domain.
    #[serde(default = "default_domain")]
    pub(crate) domain: String,
}

fn default_body() -> usize {
    2_000
}
fn default_attachment() -> usize {
    100_000
}
fn default_prefix() -> String {
    "mbx".into()
}
fn default_domain() -> String {
    "load.example.com".into()
}

/// A scenario file: everything optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    #[serde(default)]
    apps: Vec<AppSpec>,
    #[serde(default)]
    mailboxes: Vec<MailboxSpec>,
    #[serde(default)]
    messages: Vec<MessageSpec>,
    #[serde(default)]
    settings: Option<Value>,
    #[serde(default)]
    load: Option<LoadSpec>,
}

/// Reads and applies a scenario file.
pub(crate) fn apply_scenario(emu: &Shared, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
    let scenario: Scenario = serde_json::from_str(&text).map_err(|e| format!("scenario {}: {e}", path.display()))?;
    let now = emu.clock.now();
    {
        let mut world = emu.world();
        if let Some(settings) = &scenario.settings {
            world.settings.merge(settings)?;
        }
        for app in scenario.apps {
            seed::register_app(&mut world, app)?;
        }
        for mailbox in &scenario.mailboxes {
            seed::create_mailbox(&mut world, mailbox)?;
        }
        for message in scenario.messages {
            let address = message
                .mailbox
                .clone()
                .ok_or("every scenario message needs 'mailbox'")?;
            seed::deliver(&mut world, &address, message, now)?;
        }
    }
    if let Some(load) = scenario.load {
        start(emu, load)?;
    }
    Ok(())
}

/// Creates the mailboxes and delivers the mail (or schedules it at `rate_per_sec`).
pub(crate) fn start(emu: &Shared, spec: LoadSpec) -> Result<Value, String> {
    if !(0.0..=1.0).contains(&spec.attachment_share) {
        return Err("attachment_share must be between 0.0 and 1.0".into());
    }
    if spec.rate_per_sec.is_some_and(|r| !((0.001..=1_000_000.0).contains(&r))) {
        return Err("rate_per_sec must be between 0.001 and 1000000".into());
    }
    let addresses: Vec<String> = (0..spec.mailboxes)
        .map(|i| format!("{}{i}@{}", spec.address_prefix, spec.domain))
        .collect();
    {
        let mut world = emu.world();
        if !world.apps.contains_key(&spec.client_id.to_ascii_lowercase()) {
            seed::register_app(
                &mut world,
                AppSpec {
                    tenant_id: spec.tenant_id.clone(),
                    client_id: spec.client_id.clone(),
                    client_secret: Some(spec.client_secret.clone()),
                    certificate_pem: None,
                    roles: vec!["Mail.ReadWrite".into(), "Mail.Send".into()],
                    display_name: Some("load generator app".into()),
                    redirect_uris: Vec::new(),
                },
            )?;
        }
        for address in &addresses {
            if !world.mailboxes.contains_key(address) {
                seed::create_mailbox(
                    &mut world,
                    &MailboxSpec {
                        tenant_id: spec.tenant_id.clone(),
                        address: address.clone(),
                        display_name: None,
                    },
                )?;
            }
        }
    }
    let total = spec.mailboxes * spec.messages_per_mailbox;
    let report = json!({"mailboxes": spec.mailboxes, "messages": total, "scheduled": spec.rate_per_sec.is_some(), "first_address": addresses.first()});
    match spec.rate_per_sec {
        None => {
            let now = emu.clock.now();
            let mut world = emu.world();
            for n in 0..total {
                let address = &addresses[n % addresses.len().max(1)];
                seed::deliver(&mut world, address, generated(&spec, n, address), now)?;
            }
        }
        Some(rate) => {
            let emu = emu.clone();
            tokio::spawn(async move {
                let period = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(1000));
                let mut tick = tokio::time::interval(period);
                for n in 0..total {
                    tick.tick().await;
                    let address = &addresses[n % addresses.len().max(1)];
                    let now = emu.clock.now();
                    if seed::deliver(&mut emu.world(), address, generated(&spec, n, address), now).is_err() {
                        break; // the world was reset under us
                    }
                }
            });
        }
    }
    Ok(report)
}

/// The n-th generated message: HTML + text-ish body, every third one a reply in a thread.
fn generated(spec: &LoadSpec, n: usize, address: &str) -> MessageSpec {
    const WORDS: &[&str] = &[
        "order", "invoice", "delivery", "refund", "account", "please", "help", "thanks", "issue", "update", "ticket",
        "soon",
    ];
    let mut text = String::with_capacity(spec.body_bytes + 16);
    let mut i = n;
    while text.len() < spec.body_bytes {
        text.push_str(WORDS[i % WORDS.len()]);
        text.push(if i.is_multiple_of(13) { '\n' } else { ' ' });
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    let customer = n % 50;
    let thread = n / 3;
    let mut headers = vec![HeaderSpec {
        name: "Message-ID".into(),
        value: format!("<gen-{n}-{address}>"),
    }];
    if !n.is_multiple_of(3) {
        let root = format!("<gen-{}-{address}>", thread * 3);
        headers.push(HeaderSpec {
            name: "In-Reply-To".into(),
            value: root.clone(),
        });
        headers.push(HeaderSpec {
            name: "References".into(),
            value: root,
        });
    }
    let attachments = if (n as f64 * 0.618_033_988_7).fract() < spec.attachment_share {
        let bytes: Vec<u8> = (0..spec.attachment_bytes).map(|b| (b * 7 + n) as u8).collect();
        vec![AttachmentSpec {
            name: format!("document-{n}.pdf"),
            content_type: "application/pdf".into(),
            content_base64: b64(&bytes),
            is_inline: false,
            content_id: None,
        }]
    } else {
        Vec::new()
    };
    MessageSpec {
        mailbox: None,
        folder: None,
        from: Recipient {
            name: format!("Customer {customer}"),
            address: format!("customer{customer}@example.net"),
        },
        to: vec![Recipient {
            name: "Support".into(),
            address: address.to_string(),
        }],
        cc: Vec::new(),
        reply_to: Vec::new(),
        subject: if n.is_multiple_of(3) {
            format!("Question {thread}")
        } else {
            format!("RE: Question {thread}")
        },
        body: BodySpec {
            content_type: "html".into(),
            content: format!("<html><body><p>{}</p></body></html>", text.replace('\n', "</p><p>")),
        },
        internet_message_headers: headers,
        attachments,
        received_at: None,
        is_read: false,
        malformed: None,
    }
}
