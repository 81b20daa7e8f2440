//! Connecting to NATS with the configured credentials and TLS.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::{NatsAuth, NatsConnection};

/// How long the first connection may take; afterwards the client reconnects by itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, named `name` (shown by the server's monitoring). The client reconnects by
/// itself for ever after a lost connection; a first connection that fails is an error.
pub async fn connect(conn: &NatsConnection, name: &str) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        // Reconnect quickly at first, then every 2 s at most: a restarted broker is found soon.
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(2_000)));
    options = match &conn.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose_secret().to_string())
        }
        NatsAuth::Token(token) => options.token(token.expose_secret().to_string()),
        // The parser's own message may quote the file; ours names nothing from it.
        NatsAuth::Creds(creds) => options
            .credentials(creds.expose_secret())
            .map_err(|_| "the NATS creds are not a valid .creds file (JWT and NKey seed)".to_string())?,
    };
    if conn.tls || conn.url.split(',').any(|u| u.trim().starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if let Some(ca) = &conn.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let servers: Vec<&str> = conn.url.split(',').map(str::trim).collect();
    let servers: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid NATS URL: {e}"))?;
    options
        .connect(servers)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {}", conn.url, super::chain(&e)))
}
