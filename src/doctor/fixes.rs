//! What an Entra code or a Graph refusal means for whoever set inboxd up, and what they do
//! about it: the words and commands the doctor prints.

/// The meaning of an AADSTS code and its fix, for the codes a set-up runs into.
pub fn aadsts(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        90002 => (
            "the tenant does not exist",
            "set tenant_id to the Directory (tenant) ID shown on the app registration's Overview page in Entra ID (or a verified domain of that tenant)",
        ),
        700016 => (
            "no application with this client id in this tenant",
            "set client_id to the Application (client) ID of the registration, and tenant_id to the tenant it is registered (or admin-consented) in",
        ),
        7000215 => (
            "the client secret is wrong",
            "copy the secret's Value (not its Secret ID) from Certificates & secrets, or create a new secret",
        ),
        7000222 => (
            "the client secret has expired",
            "create a new client secret under Certificates & secrets, put it in the config, and set secret_expires_at to its expiry",
        ),
        7000218 => (
            "no client secret or certificate was sent",
            "give the app a client_secret or a certificate",
        ),
        700027 => (
            "the certificate is not registered for this app, or the assertion's signature is invalid",
            "upload the certificate (its public part) under Certificates & secrets of this app registration",
        ),
        700024 => (
            "the client assertion is outside its valid time range",
            "check this host's clock (NTP)",
        ),
        700023 | 700021 => (
            "the client assertion does not match this app or token endpoint",
            "check client_id and tenant_id",
        ),
        7000112 | 70001 => (
            "the application is disabled",
            "enable the enterprise application (Properties: Enabled for users to sign in)",
        ),
        500011 => (
            "Microsoft Graph is not known in this tenant",
            "check tenant_id; the tenant must have Microsoft Graph (any Microsoft 365 tenant has)",
        ),
        53003 => (
            "a Conditional Access policy blocks this sign-in",
            "exclude the app (workload identity) or this host's address from the Conditional Access policy",
        ),
        65001 | 90094 => ("consent has not been given", "grant consent (see the consent link)"),
        50173 | 70008 | 700082 | 50132 | 50133 => (
            "the delegated grant has expired or was revoked",
            "the mailbox's user consents again",
        ),
        50076 | 50079 | 50074 | 50072 => (
            "multi-factor authentication is required",
            "the mailbox's user consents again (signing in with MFA)",
        ),
        50057 => (
            "the user account is disabled",
            "enable the account or use another mailbox user",
        ),
        50055 => (
            "the user's password has expired",
            "the user changes the password, then consents again",
        ),
        _ => return None,
    })
}

/// The admin-consent URL for an app: a Global or Privileged Role Administrator opens it to grant
/// the application permissions the registration asks for.
pub fn admin_consent_url(authority: &url::Url, tenant: &str, client_id: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .finish();
    format!(
        "{}/{tenant}/adminconsent?{query}",
        authority.as_str().trim_end_matches('/')
    )
}

/// What an Exchange Online administrator runs when an application access policy or RBAC for
/// Applications keeps the app out of a mailbox.
pub fn access_policy_commands(client_id: &str, mailbox: &str) -> String {
    format!(
        "an Exchange Online administrator lets the app into this mailbox (Connect-ExchangeOnline first), either\n\
         - RBAC for Applications: New-ManagementRoleAssignment -App {client_id} -Role \"Application Mail.ReadWrite\" -CustomResourceScope <scope that includes {mailbox}>\n\
         \x20 and New-ManagementRoleAssignment -App {client_id} -Role \"Application Mail.Send\" -CustomResourceScope <same scope>;\n\
         \x20 check with Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox}\n\
         - or an application access policy: add {mailbox} to the mail-enabled security group of\n\
         \x20 New-ApplicationAccessPolicy -AppId {client_id} -PolicyScopeGroupId <group> -AccessRight RestrictAccess -Description \"inboxd\";\n\
         \x20 check with Test-ApplicationAccessPolicy -Identity {mailbox} -AppId {client_id}\n\
         changes can take from minutes to an hour to reach Graph"
    )
}
