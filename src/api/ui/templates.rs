//! The status page's HTML, written by hand: no template engine, no front-end build. Every value
//! that comes from outside (addresses, reasons, Graph ids, errors) goes through [`esc`]; the
//! only unescaped pieces are this file's own literals.

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::assets::{REFRESH_SCRIPT, STYLE};
use super::csrf;
use super::session::Signed;
use crate::api::Permission;
use crate::domain::MailboxState;
use crate::mailbox::MailboxView;
use crate::store::{OutboundRecord, QuarantineEntry};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything the status page shows, gathered by the handler.
pub struct Overview {
    /// When it was gathered.
    pub now: OffsetDateTime,
    /// The signed-in session (permission and CSRF token).
    pub session: Signed,
    /// A short confirmation of the last action, from a fixed list.
    pub notice: Option<&'static str>,
    /// Every mailbox with its configured folders.
    pub mailboxes: Vec<(MailboxView, Vec<String>)>,
    /// Each app and when its secret or certificate expires (if known).
    pub credentials: Vec<(String, Option<OffsetDateTime>)>,
    /// Quarantined messages, newest first (`None`: the store did not answer).
    pub quarantine: Option<Vec<QuarantineEntry>>,
    /// Recent outbound messages, newest first (`None`: the store did not answer).
    pub outbound: Option<Vec<OutboundRecord>>,
}

/// Seconds between automatic reloads of the status page.
pub const REFRESH_SECONDS: u32 = 10;

/// A whole page. `nonce` lets this page's own style and script through its CSP.
fn layout(title: &str, body: &str, nonce: &str, refresh: bool) -> String {
    let script = if refresh {
        format!(
            r#"<script nonce="{nonce}">{}</script>"#,
            REFRESH_SCRIPT.replace("SECONDS", &REFRESH_SECONDS.to_string())
        )
    } else {
        String::new()
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style nonce="{nonce}">{STYLE}</style></head>
<body>{body}{script}</body></html>
"#,
        title = esc(title),
    )
}

/// The sign-in form; `problem` says why the last attempt failed.
pub fn sign_in(problem: Option<&str>, nonce: &str) -> String {
    let problem = problem
        .map(|p| format!(r#"<p class="error" role="alert">{}</p>"#, esc(p)))
        .unwrap_or_default();
    let body = format!(
        r#"<header><h1>inboxd</h1></header>
<main><h2>Sign in</h2>{problem}
<p class="muted">Use one of the API tokens of <code>server.api_tokens</code> (may act) or
<code>server.read_only_api_tokens</code> (may only look). It is checked once; this browser then
keeps a session cookie for eight hours.</p>
<form method="post" action="/ui/sign-in">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<p><button type="submit">Sign in</button></p>
</form></main>"#
    );
    layout("inboxd: sign in", &body, nonce, false)
}

/// A short page that says what went wrong, with a way back.
pub fn message(title: &str, text: &str, nonce: &str) -> String {
    let body = format!(
        r#"<header><h1>inboxd</h1></header><main><h2>{}</h2><p>{}</p><p><a href="/ui/">Back to the status page</a></p></main>"#,
        esc(title),
        esc(text)
    );
    layout(title, &body, nonce, false)
}

/// The status page.
pub fn status(o: &Overview, nonce: &str) -> String {
    let mut body = String::new();
    let role = match o.session.permission {
        Permission::Act => "signed in: may act",
        Permission::Read => "signed in: read-only",
    };
    let _ = write!(
        body,
        r#"<header><h1>inboxd status</h1><p class="muted">{role} · updated {} · reloads every {REFRESH_SECONDS} s</p>
<form class="inline" method="post" action="/ui/sign-out">{}<button class="quiet" type="submit">Sign out</button></form></header><main>"#,
        esc(&time_text(o.now)),
        csrf::hidden_input(&o.session),
    );
    if let Some(notice) = o.notice {
        let _ = write!(body, r#"<p class="notice" role="status">{}</p>"#, esc(notice));
    }
    mailboxes(&mut body, o);
    credentials(&mut body, o);
    quarantine(&mut body, o);
    outbound(&mut body, o);
    body.push_str("</main>");
    layout("inboxd status", &body, nonce, true)
}

fn mailboxes(body: &mut String, o: &Overview) {
    let _ = write!(body, r#"<h2 id="mailboxes">Mailboxes ({})</h2>"#, o.mailboxes.len());
    if o.mailboxes.is_empty() {
        body.push_str(r#"<p class="muted">No mailbox is configured.</p>"#);
        return;
    }
    body.push_str(r#"<div class="cards">"#);
    for (view, folders) in &o.mailboxes {
        let _ = write!(
            body,
            r#"<section class="card" data-mailbox="{addr}" aria-label="Mailbox {addr}"><h3>{addr}</h3><dl>
<dt>State</dt><dd><span class="state {class}" data-state="{state}">{state}</span> since {since}</dd>"#,
            addr = esc(view.address.as_str()),
            class = state_class(view.state),
            state = esc(view.state.as_str()),
            since = esc(&time_text(view.since)),
        );
        if let Some(reason) = &view.reason {
            let _ = write!(body, "<dt>Reason</dt><dd>{}</dd>", esc(reason));
        }
        if let Some(code) = view.aadsts {
            let _ = write!(body, "<dt>AADSTS</dt><dd>{code}</dd>");
        }
        let _ = write!(body, "<dt>To do</dt><dd>{}</dd>", esc(what_to_do(view.state)));
        let (last, lag) = match view.last_success_at {
            Some(at) => (time_text(at), age_text(o.now - at)),
            None => ("never".to_string(), "not polled yet".to_string()),
        };
        let _ = write!(
            body,
            "<dt>Last success</dt><dd>{}</dd><dt>Lag</dt><dd>{}</dd><dt>Delivered</dt><dd>{}</dd><dt>Access</dt><dd>{} via app {}</dd>",
            esc(&last),
            esc(&lag),
            view.delivered_total,
            esc(view.access),
            esc(&view.app),
        );
        body.push_str("<dt>Folders</dt><dd>");
        let trouble = |f: &str| view.failing_folders.iter().find(|t| t.folder == f);
        let shown: Vec<String> = folders
            .iter()
            .map(|f| match trouble(f) {
                Some(t) => format!(
                    "{}: failing since {}: {}",
                    esc(f),
                    esc(&time_text(t.since)),
                    esc(&t.reason)
                ),
                None if view.state == MailboxState::Active => format!("{}: ok", esc(f)),
                None => esc(f),
            })
            .chain(
                view.failing_folders
                    .iter()
                    .filter(|t| !folders.contains(&t.folder))
                    .map(|t| format!("{}: failing: {}", esc(&t.folder), esc(&t.reason))),
            )
            .collect();
        body.push_str(&shown.join("<br>"));
        body.push_str("</dd>");
        if let Some(n) = &view.notifications {
            let _ = write!(
                body,
                "<dt>Notifications</dt><dd>{}{}</dd>",
                esc(n.state),
                n.reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default()
            );
        }
        body.push_str("</dl>");
        if let Some(link) = view.consent_url.as_deref().or(view.consent_link.as_deref())
            && view.state == MailboxState::NeedsReconsent
        {
            let _ = write!(
                body,
                r#"<p><a class="button" data-consent href="{}">Consent for {}</a></p>"#,
                esc(link),
                esc(view.address.as_str())
            );
        }
        body.push_str("</section>");
    }
    body.push_str("</div>");
}

fn credentials(body: &mut String, o: &Overview) {
    body.push_str(r#"<h2 id="credentials">App credentials</h2><ul class="list">"#);
    for (app, expires) in &o.credentials {
        let when = match expires {
            Some(at) => {
                let days = (*at - o.now).whole_days();
                let left = if days < 0 {
                    "expired".to_string()
                } else {
                    format!("{days} days left")
                };
                format!("expires {} ({left})", time_text(*at))
            }
            None => "no expiry known (set secret_expires_at, or use a certificate)".to_string(),
        };
        let _ = write!(body, "<li>App <strong>{}</strong>: {}</li>", esc(app), esc(&when));
    }
    body.push_str("</ul>");
}

fn quarantine(body: &mut String, o: &Overview) {
    body.push_str(r#"<h2 id="quarantine">Quarantine</h2>"#);
    let Some(entries) = &o.quarantine else {
        body.push_str(r#"<p class="error">The store is not answering; the quarantine cannot be shown.</p>"#);
        return;
    };
    if entries.is_empty() {
        body.push_str(r#"<p class="muted">Nothing is quarantined.</p>"#);
        return;
    }
    body.push_str(r#"<ul class="list">"#);
    for e in entries {
        let _ = write!(
            body,
            r#"<li data-quarantine="{id}"><strong>{mailbox}</strong> · {folder} · {at}<br>{reason}<br><span class="muted">Graph id <code>{graph}</code></span>"#,
            id = esc(&e.id),
            mailbox = esc(e.mailbox.as_str()),
            folder = esc(&e.folder),
            at = esc(&time_text(e.at)),
            reason = esc(&e.reason),
            graph = esc(&e.graph_id),
        );
        if o.session.permission == Permission::Act {
            let _ = write!(
                body,
                r#"<form method="post" action="/ui/quarantine/{id}/replay">{csrf}<button type="submit" aria-label="Replay quarantined message {id} of {mailbox}">Replay</button></form>"#,
                id = esc(&e.id),
                mailbox = esc(e.mailbox.as_str()),
                csrf = csrf::hidden_input(&o.session),
            );
        }
        body.push_str("</li>");
    }
    body.push_str("</ul>");
    if o.session.permission == Permission::Read {
        body.push_str(
            r#"<p class="muted">Read-only session: replaying needs a token of <code>server.api_tokens</code>.</p>"#,
        );
    }
}

fn outbound(body: &mut String, o: &Overview) {
    body.push_str(r#"<h2 id="outbound">Recent outbound messages</h2>"#);
    let Some(records) = &o.outbound else {
        body.push_str(r#"<p class="error">The store is not answering; outbound messages cannot be shown.</p>"#);
        return;
    };
    if records.is_empty() {
        body.push_str(r#"<p class="muted">No reply or new message was requested yet.</p>"#);
        return;
    }
    body.push_str(r#"<ul class="list">"#);
    for r in records {
        let _ = write!(
            body,
            r#"<li data-outbound="{id}"><strong>{status}</strong> · {kind} from {mailbox} · asked {created} · {attempts} attempt(s)<br><span class="muted">id <code>{id}</code></span>{error}</li>"#,
            id = esc(&r.id),
            status = esc(r.status.as_str()),
            kind = esc(&r.kind),
            mailbox = esc(r.mailbox.as_str()),
            created = esc(&time_text(r.created_at)),
            attempts = r.attempts,
            error = r
                .error
                .as_deref()
                .map(|e| format!("<br>{}", esc(e)))
                .unwrap_or_default(),
        );
    }
    body.push_str("</ul>");
}

fn state_class(state: MailboxState) -> &'static str {
    match state {
        MailboxState::Active => "ok",
        MailboxState::Starting | MailboxState::Backoff => "wait",
        MailboxState::Disabled => "off",
        MailboxState::NeedsReconsent
        | MailboxState::CredentialInvalid
        | MailboxState::AccessDenied
        | MailboxState::NotFound => "bad",
    }
}

/// What a human does about a state.
fn what_to_do(state: MailboxState) -> &'static str {
    match state {
        MailboxState::Starting => "Nothing: the first poll is under way.",
        MailboxState::Active => "Nothing.",
        MailboxState::Backoff => {
            "Nothing yet: inboxd retries by itself. If it lasts, look at the reason (Graph, the token endpoint, the sink or the store)."
        }
        MailboxState::NeedsReconsent => {
            "The mailbox's user (or an administrator for the organisation) signs in again through the consent button; the mailbox resumes by itself."
        }
        MailboxState::CredentialInvalid => {
            "Create a new client secret or certificate for the app in Entra ID, put it in the configuration, and reload."
        }
        MailboxState::AccessDenied => {
            "Let the app into this mailbox in Exchange Online (application access policy or RBAC for Applications scope); inboxd re-checks by itself."
        }
        MailboxState::NotFound => {
            "Check the address: the mailbox must exist in this tenant and be licensed for Exchange Online."
        }
        MailboxState::Disabled => "Nothing: disabled in the configuration.",
    }
}

/// A time as RFC 3339, to the second.
fn time_text(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A duration in words ("4 s", "3 min", "2 h 5 min").
fn age_text(age: time::Duration) -> String {
    let s = age.whole_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age_text(time::Duration::seconds(4)), "4 s");
        assert_eq!(age_text(time::Duration::seconds(185)), "3 min");
        assert_eq!(age_text(time::Duration::seconds(7500)), "2 h 5 min");
    }
}
