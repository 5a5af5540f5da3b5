//! Webhook signatures, as the delivery contract defines them (docs/receiving-webhooks.md):
//! the delivery-consumer signs with these, `harborctl verify-signature` checks with them.
//!
//! Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`. The original
//! system's scheme: `sha256=<hex HMAC-SHA256(key, body || ts)>`. The key is the secret's decoded
//! bytes; while a rotated-out secret's overlap lasts both sign, space-separated, newest first.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::asymmetric::SigningKey;
use crate::domain::SigningSecret;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &SigningSecret) -> HmacSha256 {
    // HMAC takes keys of any length; the error case cannot happen.
    HmacSha256::new_from_slice(secret.key()).unwrap_or_else(|_| unreachable!("hmac key"))
}

/// `v1,<sig>[ v1,<sig>]`.
pub fn standard_signature(secrets: &[&SigningSecret], id: &str, ts: i64, body: &[u8]) -> String {
    let prefix = format!("{id}.{ts}.");
    secrets
        .iter()
        .map(|s| {
            let mut m = mac(s);
            m.update(prefix.as_bytes());
            m.update(body);
            format!("v1,{}", BASE64.encode(m.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `v1a,<sig>[ v1a,<sig>]`: ed25519, for endpoints with `signature_v1a` (asymmetric.rs).
pub fn asymmetric_signature(keys: &[&SigningKey], id: &str, ts: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| format!("v1a,{}", BASE64.encode(k.sign(id, ts, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sha256=<hex>[ sha256=<hex>]`.
pub fn legacy_signature(secrets: &[&SigningSecret], ts: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            let mut m = mac(s);
            m.update(body);
            m.update(ts.to_string().as_bytes());
            let hex: String = m
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256={hex}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its reference libraries' test).
    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let secret: SigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let sig = standard_signature(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_sends_one_signature_per_secret() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        let both = standard_signature(&[&a, &b], "dlv_1", 5, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], standard_signature(&[&a], "dlv_1", 5, b"{}"));
        assert_eq!(parts[1], standard_signature(&[&b], "dlv_1", 5, b"{}"));
        let legacy = legacy_signature(&[&a, &b], 5, b"{}");
        assert!(
            legacy
                .split(' ')
                .all(|p| p.starts_with("sha256=") && p.len() == 7 + 64)
        );
    }
}
