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
    /// The certificate's notAfter.
    pub(crate) not_after: Option<time::OffsetDateTime>,
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
            not_after: not_after(&cert),
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

/// The certificate's `notAfter`, for expiry warnings (`None` if it cannot be parsed).
fn not_after(cert_der: &[u8]) -> Option<time::OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_and_signs() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["app".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let cert = params.self_signed(&key).unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let cred = CertificateCredential::from_pem(&pem).unwrap();
        assert_eq!(
            cred.not_after.map(|t| (t.year(), t.month() as u8, t.day())),
            Some((2031, 7, 15))
        );
        let jwt = cred
            .assertion("client", "https://login.example/t/oauth2/v2.0/token")
            .unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(!format!("{cred:?}").contains("PRIVATE"), "Debug never shows the key");
    }
}
