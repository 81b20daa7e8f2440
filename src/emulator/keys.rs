//! The emulator's token-signing key, JWT encoding and verification of signatures.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

use super::der;
use super::util::{b64url, unb64url};

/// RSA key that signs every access token; its public half is published as the JWKS.
pub(crate) struct SigningKeys {
    /// Private key.
    pair: RsaKeyPair,
    /// Key id (`kid`, also used as `x5t`), as Entra publishes it.
    kid: String,
    /// PKCS#1 public key, for verifying our own tokens.
    public_der: Vec<u8>,
}

impl SigningKeys {
    /// A fresh 2048-bit key (aws-lc generates it in milliseconds).
    pub(crate) fn generate() -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let public_der = pair.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public_der);
        let kid = b64url(&digest.as_ref()[..20]);
        SigningKeys { pair, kid, public_der }
    }

    /// Signs claims as an RS256 JWT.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
        format!("{signing_input}.{}", b64url(&sig))
    }

    /// Verifies a token we issued; returns its claims when the signature holds.
    pub(crate) fn verify(&self, token: &str) -> Option<Value> {
        let jwt = Jwt::parse(token)?;
        if jwt.header.get("alg")?.as_str()? != "RS256" {
            return None;
        }
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.public_der)
            .verify(jwt.signing_input.as_bytes(), &jwt.signature)
            .ok()?;
        Some(jwt.claims)
    }

    /// The JWKS document.
    pub(crate) fn jwks(&self, issuer: &str) -> Value {
        let (n, e) = der::rsa_components(&self.public_der).expect("own key parses");
        json!({"keys": [{
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
            "n": b64url(n), "e": b64url(e), "issuer": issuer
        }]})
    }
}

/// A decoded (not yet verified) compact JWT.
pub(crate) struct Jwt {
    /// Decoded header.
    pub(crate) header: Value,
    /// Decoded claims.
    pub(crate) claims: Value,
    /// `header.payload`, the signed bytes.
    pub(crate) signing_input: String,
    /// Raw signature.
    pub(crate) signature: Vec<u8>,
}

impl Jwt {
    /// Splits and decodes the three parts; `None` when it is not a JWT.
    pub(crate) fn parse(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Jwt {
            header: serde_json::from_slice(&unb64url(h)?).ok()?,
            claims: serde_json::from_slice(&unb64url(c)?).ok()?,
            signing_input: format!("{h}.{c}"),
            signature: unb64url(s)?,
        })
    }
}

/// A registered app certificate: what the token endpoint needs to check an assertion.
#[derive(Clone)]
pub(crate) struct AppCertificate {
    /// DER `SubjectPublicKeyInfo`.
    pub(crate) spki: Vec<u8>,
    /// base64url SHA-1 of the DER certificate (`x5t`).
    pub(crate) x5t: String,
    /// base64url SHA-256 of the DER certificate (`x5t#S256`).
    pub(crate) x5t_s256: String,
}

impl AppCertificate {
    /// Reads the first certificate of a PEM bundle (a private key beside it is ignored).
    pub(crate) fn from_pem(pem: &str) -> Result<AppCertificate, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("certificate_pem holds no CERTIFICATE block")?
            .map_err(|e| format!("certificate_pem is not valid PEM: {e}"))?;
        let spki = der::certificate_spki(&cert).ok_or("certificate_pem is not an X.509 certificate")?;
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
        Ok(AppCertificate {
            spki: spki.to_vec(),
            x5t: b64url(sha1.as_ref()),
            x5t_s256: b64url(sha256.as_ref()),
        })
    }

    /// Checks an assertion's signature: PS256 or RS256 with this certificate's key.
    pub(crate) fn verify(&self, jwt: &Jwt) -> Result<(), &'static str> {
        let alg: &dyn signature::VerificationAlgorithm = match jwt.header["alg"].as_str() {
            Some("PS256") => &signature::RSA_PSS_2048_8192_SHA256,
            Some("RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err("unsupported signing algorithm"),
        };
        let thumb_ok = match (jwt.header["x5t#S256"].as_str(), jwt.header["x5t"].as_str()) {
            (Some(t), _) => t.trim_end_matches('=') == self.x5t_s256,
            (None, Some(t)) => t.trim_end_matches('=') == self.x5t,
            (None, None) => false,
        };
        if !thumb_ok {
            return Err("The key was not found.");
        }
        UnparsedPublicKey::new(alg, &self.spki)
            .verify(jwt.signing_input.as_bytes(), &jwt.signature)
            .map_err(|_| "The provided signature value did not match the expected signature value.")
    }
}
