//! `verify-signature`: checks a webhook the way a receiver should, for people building one.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use serde_json::json;
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

/// Verifies `body` against the headers (either scheme) and, with `tolerance`, the timestamp's
/// age. Exit code 1 when the signature does not verify.
pub fn verify(
    json: bool,
    secret: &str,
    raw_headers: &[String],
    body: &[u8],
    tolerance: Option<std::time::Duration>,
) -> Result<(), CliError> {
    let secret: SigningSecret = secret.parse().map_err(|e| {
        CliError::usage(
            format!("--secret: {e}"),
            "pass the endpoint's whsec_… secret",
        )
    })?;
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
    let (scheme, ts, ok) = if let Some(sig) = header(&headers, "webhook-signature") {
        let id = header(&headers, "webhook-id").unwrap_or_default();
        let ts = header(&headers, "webhook-timestamp").unwrap_or_default();
        let expected = standard_signature(&[&secret], id, ts.parse().unwrap_or(i64::MIN), body);
        (
            "standard_webhooks",
            ts,
            sig.split(' ').any(|s| s == expected),
        )
    } else if let Some(sig) = header(&headers, "x-harborhook-signature") {
        let ts = header(&headers, "x-harborhook-timestamp").unwrap_or_default();
        let expected = legacy_signature(&[&secret], ts.parse().unwrap_or(i64::MIN), body);
        (
            "harborhook_legacy",
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
            _ => "INVALID: the signature does not match this secret and body (check the secret, and that the body is byte-for-byte what was received)".into(),
        }
    });
    if ok && fresh {
        Ok(())
    } else {
        Err(CliError::silent(1))
    }
}
