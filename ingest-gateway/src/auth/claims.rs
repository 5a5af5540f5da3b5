//! What a verified token's claims say about the caller, read the way identity providers write
//! them.
//!
//! jsonwebtoken has already checked the signature, `iss`, `aud` (a string, or an array that
//! must contain ours: RFC 7519 §4.1.3), `exp` and `nbf` when present. What is left is ours:
//! `iat` when present (not in the future beyond the leeway), `sub`, the tenant claim and the
//! operator scope, each at a configurable name or dotted path, because providers put custom
//! claims in different places: Keycloak nests roles under `realm_access.roles`, Auth0 wants
//! namespaced names (`https://example.com/tenant_id`), Okta's `scp` and Entra's `roles` are
//! arrays where the OAuth `scope` is a space-separated string.

use serde_json::Value;
use shared::config::AuthConfig;
use shared::ids::TenantId;

/// Why the claims do not make a caller; the text is the 401's message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// The value at `path`: a top-level claim of exactly that name, else the dotted path through
/// nested objects.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, segment| value.get(segment))
}

/// Whether any of `claim_paths` grants `wanted`, as one of the space-separated words of a
/// string or one of the strings of an array.
pub fn grants(claims: &Value, claim_paths: &[String], wanted: &str) -> bool {
    claim_paths
        .iter()
        .filter_map(|path| lookup(claims, path))
        .any(|value| match value {
            Value::String(words) => words.split_whitespace().any(|w| w == wanted),
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(wanted)),
            _ => false,
        })
}

/// The caller a token describes.
#[derive(Debug)]
pub struct Caller {
    pub subject: String,
    pub tenant: Option<TenantId>,
    pub operator: bool,
}

/// Reads the caller out of verified claims; `now` is Unix seconds.
pub fn caller(claims: &Value, config: &AuthConfig, now: i64) -> Result<Caller, Refused> {
    if let Some(iat) = claims.get("iat") {
        let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX);
        match iat.as_f64() {
            // f64 covers the integer and fractional forms; a far-future value saturates.
            #[allow(clippy::cast_possible_truncation)]
            Some(iat) if (iat as i64) > now.saturating_add(leeway) => {
                return Err(refused("token issued in the future (iat)"));
            }
            Some(_) => {}
            None => return Err(refused("token iat is not a number")),
        }
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("token sub must be a string"))?;
    // The subject is recorded (replays, logs): it must be storable and bounded.
    if shared::text::check(
        subject,
        shared::records::REQUESTED_BY_MAX,
        shared::text::Lines::Single,
    )
    .is_err()
    {
        return Err(refused(
            "token sub must be 1 to 255 characters without control characters",
        ));
    }
    let operator = grants(claims, &config.operator_claims, &config.operator_scope);
    let tenant = match lookup(claims, &config.tenant_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.parse::<TenantId>().map_err(|_| {
            refused(format!(
                "token claim {} is not a tenant id",
                config.tenant_claim
            ))
        })?),
        Some(_) => {
            return Err(refused(format!(
                "token claim {} must be a string",
                config.tenant_claim
            )));
        }
    };
    if tenant.is_none() && !operator {
        return Err(refused(format!(
            "token is bound to no tenant (claim {}) and has no operator scope ({})",
            config.tenant_claim, config.operator_scope
        )));
    }
    Ok(Caller {
        subject: subject.to_owned(),
        tenant,
        operator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "ten_0190c5a1b2c37d4e8f9a0b1c2d3e4f51";

    #[test]
    fn paths_reach_nested_and_namespaced_claims() {
        let claims = json!({
            "harborhook": {"tenant_id": TENANT},
            "https://harborhook.example/tenant_id": TENANT,
            "realm_access": {"roles": ["offline_access", "harborhook:operator"]},
        });
        assert_eq!(
            lookup(&claims, "harborhook.tenant_id").and_then(Value::as_str),
            Some(TENANT)
        );
        assert_eq!(
            lookup(&claims, "https://harborhook.example/tenant_id").and_then(Value::as_str),
            Some(TENANT)
        );
        assert!(lookup(&claims, "harborhook.missing").is_none());
        assert!(grants(
            &claims,
            &["scope".into(), "realm_access.roles".into()],
            "harborhook:operator"
        ));
        // A word of a string, an element of an array: never a substring.
        let scope = json!({"scope": "openid harborhook:operator-ish", "scp": ["harborhook"]});
        assert!(!grants(
            &scope,
            &["scope".into(), "scp".into()],
            "harborhook:operator"
        ));
    }

    #[test]
    fn iat_and_the_tenant_claim_are_checked_when_present() {
        let config = AuthConfig::default();
        let now = 1_900_000_000;
        let ok = caller(&json!({"sub": "a", "tenant_id": TENANT}), &config, now)
            .expect("no iat is fine");
        assert_eq!(ok.tenant.map(|t| t.to_string()).as_deref(), Some(TENANT));
        let future = json!({"sub": "a", "tenant_id": TENANT, "iat": now + 3600});
        assert!(caller(&future, &config, now).is_err());
        let skewed = json!({"sub": "a", "tenant_id": TENANT, "iat": now + 10});
        assert!(caller(&skewed, &config, now).is_ok(), "within the leeway");
        let text = json!({"sub": "a", "tenant_id": TENANT, "iat": "yesterday"});
        assert!(caller(&text, &config, now).is_err());
        let number = json!({"sub": "a", "tenant_id": 7});
        assert!(caller(&number, &config, now).is_err());
        let nobody = json!({"sub": "a"});
        assert!(caller(&nobody, &config, now).is_err());
        let no_sub = json!({"tenant_id": TENANT});
        assert!(caller(&no_sub, &config, now).is_err());
    }
}
