//! `verify-signature`: checks a webhook the way a receiver should, for people building one.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use shared::asymmetric::PublicKey;
use shared::domain::SigningSecret;
use shared::signing::{legacy_signature, standard_signature};

use crate::CliError;
use crate::output::emit;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What the signature is checked with.
pub enum Key {
    /// `whsec_…`: `v1` or the original scheme's `sha256=`.
    Secret(String),
    /// `whpk_…`: `v1a`.
    Public(String),
}

/// Whether one of the space-separated `v1a,<base64>` signatures in `header` is `key`'s.
fn v1a_matches(key: &PublicKey, header: &str, id: &str, ts: &str, body: &[u8]) -> bool {
    let Ok(ts) = ts.parse::<i64>() else {
        return false;
    };
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1a,"))
        .filter_map(|s| BASE64.decode(s).ok())
        .any(|sig| key.verify(id, ts, body, &sig))
}

/// Verifies `body` against the headers (either scheme, or `v1a` with a public key) and, with
/// `tolerance`, the timestamp's age. Exit code 1 when the signature does not verify.
pub fn verify(
    json: bool,
    key: &Key,
    raw_headers: &[String],
    body: &[u8],
    tolerance: Option<std::time::Duration>,
) -> Result<(), CliError> {
    let secret: Option<SigningSecret> = match key {
        Key::Secret(s) => Some(s.parse().map_err(|e| {
            CliError::usage(
                format!("--secret: {e}"),
                "pass the endpoint's whsec_… secret",
            )
        })?),
        Key::Public(_) => None,
    };
    let public: Option<PublicKey> = match key {
        Key::Public(k) => Some(k.parse().map_err(|e| {
            CliError::usage(
                format!("--public-key: {e}"),
                "pass the endpoint's whpk_… key (harborctl endpoints public-key)",
            )
        })?),
        Key::Secret(_) => None,
    };
    let headers: Vec<(String, String)> = raw_headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| {
                    CliError::usage(
                        format!("`{h}` is not `Name: value`"),
                        "use --header 'webhook-id: dlv_…'",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let (scheme, ts, ok) = if let Some(public) = &public {
        let sig = header(&headers, "webhook-signature").ok_or_else(|| {
            CliError::usage(
                "no webhook-signature header given",
                "pass --header 'webhook-signature: v1,… v1a,…' with its id and timestamp headers",
            )
        })?;
        let id = header(&headers, "webhook-id").unwrap_or_default();
        let ts = header(&headers, "webhook-timestamp").unwrap_or_default();
        ("v1a", ts, v1a_matches(public, sig, id, ts, body))
    } else if let Some(secret) = &secret
        && let Some(sig) = header(&headers, "x-harborhook-signature")
    {
        // First: an original-scheme endpoint with `signature_v1a` also gets a
        // `webhook-signature`, holding only `v1a` signatures.
        let ts = header(&headers, "x-harborhook-timestamp").unwrap_or_default();
        let expected = legacy_signature(&[secret], ts.parse().unwrap_or(i64::MIN), body);
        (
            "harborhook_legacy",
            ts,
            sig.split(' ').any(|s| s == expected),
        )
    } else if let Some(secret) = &secret
        && let Some(sig) = header(&headers, "webhook-signature")
    {
        let id = header(&headers, "webhook-id").unwrap_or_default();
        let ts = header(&headers, "webhook-timestamp").unwrap_or_default();
        let expected = standard_signature(&[secret], id, ts.parse().unwrap_or(i64::MIN), body);
        (
            "standard_webhooks",
            ts,
            sig.split(' ').any(|s| s == expected),
        )
    } else {
        return Err(CliError::usage(
            "no signature header given",
            "pass --header 'webhook-signature: v1,…' (or X-HarborHook-Signature) with its id and timestamp headers",
        ));
    };
    let age = ts
        .parse::<i64>()
        .ok()
        .map(|t| (chrono::Utc::now().timestamp() - t).abs());
    let fresh = match (tolerance, age) {
        (Some(tol), Some(age)) => u64::try_from(age).is_ok_and(|a| a <= tol.as_secs()),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let v = json!({"valid": ok && fresh, "signature_matches": ok, "timestamp_fresh": fresh, "scheme": scheme});
    emit(json, &v, |_| {
        match (ok, fresh) {
            (true, true) => format!("valid ({scheme})"),
            (true, false) => "signature matches, but the timestamp is outside the tolerance (replayed or a skewed clock)".into(),
            _ => "INVALID: the signature does not match this key and body (check the secret, and that the body is byte-for-byte what was received)".into(),
        }
    });
    if ok && fresh {
        Ok(())
    } else {
        Err(CliError::silent(1))
    }
}
