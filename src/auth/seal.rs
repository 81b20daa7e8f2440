//! Sealing secrets at rest: AES-256-GCM with a random nonce and the mailbox as associated
//! data (a sealed token moved to another mailbox's row does not open).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};

/// The key derived from `store.encryption_key`, and those of the keys it replaced.
pub struct Sealer {
    /// Seals, and opens first.
    key: LessSafeKey,
    /// `store.previous_encryption_keys`: open only, so what they sealed can be re-sealed.
    previous: Vec<LessSafeKey>,
}

fn derive(secret: &SecretString) -> LessSafeKey {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.expose_secret().as_bytes());
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, digest.as_ref()).expect("32-byte key"))
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    /// SHA-256 of the configured secret is the AES-256 key: any high-entropy string works.
    pub fn new(secret: &SecretString) -> Sealer {
        Sealer::with_previous(secret, &[])
    }

    /// A sealer with the current key that also opens what `previous` keys sealed.
    pub fn with_previous(secret: &SecretString, previous: &[SecretString]) -> Sealer {
        Sealer {
            key: derive(secret),
            previous: previous.iter().map(derive).collect(),
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

    /// Opens what `seal` produced for the same context, with the current key or a previous
    /// one; `None` if no key fits or the context differs.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<SecretString> {
        self.open_aged(context, sealed).map(|(plain, _)| plain)
    }

    /// Like [`Sealer::open`], and says whether a previous key was needed (re-seal it then).
    pub fn open_aged(&self, context: &str, sealed: &[u8]) -> Option<(SecretString, bool)> {
        if let Some(plain) = open_with(&self.key, context, sealed) {
            return Some((plain, false));
        }
        self.previous
            .iter()
            .find_map(|key| open_with(key, context, sealed))
            .map(|plain| (plain, true))
    }
}

fn open_with(key: &LessSafeKey, context: &str, sealed: &[u8]) -> Option<SecretString> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = rest.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok().map(SecretString::from)
}

impl Sealer {
    /// True when previous keys are configured.
    pub fn has_previous(&self) -> bool {
        !self.previous.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_key_opens_and_says_so() {
        let old = Sealer::new(&SecretString::from("old-key"));
        let sealed = old.seal("a@b.test", "token");
        let rotated = Sealer::with_previous(&SecretString::from("new-key"), &[SecretString::from("old-key")]);
        let (plain, aged) = rotated.open_aged("a@b.test", &sealed).unwrap();
        assert_eq!((plain.expose_secret(), aged), ("token", true));
        let resealed = rotated.seal("a@b.test", "token");
        assert_eq!(
            rotated.open_aged("a@b.test", &resealed).map(|(_, aged)| aged),
            Some(false)
        );
        assert!(
            Sealer::new(&SecretString::from("new-key"))
                .open("a@b.test", &resealed)
                .is_some()
        );
        assert!(
            old.open("a@b.test", &resealed).is_none(),
            "re-sealed with the new key only"
        );
    }

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
