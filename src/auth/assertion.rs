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

/// Reads one DER element: (tag, contents, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's `notAfter` (UTCTime or GeneralizedTime), for expiry warnings.
fn not_after(cert_der: &[u8]) -> Option<time::OffsetDateTime> {
    let (_, cert, _) = element(cert_der)?;
    let (_, tbs, _) = element(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = element(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = element(rest)?;
    let (_, _, after_not_before) = element(validity)?;
    let (tag, text, _) = element(after_not_before)?;
    let text = std::str::from_utf8(text).ok()?.trim_end_matches('Z');
    let full = match tag {
        0x17 => format!(
            "{}{text}",
            if text[..2].parse::<u32>().ok()? >= 50 {
                "19"
            } else {
                "20"
            }
        ),
        0x18 => text.to_string(),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| full.get(r)?.parse::<u32>().ok();
    let date = time::Date::from_calendar_date(
        num(0..4)? as i32,
        time::Month::try_from(num(4..6)? as u8).ok()?,
        num(6..8)? as u8,
    )
    .ok()?;
    let t = time::Time::from_hms(num(8..10)? as u8, num(10..12)? as u8, num(12..14).unwrap_or(0) as u8).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc())
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
