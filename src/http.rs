//! The HTTP client inboxd talks to Microsoft and to webhook receivers with.

use std::time::Duration;

use anyhow::Context;

use crate::config::Config;

/// The HTTP client for Microsoft: rustls, the extra root of `microsoft.ca_file` if any.
pub fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(config.microsoft.request_timeout, config.microsoft.ca_file.as_deref())?.build()?)
}

/// The client's settings: timeouts, extra root, and no redirects.
pub fn client_builder(timeout: Duration, ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("inboxd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // Never follow a redirect: a webhook answering 302 to a login page would turn the
        // POST into a body-less GET whose 200 looks like an acknowledgement; Graph and the
        // token endpoint do not redirect API calls either.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("microsoft.ca_file: cannot read {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("microsoft.ca_file: {} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}
