//! Standard Webhooks `v1a` signatures: ed25519 over the same `{id}.{ts}.{body}` as `v1`, for
//! endpoints that opt in (`signature_v1a`). The receiver verifies with the endpoint's public key
//! (`whpk_<base64 of 32 bytes>`, fetchable through the API), so it holds nothing that can sign.
//!
//! ring does the cryptography (it is in the tree already, as rustls's provider). The private
//! key is kept as its 32-byte seed, `whsk_<base64>`, in the secret's row; it never leaves the
//! platform, so its text form is ours alone (the public key's is the one receivers see).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("signing key must be `whsk_` followed by base64 of 32 bytes")]
    SigningKey,
    #[error("public key must be `whpk_` followed by base64 of 32 bytes")]
    PublicKey,
}

/// An endpoint's ed25519 signing key. `Debug` never shows it.
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl SigningKey {
    pub const PREFIX: &'static str = "whsk_";

    /// A fresh key: ThreadRng is a CSPRNG seeded from the operating system.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        // Any 32 bytes are a valid ed25519 seed; ring's error case cannot happen for them.
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .unwrap_or_else(|_| unreachable!("a 32-byte ed25519 seed"));
        Self { seed, pair }
    }

    /// The `whsk_…` text: for storage only.
    pub fn expose(&self) -> String {
        format!("{}{}", Self::PREFIX, BASE64.encode(self.seed))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// The raw 64-byte signature of `{id}.{ts}.{body}`.
    pub fn sign(&self, id: &str, ts: i64, body: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&signed_content(id, ts, body))
            .as_ref()
            .to_vec()
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        Self::from_seed(self.seed)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.seed == other.seed
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl FromStr for SigningKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let seed = s
            .strip_prefix(Self::PREFIX)
            .and_then(|b| BASE64.decode(b).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(KeyError::SigningKey)?;
        Ok(Self::from_seed(seed))
    }
}

/// The public half, `whpk_<base64>`: what a receiver verifies `v1a` signatures with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub const PREFIX: &'static str = "whpk_";

    /// Whether `signature` (raw bytes) is this key's over `{id}.{ts}.{body}`.
    pub fn verify(&self, id: &str, ts: i64, body: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&signed_content(id, ts, body), signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, BASE64.encode(self.0))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix(Self::PREFIX)
            .and_then(|b| BASE64.decode(b).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Self)
            .ok_or(KeyError::PublicKey)
    }
}

fn signed_content(id: &str, ts: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(body);
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_sign_and_verify() {
        let key = SigningKey::generate();
        let parsed: SigningKey = key.expose().parse().expect("parse");
        assert_eq!(parsed, key);
        assert!(!format!("{key:?}").contains(&key.expose()[5..]));
        let public: PublicKey = key.public_key().to_string().parse().expect("public");
        assert_eq!(public, key.public_key());
        let sig = key.sign("dlv_1", 1_700_000_000, b"{}");
        assert_eq!(sig.len(), 64);
        assert!(public.verify("dlv_1", 1_700_000_000, b"{}", &sig));
        assert!(!public.verify("dlv_1", 1_700_000_001, b"{}", &sig));
        assert!(!public.verify("dlv_2", 1_700_000_000, b"{}", &sig));
        assert!(!public.verify("dlv_1", 1_700_000_000, b"{ }", &sig));
        assert!(
            !SigningKey::generate()
                .public_key()
                .verify("dlv_1", 1_700_000_000, b"{}", &sig)
        );
        for bad in ["", "whsk_", "whsec_AAAA", "whsk_AAAA", "whsk_!!!"] {
            assert!(bad.parse::<SigningKey>().is_err(), "{bad}");
        }
        for bad in ["", "whpk_", &key.expose(), "whpk_AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rfc_8032_vector_holds() {
        // RFC 8032 §7.1, test 1: the empty message; our content prefix is prepended, so the
        // vector is checked through ring directly, and the key derivation through ours.
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = SigningKey::from_seed(seed);
        assert_eq!(
            key.public_key().0,
            hex::<32>("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = key.pair.sign(b"");
        assert_eq!(
            sig.as_ref(),
            hex::<64>(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }
}
