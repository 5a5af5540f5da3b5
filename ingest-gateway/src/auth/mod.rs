//! Bearer-token authentication in the service (the replaced system trusted its callers).
//!
//! Tokens are JWTs signed by a key of the identity provider's JWKS ([`keys`]: RSA, EC or
//! Ed25519, never a shared secret). `iss`, `aud` (string or array), `exp`, and `nbf`/`iat` when
//! present are checked with the configured leeway; [`claims`] reads the tenant and operator
//! scope from wherever the provider puts them (`gateway.auth.tenant_claim`,
//! `operator_claims`, `operator_scope`). docs/authentication.md has each provider's settings.
//!
//! A token bound to a tenant acts on that tenant only; the operator scope lets a token act
//! across tenants. [`Principal::require_tenant`] answers 404 for another tenant's resources,
//! so a token cannot even learn which ids exist elsewhere.

pub mod claims;
pub mod keys;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::Validation;
use shared::config::AuthConfig;
use shared::ids::TenantId;

pub use keys::{JwksError, Keys};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Verifies bearer tokens against the configured JWKS.
pub struct Verifier {
    config: AuthConfig,
    keys: Keys,
}

/// Who is calling: from a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub tenant: Option<TenantId>,
    pub operator: bool,
}

impl Principal {
    /// Allows acting on `tenant`'s resources, or answers 404 as if they did not exist.
    pub fn require_tenant(&self, tenant: &TenantId) -> Result<(), ApiError> {
        if self.operator || self.tenant.as_ref() == Some(tenant) {
            Ok(())
        } else {
            Err(ApiError::NotFound("tenant"))
        }
    }

    /// The tenant a cross-tenant query is limited to: none for operators.
    pub fn tenant_scope(&self) -> Option<TenantId> {
        if self.operator { None } else { self.tenant }
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.operator {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The key the per-caller rate limit is counted under.
    pub fn rate_key(&self) -> String {
        match &self.tenant {
            Some(t) => t.to_string(),
            None => format!("operator:{}", self.subject),
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized(message.to_owned())
}

impl Verifier {
    /// Builds the verifier and loads the keys once, so a broken JWKS fails start-up.
    pub async fn new(config: AuthConfig, metrics: Metrics) -> Result<Self, JwksError> {
        let keys = Keys::load(config.clone(), metrics).await?;
        Ok(Self { config, keys })
    }

    /// The key set, for the background refresher.
    pub fn keys(&self) -> Keys {
        self.keys.clone()
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        if !keys::accepted(header.alg) {
            return Err(unauthorized(
                "token algorithm must be RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA",
            ));
        }
        let kid = header.kid.ok_or_else(|| unauthorized("token has no kid"))?;
        let mut set = self.keys.current();
        if !set.contains_key(&kid) {
            set = self.keys.refresh_for_unknown(&kid).await;
        }
        let entry = set
            .get(&kid)
            .ok_or_else(|| unauthorized("token signed by an unknown key"))?;
        if !entry.algorithms.contains(&header.alg) {
            return Err(unauthorized("token algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &entry.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid",
                    ErrorKind::InvalidAudience => "token audience is not this service",
                    ErrorKind::InvalidIssuer => "token issuer is not trusted",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "token lacks a required claim (exp, iss, aud, sub)"
                    }
                    _ => "token is not valid",
                })
            })?;
        let caller = claims::caller(&data.claims, &self.config, chrono::Utc::now().timestamp())
            .map_err(|claims::Refused(message)| ApiError::Unauthorized(message))?;
        Ok(Principal {
            subject: caller.subject,
            tenant: caller.tenant,
            operator: caller.operator,
        })
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
        let principal = state.verifier.verify(token).await?;
        state.check_rate(&principal)?;
        Ok(principal)
    }
}
