//! A self-signed certificate for 127.0.0.1, ::1 and localhost, and the TLS acceptor using it.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Certificate (PEM, for clients to trust) and the acceptor that serves it.
pub(crate) struct SelfSigned {
    /// PEM of the certificate.
    pub(crate) cert_pem: String,
    /// Acceptor for incoming connections.
    pub(crate) acceptor: TlsAcceptor,
}

/// Generates a fresh certificate and key.
pub(crate) fn self_signed() -> Result<SelfSigned, String> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("certificate generation failed: {e}"))?;
    let cert_der: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(SelfSigned {
        cert_pem: certified.cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
