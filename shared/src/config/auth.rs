//! `[gateway.auth]`: how the gateway verifies bearer tokens from the operator's identity
//! provider, and what in a token binds it to a tenant or makes it an operator's.
//!
//! The defaults fit the tokens `harborctl token issue` makes; docs/authentication.md shows the
//! settings for Keycloak, Auth0, Okta, Entra ID and Google.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid, strings};

/// How the gateway verifies bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// JWKS document URL (fetched at start, refreshed in the background, and on an unknown `kid`).
    pub jwks_url: Option<String>,
    /// JWKS file (read at start, re-read like the URL). Used when `jwks_url` is unset.
    pub jwks_file: Option<String>,
    pub issuer: String,
    /// Must be the token's `aud`, or one of the values when `aud` is an array.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// How often the keys are refetched in the background (never on a request's time).
    #[serde(deserialize_with = "duration")]
    pub jwks_cache_ttl: Duration,
    /// The most a JWKS fetch may take; a slow identity provider delays only the refresh.
    #[serde(deserialize_with = "duration")]
    pub jwks_fetch_timeout: Duration,
    /// The largest JWKS document read; a larger one is refused, not buffered.
    pub jwks_max_bytes: usize,
    /// A PEM bundle trusted for the `jwks_url` server besides the system's roots (an identity
    /// provider behind a private CA, e.g. in-cluster Keycloak); unset or empty: system roots.
    #[serde(default, deserialize_with = "super::optional_path")]
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// Allows an `http://` `jwks_url` (development against a local identity provider only: keys
    /// fetched in the clear can be replaced by anyone on the path).
    pub allow_insecure_jwks_url: bool,
    /// The claim holding the caller's tenant id (`ten_…`): a top-level name, or a dotted path
    /// into nested objects (`harborhook.tenant_id`). A top-level claim whose name is the whole
    /// string wins, so namespaced names with dots (`https://harborhook.example/tenant_id`) work.
    pub tenant_claim: String,
    /// Claims searched for [`AuthConfig::operator_scope`]: each a name or dotted path whose value
    /// is a space-separated string (`scope`) or an array of strings (`scp`, `roles`,
    /// `realm_access.roles`, `permissions`).
    #[serde(deserialize_with = "strings")]
    pub operator_claims: Vec<String>,
    /// The scope, role or permission that lets a token act across tenants.
    pub operator_scope: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwks_url: None,
            jwks_file: Some(".stack/auth/jwks.json".into()),
            issuer: "harborhook-dev".into(),
            audience: "harborhook".into(),
            leeway: Duration::from_secs(30),
            jwks_cache_ttl: Duration::from_secs(300),
            jwks_fetch_timeout: Duration::from_secs(5),
            jwks_max_bytes: 256 * 1024,
            jwks_ca_file: None,
            allow_insecure_jwks_url: false,
            tenant_claim: "tenant_id".into(),
            operator_claims: vec!["scope".into(), "scp".into()],
            operator_scope: "harborhook:operator".into(),
        }
    }
}

fn claim_path_ok(path: &str) -> bool {
    !path.is_empty() && path.len() <= 200 && !path.chars().any(char::is_control)
}

impl AuthConfig {
    /// Checks meaning; the first problem is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.jwks_url, &self.jwks_file) {
            (None, None) => {
                return Err(invalid(
                    "gateway.auth.jwks_url",
                    "set jwks_url or jwks_file",
                ));
            }
            (Some(url), _) if url.starts_with("http://") && !self.allow_insecure_jwks_url => {
                return Err(invalid(
                    "gateway.auth.jwks_url",
                    "must be an https:// URL (set gateway.auth.allow_insecure_jwks_url = true only for a local identity provider)",
                ));
            }
            (Some(url), _) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                return Err(invalid("gateway.auth.jwks_url", "must be an https:// URL"));
            }
            _ => {}
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(invalid(
                "gateway.auth.issuer",
                "issuer and audience must be set",
            ));
        }
        // Capped so that keys a provider removed stop verifying soon, and so the stale-keys
        // alert (30 minutes) means refreshes fail, not a long TTL.
        if !(Duration::from_secs(1)..=Duration::from_secs(900)).contains(&self.jwks_cache_ttl) {
            return Err(invalid(
                "gateway.auth.jwks_cache_ttl",
                "must be between 1s and 15m",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&self.jwks_fetch_timeout)
        {
            return Err(invalid(
                "gateway.auth.jwks_fetch_timeout",
                "must be between 100ms and 60s",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.jwks_max_bytes) {
            return Err(invalid(
                "gateway.auth.jwks_max_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !claim_path_ok(&self.tenant_claim) {
            return Err(invalid(
                "gateway.auth.tenant_claim",
                "must be a claim name or dotted path of 1 to 200 characters",
            ));
        }
        if self.operator_claims.is_empty() || !self.operator_claims.iter().all(|c| claim_path_ok(c))
        {
            return Err(invalid(
                "gateway.auth.operator_claims",
                "must list at least one claim name or dotted path",
            ));
        }
        if self.operator_scope.is_empty() || self.operator_scope.chars().any(char::is_whitespace) {
            return Err(invalid(
                "gateway.auth.operator_scope",
                "must be one scope or role, without spaces",
            ));
        }
        Ok(())
    }
}
