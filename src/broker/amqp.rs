//! Connecting to RabbitMQ (AMQP 0-9-1) with the configured credentials and TLS.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connect, Connection, ConnectionProperties};
use secrecy::ExposeSecret;

use crate::config::AmqpConnection;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection named `name`. Errors name the host, never the password.
pub async fn connect(conn: &AmqpConnection, name: &str) -> Result<Connection, String> {
    let mut uri: AMQPUri = conn.url.parse().map_err(|e| format!("invalid AMQP URL: {e}"))?;
    if let Some(user) = &conn.username {
        uri.authority.userinfo.username = user.clone();
    }
    if let Some(password) = &conn.password {
        uri.authority.userinfo.password = password.expose_secret().to_string();
    }
    let tls = match &conn.ca_file {
        Some(path) if uri.scheme == AMQPScheme::AMQPS => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(
                std::fs::read_to_string(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?,
            ),
        },
        _ => OwnedTLSConfig::default(),
    };
    let where_ = format!("{}:{}", uri.authority.host, uri.authority.port);
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, uri.connect_with_config(properties, tls, runtime)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(format!("cannot connect to RabbitMQ at {where_}: {}", super::chain(&e))),
        Err(_) => Err(format!(
            "cannot connect to RabbitMQ at {where_}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// True while a connection and its channel can still be used.
pub fn usable(connection: &Connection, channel: &lapin::Channel) -> bool {
    connection.status().connected() && channel.status().connected()
}
