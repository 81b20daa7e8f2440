//! Per app registration: the credential (and how long it has left), a client-credentials
//! token, and the application permissions that token carries.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use time::OffsetDateTime;

use super::fixes;
use super::mailboxes::Bearer;
use super::report::{Check, Outcome, Report};
use crate::auth::{TokenEndpoint, TokenError};
use crate::config::{Access, AppConfig, Config};
use crate::metrics::Metrics;

/// The application permissions inboxd needs, as Graph names them.
pub const NEEDED: [&str; 2] = ["Mail.ReadWrite", "Mail.Send"];

/// A credential expiring within this many days is a warning.
const EXPIRY_WARN_DAYS: i64 = 30;

/// What the app checks found.
pub struct AppChecked {
    /// The findings.
    pub checks: Vec<Check>,
    /// The app-only token, when one was issued.
    pub token: Option<Bearer>,
    /// The token carries no application permission at all (as with RBAC for Applications only).
    pub no_roles: bool,
}

/// Checks one app. `needs_roles`: some app-only mailbox uses this app's own token.
pub async fn check(
    app: &AppConfig,
    config: &Config,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
    needs_roles: bool,
) -> AppChecked {
    let name = app.name.0.clone();
    let mut checks = Vec::new();
    let endpoint = match TokenEndpoint::new(app, &config.microsoft.authority_host, http.clone(), metrics.clone()) {
        Ok(e) => e,
        Err(e) => {
            checks.push(
                Check::fail("app", &name, "credential", e)
                    .fix("give a PEM file holding the RSA private key and its certificate"),
            );
            return AppChecked {
                checks,
                token: None,
                no_roles: false,
            };
        }
    };
    if let Some(expiry) = expiry_check(&name, app.secret_expires_at.or(endpoint.certificate_not_after())) {
        checks.push(expiry);
    }
    let grant = vec![
        ("grant_type", "client_credentials".to_string()),
        ("scope", "https://graph.microsoft.com/.default".to_string()),
    ];
    let granted = match endpoint.request(grant, false).await {
        Ok(g) => g,
        Err(e) => {
            checks.push(token_failure(&name, &e));
            return AppChecked {
                checks,
                token: None,
                no_roles: false,
            };
        }
    };
    checks.push(Check::ok(
        "app",
        &name,
        "token",
        format!("issued for client {} in tenant {}", app.client_id, app.tenant_id),
    ));
    let claims = claims(granted.access.bearer());
    let roles = claims.as_ref().map(|c| list(&c["roles"])).unwrap_or_default();
    let mut no_roles = false;
    let consent = fixes::admin_consent_url(&config.microsoft.authority_host, &app.tenant_id, &app.client_id);
    if needs_roles {
        let missing: Vec<&str> = NEEDED
            .iter()
            .copied()
            .filter(|n| !roles.iter().any(|r| r.eq_ignore_ascii_case(n)))
            .collect();
        checks.push(match (&claims, missing.is_empty()) {
            (None, _) => Check::warn(
                "app",
                &name,
                "permissions",
                "the token cannot be read, so its roles were not checked; the mailbox checks below decide".into(),
            ),
            (Some(_), true) => Check::ok("app", &name, "permissions", format!("roles: {}", roles.join(", "))),
            (Some(_), false) => {
                no_roles = roles.is_empty();
                let has = if roles.is_empty() {
                    "the token carries no application permissions".to_string()
                } else {
                    format!("the token's roles ({}) lack {}", roles.join(", "), missing.join(" and "))
                };
                Check::fail("app", &name, "permissions", has).fix(format!(
                    "add the Microsoft Graph application permissions {} to the app registration (API permissions), then an administrator grants admin consent: {consent}",
                    missing.join(" and ")
                ))
            }
        });
    }
    let token = Bearer {
        access: Arc::new(granted.access),
        client_id: app.client_id.clone(),
        delegated: false,
        consent,
    };
    AppChecked {
        checks,
        token: Some(token),
        no_roles,
    }
}

/// The credential's expiry, when known.
fn expiry_check(app: &str, at: Option<OffsetDateTime>) -> Option<Check> {
    let at = at?;
    let stamp = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let days = (at - OffsetDateTime::now_utc()).whole_days();
    let rotate = "create a new secret or certificate in the app registration, put it in the config, and update secret_expires_at";
    Some(if at <= OffsetDateTime::now_utc() {
        Check::fail("app", app, "expiry", format!("the credential expired at {stamp}")).fix(rotate)
    } else if days < EXPIRY_WARN_DAYS {
        Check::warn(
            "app",
            app,
            "expiry",
            format!("the credential expires in {days} day(s), at {stamp}"),
        )
        .fix(rotate)
    } else {
        Check::ok("app", app, "expiry", format!("the credential is valid until {stamp}"))
    })
}

/// A failed token request, with the AADSTS code's meaning and fix.
pub fn token_failure(app: &str, e: &TokenError) -> Check {
    let meaning = e.aadsts.and_then(fixes::aadsts);
    let detail = match (e.aadsts, meaning) {
        (Some(code), Some((what, _))) => format!("AADSTS{code}: {what} ({})", e.reason),
        (Some(code), None) => format!("AADSTS{code}: {}", e.reason),
        (None, _) => e.reason.clone(),
    };
    let fix = match meaning {
        Some((_, fix)) => fix.to_string(),
        None if e.verdict == crate::auth::Verdict::Transient => {
            "the token endpoint is unreachable or failing: check microsoft.authority_host and this host's network, then run doctor again".to_string()
        }
        None => "look the AADSTS code up in Microsoft's Entra error reference".to_string(),
    };
    Check::fail("app", app, "token", detail).fix(fix).aadsts(e.aadsts)
}

/// The claims of a JWT access token (Graph's are JWTs; their claims are readable, not verified here).
pub fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A claim that is a list, or a space-separated string (`scp`).
pub fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// With RBAC for Applications only, Exchange grants mailbox access without any role in the
/// token: when the token had none and every app-only mailbox of the app was readable (and
/// writable, where checked), the permissions finding becomes a warning.
pub fn soften_rbac(report: &mut Report, config: &Config, no_roles: &[String]) {
    for app in no_roles {
        let mailboxes: Vec<&str> = config
            .mailboxes
            .iter()
            .filter(|m| m.enabled && m.access == Access::App && &m.app.0 == app)
            .map(|m| m.address.as_str())
            .collect();
        let mailbox_checks: Vec<&Check> = report
            .checks
            .iter()
            .filter(|c| c.area == "mailbox" && mailboxes.contains(&c.subject.as_str()))
            .collect();
        let all_good = !mailbox_checks.is_empty() && mailbox_checks.iter().all(|c| c.outcome == Outcome::Ok);
        if !all_good {
            continue;
        }
        if let Some(c) = report
            .checks
            .iter_mut()
            .find(|c| c.area == "app" && &c.subject == app && c.check == "permissions")
        {
            c.outcome = Outcome::Warn;
            c.detail = "the token carries no application permissions, yet every mailbox answered: access comes from Exchange RBAC for Applications, which this check cannot see; Mail.Send is only proven by a real send".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let toml = r#"
[store]
url = "sqlite://./inboxd.db"
[microsoft]
authority_host = "http://127.0.0.1:1"
graph_url = "http://127.0.0.1:1"
[sink]
type = "file"
path = "./events.ndjson"
[[apps]]
name = "rbac"
tenant_id = "contoso.example"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "dev:s"
[[mailboxes]]
address = "a@contoso.example"
app = "rbac"
[[mailboxes]]
address = "b@contoso.example"
app = "rbac"
"#;
        crate::config::from_sources(toml, &Default::default(), std::path::Path::new("/tmp")).expect("config")
    }

    fn report(b_write: Outcome) -> Report {
        let mut r = Report::new("x".into());
        r.push(Check::fail(
            "app",
            "rbac",
            "permissions",
            "the token carries no application permissions".into(),
        ));
        for (m, outcome) in [("a@contoso.example", Outcome::Ok), ("b@contoso.example", b_write)] {
            r.push(Check::ok("mailbox", m, "read", String::new()));
            let mut w = Check::ok("mailbox", m, "write", String::new());
            w.outcome = outcome;
            r.push(w);
        }
        r
    }

    #[test]
    fn no_roles_but_every_mailbox_working_is_rbac_for_applications_a_warning() {
        let config = config();
        let mut r = report(Outcome::Ok);
        soften_rbac(&mut r, &config, &["rbac".to_string()]);
        assert_eq!(r.checks[0].outcome, Outcome::Warn);
        assert!(
            r.checks[0].detail.contains("RBAC for Applications"),
            "{:?}",
            r.checks[0]
        );
        assert!(r.passed());

        // One mailbox refused: the missing roles stay a failure.
        let mut r = report(Outcome::Fail);
        soften_rbac(&mut r, &config, &["rbac".to_string()]);
        assert_eq!(r.checks[0].outcome, Outcome::Fail);

        // Roles present but incomplete (the app is not in the list): untouched.
        let mut r = report(Outcome::Ok);
        soften_rbac(&mut r, &config, &[]);
        assert_eq!(r.checks[0].outcome, Outcome::Fail);
    }

    #[test]
    fn claims_are_read_from_the_token_payload() {
        let payload =
            URL_SAFE_NO_PAD.encode(r#"{"roles":["Mail.ReadWrite","Mail.Send"],"scp":"Mail.Send offline_access"}"#);
        let c = claims(&format!("h.{payload}.s")).expect("claims");
        assert_eq!(list(&c["roles"]), vec!["Mail.ReadWrite", "Mail.Send"]);
        assert_eq!(list(&c["scp"]), vec!["Mail.Send", "offline_access"]);
        assert!(claims("opaque-token").is_none());
    }
}
