//! Sealing secrets at rest: AES-256-GCM with a random nonce and the mailbox as associated
//! data (a sealed token moved to another mailbox's row does not open).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};

/// The key derived from `store.encryption_key`.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    /// SHA-256 of the configured secret is the AES-256 key: any high-entropy string works.
    pub fn new(secret: &SecretString) -> Sealer {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.expose_secret().as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref()).expect("32-byte key");
        Sealer {
            key: LessSafeKey::new(key),
        }
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, context: &str, plain: &str) -> Vec<u8> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce_bytes).expect("the system RNG works");
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// Opens what `seal` produced for the same context; `None` if the key or context differ.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<SecretString> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok().map(SecretString::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_the_same_key_and_mailbox() {
        let sealer = Sealer::new(&SecretString::from("store-key"));
        let sealed = sealer.seal("a@b.test", "1.Arefresh-token-value");
        assert!(!sealed.windows(8).any(|w| w == b"1.Arefr"), "the token is not in clear");
        assert_eq!(
            sealer.open("a@b.test", &sealed).unwrap().expose_secret(),
            "1.Arefresh-token-value"
        );
        assert!(sealer.open("other@b.test", &sealed).is_none());
        assert!(
            Sealer::new(&SecretString::from("other-key"))
                .open("a@b.test", &sealed)
                .is_none()
        );
    }
}
