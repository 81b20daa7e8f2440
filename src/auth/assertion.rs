//! Certificate credentials: a PS256 client assertion with `x5t#S256` (Entra's current format).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A loaded certificate credential.
pub(crate) struct CertificateCredential {
    key: RsaKeyPair,
    /// base64url SHA-256 of the DER certificate.
    x5t_s256: String,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

impl CertificateCredential {
    /// Reads a PEM holding an RSA private key and the certificate. Errors never quote the PEM.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        let cert = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "the certificate PEM holds no CERTIFICATE block".to_string())?;
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "the certificate PEM holds no private key".to_string())?;
        let key = match &key {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err("the certificate's private key must be RSA (PKCS#8 or PKCS#1)".into()),
        }
        .map_err(|_| "the certificate's private key is not a usable RSA key".to_string())?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
        Ok(CertificateCredential {
            key,
            x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        })
    }

    /// A fresh signed assertion for `audience` (the token endpoint URL).
    pub(crate) fn assertion(&self, client_id: &str, audience: &str) -> Result<String, String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256});
        let claims = json!({
            "aud": audience, "iss": client_id, "sub": client_id, "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now, "iat": now, "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PSS_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}
