//! Bearer-token authentication in the service (the replaced system trusted its callers).
//!
//! Tokens are JWTs signed RS256 or ES256 by a key in a JWKS, read from a file or fetched from a
//! URL. Keys are cached; a token whose `kid` is not in the cache triggers one reload, at most
//! every [`REFRESH_MIN_INTERVAL`], so a flood of tokens with made-up `kid`s cannot turn into a
//! flood of JWKS fetches. `iss`, `aud`, `exp` and `nbf` are checked with the configured leeway.
//!
//! The claim `tenant_id` binds a token to one tenant; the scope `harborhook:operator` lets a
//! token act across tenants. [`Principal::require_tenant`] answers 404 for another tenant's
//! resources, so a token cannot even learn which ids exist elsewhere.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use shared::config::AuthConfig;
use shared::ids::TenantId;
use shared::jwt::{Claims, OPERATOR_SCOPE};
use tokio::sync::{Mutex, RwLock};

use crate::error::ApiError;
use crate::state::AppState;

const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading JWKS file {path}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("fetching JWKS from {url}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("JWKS document is not valid")]
    Parse(#[from] serde_json::Error),
}

struct KeyEntry {
    key: DecodingKey,
    algorithm: Algorithm,
}

struct Cache {
    keys: HashMap<String, KeyEntry>,
    loaded_at: Option<Instant>,
}

/// Verifies bearer tokens against the configured JWKS.
pub struct Verifier {
    config: AuthConfig,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// Serialises reloads and remembers when the last one happened.
    reload: Mutex<Option<Instant>>,
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
    pub async fn new(config: AuthConfig) -> Result<Self, JwksError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| JwksError::Fetch {
                url: config.jwks_url.clone().unwrap_or_default(),
                source,
            })?;
        let verifier = Self {
            config,
            http,
            cache: RwLock::new(Cache {
                keys: HashMap::new(),
                loaded_at: None,
            }),
            reload: Mutex::new(None),
        };
        let keys = verifier.fetch().await?;
        *verifier.cache.write().await = Cache {
            keys,
            loaded_at: Some(Instant::now()),
        };
        Ok(verifier)
    }

    async fn fetch(&self) -> Result<HashMap<String, KeyEntry>, JwksError> {
        let text = if let Some(url) = &self.config.jwks_url {
            let fetch = |source| JwksError::Fetch {
                url: url.clone(),
                source,
            };
            self.http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(fetch)?
                .text()
                .await
                .map_err(fetch)?
        } else {
            let path = self.config.jwks_file.clone().unwrap_or_default();
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|source| JwksError::File { path, source })?
        };
        let set: JwkSet = serde_json::from_str(&text)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue; // A key we cannot use (no kid, unsupported type) is skipped, not fatal.
            };
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            keys.insert(kid, KeyEntry { key, algorithm });
        }
        Ok(keys)
    }

    /// Reloads the keys unless another reload happened very recently.
    async fn reload(&self, force_reason: &str) {
        let mut last = self.reload.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(reason = force_reason, keys = keys.len(), "reloaded JWKS");
                *self.cache.write().await = Cache {
                    keys,
                    loaded_at: Some(Instant::now()),
                };
            }
            // Keep serving with the keys we have; the next unknown kid or expiry retries.
            Err(e) => tracing::warn!(error = %shared::error_chain(&e), "JWKS reload failed"),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(unauthorized("token algorithm must be RS256 or ES256"));
        }
        let kid = header.kid.ok_or_else(|| unauthorized("token has no kid"))?;
        let stale = self
            .cache
            .read()
            .await
            .loaded_at
            .is_none_or(|t| t.elapsed() > self.config.jwks_cache_ttl);
        if stale {
            self.reload("cache expired").await;
        }
        if !self.cache.read().await.keys.contains_key(&kid) {
            self.reload("unknown kid").await;
        }
        let cache = self.cache.read().await;
        let entry = cache
            .keys
            .get(&kid)
            .ok_or_else(|| unauthorized("token signed by an unknown key"))?;
        if entry.algorithm != header.alg {
            return Err(unauthorized("token algorithm does not match its key"));
        }
        let mut validation = Validation::new(entry.algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &entry.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidAudience => "token audience is not this service",
                ErrorKind::InvalidIssuer => "token issuer is not trusted",
                ErrorKind::InvalidSignature => "token signature is invalid",
                _ => "token is not valid",
            })
        })?;
        let claims = data.claims;
        let operator = claims.scope.split_whitespace().any(|s| s == OPERATOR_SCOPE);
        let tenant = match claims.tenant_id.as_deref() {
            Some(t) => Some(
                t.parse::<TenantId>()
                    .map_err(|_| unauthorized("token tenant_id is not a tenant id"))?,
            ),
            None => None,
        };
        if tenant.is_none() && !operator {
            return Err(unauthorized(
                "token is bound to no tenant and has no operator scope",
            ));
        }
        // The subject is recorded (replays, logs): it must be storable and bounded.
        if shared::text::check(
            &claims.sub,
            shared::records::REQUESTED_BY_MAX,
            shared::text::Lines::Single,
        )
        .is_err()
        {
            return Err(unauthorized(
                "token sub must be 1 to 255 characters without control characters",
            ));
        }
        Ok(Principal {
            subject: claims.sub,
            tenant,
            operator,
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
