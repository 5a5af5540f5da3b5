//! Signing a delivery as the delivery contract says (docs/receiving-webhooks.md).
//!
//! Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
//! The original system's scheme: `X-HarborHook-Signature: sha256=<hex HMAC-SHA256(key, body ||
//! ts)>`. In both, the key is the secret's decoded bytes, and while a rotated-out secret's
//! overlap lasts both secrets sign: the signatures are space-separated, newest first, so a
//! receiver holding either secret verifies.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use shared::domain::{SignatureScheme, SigningSecret};
use shared::signing::{legacy_signature, standard_signature};

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
