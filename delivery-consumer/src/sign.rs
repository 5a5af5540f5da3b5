//! Signing a delivery as the delivery contract says (docs/receiving-webhooks.md).
//!
//! Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
//! The original system's scheme: `X-HarborHook-Signature: sha256=<hex HMAC-SHA256(key, body ||
//! ts)>`. In both, the key is the secret's decoded bytes, and while a rotated-out secret's
//! overlap lasts both secrets sign: the signatures are space-separated, newest first, so a
//! receiver holding either secret verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use shared::domain::{SignatureScheme, SigningSecret};

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

/// `sha256=<hex>[ sha256=<hex>]`.
pub fn legacy_signature(secrets: &[&SigningSecret], ts: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            let mut m = mac(s);
            m.update(body);
            m.update(ts.to_string().as_bytes());
            format!("sha256={:x}", m.finalize().into_bytes())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn value(text: &str) -> HeaderValue {
    // Ids, timestamps, base64 and hex are always valid header values.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The headers Harborhook sets on every delivery; the endpoint's custom headers go first so
/// these always win (the API also refuses custom headers with these names).
pub fn headers(
    scheme: SignatureScheme,
    secrets: &[&SigningSecret],
    custom: &std::collections::BTreeMap<String, String>,
    delivery_id: &str,
    ts: i64,
    body: &[u8],
) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, v) in custom {
        if let (Ok(name), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(name, v);
        }
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match scheme {
        SignatureScheme::StandardWebhooks => {
            h.insert("webhook-id", value(delivery_id));
            h.insert("webhook-timestamp", value(&ts.to_string()));
            h.insert(
                "webhook-signature",
                value(&standard_signature(secrets, delivery_id, ts, body)),
            );
        }
        SignatureScheme::HarborhookLegacy => {
            // The webhook-id rides along so receivers of either scheme can deduplicate.
            h.insert("webhook-id", value(delivery_id));
            h.insert("x-harborhook-timestamp", value(&ts.to_string()));
            h.insert(
                "x-harborhook-signature",
                value(&legacy_signature(secrets, ts, body)),
            );
        }
    }
    h
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
