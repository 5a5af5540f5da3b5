//! Signing a delivery as the delivery contract says (docs/receiving-webhooks.md).
//!
//! Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
//! The original system's scheme: `X-HarborHook-Signature: sha256=<hex HMAC-SHA256(key, body ||
//! ts)>`. In both, the key is the secret's decoded bytes, and while a rotated-out secret's
//! overlap lasts both secrets sign: the signatures are space-separated, newest first, so a
//! receiver holding either secret verifies. An endpoint with `signature_v1a` also gets
//! `v1a,<base64 ed25519>` signatures in `webhook-signature`, after the `v1` ones; the official
//! Standard Webhooks libraries skip versions they do not check, so receivers of either verify.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use shared::asymmetric::SigningKey;
use shared::domain::{SignatureScheme, SigningSecret};
use shared::signing::{asymmetric_signature, legacy_signature, standard_signature};

fn value(text: &str) -> HeaderValue {
    // Ids, timestamps, base64 and hex are always valid header values.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The headers Harborhook sets on every delivery; the endpoint's custom headers go first so
/// these always win (the API also refuses custom headers with these names).
pub fn headers(
    scheme: SignatureScheme,
    secrets: &[&SigningSecret],
    keys: &[&SigningKey],
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
            let mut signature = standard_signature(secrets, delivery_id, ts, body);
            if !keys.is_empty() {
                signature.push(' ');
                signature.push_str(&asymmetric_signature(keys, delivery_id, ts, body));
            }
            h.insert("webhook-signature", value(&signature));
        }
        SignatureScheme::HarborhookLegacy => {
            // The webhook-id rides along so receivers of either scheme can deduplicate.
            h.insert("webhook-id", value(delivery_id));
            h.insert("x-harborhook-timestamp", value(&ts.to_string()));
            h.insert(
                "x-harborhook-signature",
                value(&legacy_signature(secrets, ts, body)),
            );
            // v1a is a Standard Webhooks signature whatever the scheme: an endpoint on the
            // original scheme that opted in gets it in the standard headers besides its own.
            if !keys.is_empty() {
                h.insert("webhook-timestamp", value(&ts.to_string()));
                h.insert(
                    "webhook-signature",
                    value(&asymmetric_signature(keys, delivery_id, ts, body)),
                );
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::asymmetric::SigningKey;

    fn signature_headers(
        scheme: SignatureScheme,
        keys: &[&SigningKey],
    ) -> (SigningSecret, HeaderMap) {
        let secret = SigningSecret::generate();
        let h = headers(
            scheme,
            &[&secret],
            keys,
            &Default::default(),
            "dlv_1",
            1_700_000_000,
            b"{}",
        );
        (secret, h)
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn v1a_follows_v1_only_when_there_are_keys() {
        let key = SigningKey::generate();
        let (secret, h) = signature_headers(SignatureScheme::StandardWebhooks, &[&key]);
        let v1 = standard_signature(&[&secret], "dlv_1", 1_700_000_000, b"{}");
        let v1a = asymmetric_signature(&[&key], "dlv_1", 1_700_000_000, b"{}");
        assert_eq!(get(&h, "webhook-signature"), format!("{v1} {v1a}"));
        let (secret, h) = signature_headers(SignatureScheme::StandardWebhooks, &[]);
        let v1 = standard_signature(&[&secret], "dlv_1", 1_700_000_000, b"{}");
        assert_eq!(get(&h, "webhook-signature"), v1);
    }

    #[test]
    fn the_original_scheme_gets_v1a_in_the_standard_headers() {
        let key = SigningKey::generate();
        let (secret, h) = signature_headers(SignatureScheme::HarborhookLegacy, &[&key]);
        assert_eq!(
            get(&h, "x-harborhook-signature"),
            legacy_signature(&[&secret], 1_700_000_000, b"{}")
        );
        assert_eq!(
            get(&h, "webhook-signature"),
            asymmetric_signature(&[&key], "dlv_1", 1_700_000_000, b"{}")
        );
        assert_eq!(get(&h, "webhook-timestamp"), "1700000000");
        let (_, h) = signature_headers(SignatureScheme::HarborhookLegacy, &[]);
        assert!(!h.contains_key("webhook-signature") && !h.contains_key("webhook-timestamp"));
    }
}
