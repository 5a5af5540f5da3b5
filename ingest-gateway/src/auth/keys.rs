//! The token keys: a JWKS read from a URL or a file, bounded in size, kept fresh in the
//! background.
//!
//! Requests read the current key set without waiting: it sits behind an `Arc` swapped whole by
//! a refresh, so a reader holds a lock only for a pointer copy. Two things fetch:
//!
//! - the refresher task, every `jwks_cache_ttl` after the last success (sooner after a
//!   failure, with a doubling back-off capped at the TTL). A failed refresh keeps the keys we
//!   have: an identity provider that is down or slow must not lock every caller out, and the
//!   exposure is bounded by how long the provider stays down (`harborhook_jwks_loaded_timestamp_seconds`
//!   makes it visible and alertable).
//! - a token whose `kid` is not in the set (a key the provider published since): that one
//!   request waits for a fetch, at most one per [`REFRESH_MIN_INTERVAL`] (counting these
//!   fetches only, so a short TTL cannot keep a new key out), so a flood of made-up `kid`s
//!   cannot become a flood of fetches; within the interval such a token is refused at once, and
//!   no request with a known `kid` ever waits. Fetches are single-flight: a caller arriving
//!   during one waits for it and then looks again.
//!
//! Which algorithms a key verifies comes from the key, never from the token: its `alg` when the
//! JWK names one, else its type (RSA: RS/PS 256–512; EC: by curve; OKP Ed25519: EdDSA). A
//! symmetric key or an encryption key in the set is skipped, so HS256 with the public key as
//! the secret (algorithm confusion) finds nothing to verify against.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use shared::config::{AuthConfig, ConfigError};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The least time between two fetches caused by unknown `kid`s.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    CaFile(#[from] shared::tls::CaFileError),
    #[error("reading JWKS file {path}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("fetching JWKS from {url}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("JWKS from {source_name} is larger than gateway.auth.jwks_max_bytes ({max} bytes)")]
    TooLarge { source_name: String, max: usize },
    #[error("JWKS document is not valid")]
    Parse(#[from] serde_json::Error),
    #[error("JWKS holds no usable signing key (RSA, EC P-256/P-384 or Ed25519, with a kid)")]
    NoUsableKey,
}

pub struct KeyEntry {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

pub type KeySet = HashMap<String, KeyEntry>;

struct Inner {
    config: AuthConfig,
    http: reqwest::Client,
    current: RwLock<Arc<KeySet>>,
    loaded_at: RwLock<Instant>,
    /// Serialises fetches (single flight).
    fetching: tokio::sync::Mutex<()>,
    /// When the last fetch for an unknown kid started: the background refresh does not count,
    /// or a short TTL would keep a newly published key out.
    last_unknown: std::sync::Mutex<Option<Instant>>,
    metrics: Metrics,
}

/// The key set, shared by every request and the refresher.
#[derive(Clone)]
pub struct Keys(Arc<Inner>);

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Whether a token may name `alg` at all (checked before any key lookup, so an HS256 token
/// never costs a fetch); which of these its key allows is the key's business.
pub fn accepted(alg: Algorithm) -> bool {
    RSA_ALGORITHMS.contains(&alg)
        || matches!(alg, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA)
}

/// The algorithms `jwk` may verify, or none when it is not a signing key we accept.
fn algorithms_of(jwk: &Jwk) -> Vec<Algorithm> {
    // A key for anything but signatures (`enc`, or a use we do not know) verifies nothing.
    if !matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    ) {
        return Vec::new();
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => Vec::new(),
    };
    let named = match jwk.common.key_algorithm {
        None => return by_type,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::RS384) => Algorithm::RS384,
        Some(KeyAlgorithm::RS512) => Algorithm::RS512,
        Some(KeyAlgorithm::PS256) => Algorithm::PS256,
        Some(KeyAlgorithm::PS384) => Algorithm::PS384,
        Some(KeyAlgorithm::PS512) => Algorithm::PS512,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::ES384) => Algorithm::ES384,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return Vec::new(),
    };
    // A JWK naming an algorithm its key type cannot do is unusable, not trusted for either.
    by_type.into_iter().filter(|a| *a == named).collect()
}

fn parse(text: &[u8]) -> Result<KeySet, JwksError> {
    let set: JwkSet = serde_json::from_slice(text)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let algorithms = algorithms_of(jwk);
        let (Some(kid), false) = (jwk.common.key_id.clone(), algorithms.is_empty()) else {
            continue; // A key we cannot use (no kid, unsupported type) is skipped, not fatal.
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        // Two keys under one kid would make the choice arbitrary: the first one stays.
        if keys.contains_key(&kid) {
            tracing::warn!(kid, "JWKS lists the kid twice; the later key is ignored");
            continue;
        }
        keys.insert(kid, KeyEntry { key, algorithms });
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

impl Keys {
    /// Loads the keys once, so a missing or broken JWKS fails start-up.
    pub async fn load(config: AuthConfig, metrics: Metrics) -> Result<Self, JwksError> {
        config.validate()?;
        let url = config.jwks_url.clone().unwrap_or_default();
        // rustls, as every outbound client of ours; https_only also refuses a redirect from
        // https to http (keys in the clear).
        let roots =
            shared::tls::extra_roots("gateway.auth.jwks_ca_file", config.jwks_ca_file.as_deref())?;
        let http = roots
            .into_iter()
            .fold(
                shared::tls::http_client(),
                reqwest::ClientBuilder::add_root_certificate,
            )
            .timeout(config.jwks_fetch_timeout)
            .https_only(!config.allow_insecure_jwks_url)
            .build()
            .map_err(|source| JwksError::Fetch {
                url: url.clone(),
                source,
            })?;
        let keys = Self(Arc::new(Inner {
            config,
            http,
            current: RwLock::new(Arc::new(HashMap::new())),
            loaded_at: RwLock::new(Instant::now()),
            fetching: tokio::sync::Mutex::new(()),
            last_unknown: std::sync::Mutex::new(None),
            metrics,
        }));
        let first = keys.fetch().await?;
        keys.install(first);
        Ok(keys)
    }

    /// The current key set; never waits for a fetch.
    pub fn current(&self) -> Arc<KeySet> {
        self.0
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn install(&self, set: KeySet) {
        let count = set.len();
        *self
            .0
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        *self
            .0
            .loaded_at
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.metrics.jwks_loaded(count);
    }

    fn loaded_at(&self) -> Instant {
        *self
            .0
            .loaded_at
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let max = self.0.config.jwks_max_bytes;
        let text = if let Some(url) = &self.0.config.jwks_url {
            self.fetch_url(url, max).await?
        } else {
            let path = self.0.config.jwks_file.clone().unwrap_or_default();
            let file = |source| JwksError::File {
                path: path.clone(),
                source,
            };
            // Read through a limit, not by the size the file claims (it may grow, or be a
            // device that reports none).
            use tokio::io::AsyncReadExt as _;
            let opened = tokio::fs::File::open(&path).await.map_err(file)?;
            let mut body = Vec::new();
            opened
                .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut body)
                .await
                .map_err(file)?;
            if body.len() > max {
                return Err(JwksError::TooLarge {
                    source_name: path,
                    max,
                });
            }
            body
        };
        parse(&text)
    }

    /// Reads the body chunk by chunk, so an oversized answer (with or without a
    /// `Content-Length`) is refused after `max` bytes instead of being buffered whole.
    async fn fetch_url(&self, url: &str, max: usize) -> Result<Vec<u8>, JwksError> {
        let fetch = |source| JwksError::Fetch {
            url: url.to_owned(),
            source,
        };
        let too_large = || JwksError::TooLarge {
            source_name: url.to_owned(),
            max,
        };
        let mut response = self
            .0
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fetch)?;
        if response
            .content_length()
            .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > max))
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Fetches and installs, unless `skip` says the fetch is no longer needed once this caller
    /// holds the fetch lock (another caller's fetch brought what it wanted).
    async fn refresh(&self, reason: &'static str, skip: impl Fn(&Self) -> bool) {
        let _single_flight = self.0.fetching.lock().await;
        if skip(self) {
            return;
        }
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(reason, keys = set.len(), "reloaded JWKS");
                self.install(set);
            }
            Err(e) => {
                self.0.metrics.jwks_refresh_failed();
                // Keep serving with the keys we have (see the module comment).
                tracing::warn!(reason, error = %shared::error_chain(&e), "JWKS reload failed");
            }
        }
    }

    /// For a token naming `kid`, which the set lacks: fetch once (rate-limited) and look again.
    pub async fn refresh_for_unknown(&self, kid: &str) -> Arc<KeySet> {
        // Checked before queueing for the fetch lock too: within the interval a made-up kid is
        // refused at once instead of waiting behind a slow fetch.
        let recent = || {
            self.0
                .last_unknown
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL)
        };
        if recent() {
            return self.current();
        }
        self.refresh("unknown kid", |keys| {
            if keys.current().contains_key(kid) || recent() {
                return true;
            }
            *keys
                .0
                .last_unknown
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            false
        })
        .await;
        self.current()
    }

    /// The background refresher: runs until `stop`.
    pub async fn refresh_periodically(self, stop: CancellationToken) {
        let ttl = self.0.config.jwks_cache_ttl;
        let mut backoff = REFRESH_MIN_INTERVAL.min(ttl);
        loop {
            let since = self.loaded_at().elapsed();
            let wait = if since >= ttl { backoff } else { ttl - since };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let before = self.loaded_at();
            // Skipped when an unknown-kid fetch refreshed the set meanwhile. A fetch in
            // progress is abandoned at shutdown rather than waited out.
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.refresh("cache expired", |keys| keys.loaded_at().elapsed() < ttl) => {}
            }
            backoff = if self.loaded_at() > before {
                REFRESH_MIN_INTERVAL.min(ttl)
            } else {
                (backoff * 2).min(ttl)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).expect("jwk")
    }

    const N: &str = "sRJjz2msS1Ah4qiwEQXdgvsmXlzGBGYhHCGlPKDlp0ZOHaPRkfV-kCIDbQvBVt0DjkY7MNwHmHjhLfN5vQG6lrM0JtMYwQyIHg76tyCbAn1WgvOkeAKhq-7MeI6Dfq_8zcDIB8i0X9jhn6lP_qpHbzI7Oljn4WRKvjhxvyvl4pXf0nvDhzUfXOBlJ-Q3fWTVPoQyC-Uv2eK-SsnN6y3K-eIq5YnN4YfzjKd6dN5J5rxNGbF8Y79pD2gWWN4Y8tHi_ktRs6PmA3Bn3bWj7Hy8Ulpj8uU3L7wCLd8Kx0Bt3Y4vW6jbcT5E5VM6F2R5kYXhXC9-gsp-H3KBsJt9Q";

    #[test]
    fn a_keys_algorithms_come_from_the_key_not_the_token() {
        let rsa = jwk(json!({"kty": "RSA", "kid": "r", "n": N, "e": "AQAB"}));
        assert_eq!(algorithms_of(&rsa), RSA_ALGORITHMS.to_vec());
        let rs256 = jwk(json!({"kty": "RSA", "kid": "r", "alg": "RS256", "n": N, "e": "AQAB"}));
        assert_eq!(algorithms_of(&rs256), vec![Algorithm::RS256]);
        // A key claiming an algorithm of another type is not trusted for anything.
        let lying = jwk(json!({"kty": "RSA", "kid": "r", "alg": "ES256", "n": N, "e": "AQAB"}));
        assert!(algorithms_of(&lying).is_empty());
        let enc = jwk(json!({"kty": "RSA", "kid": "r", "use": "enc", "n": N, "e": "AQAB"}));
        assert!(algorithms_of(&enc).is_empty());
        let hmac = jwk(json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}));
        assert!(algorithms_of(&hmac).is_empty());
    }

    #[test]
    fn a_set_without_a_usable_key_is_refused() {
        let only_hmac = json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
        let bytes = serde_json::to_vec(&only_hmac).expect("json");
        assert!(matches!(parse(&bytes), Err(JwksError::NoUsableKey)));
        let no_kid = json!({"keys": [{"kty": "RSA", "n": N, "e": "AQAB"}]});
        let bytes = serde_json::to_vec(&no_kid).expect("json");
        assert!(matches!(parse(&bytes), Err(JwksError::NoUsableKey)));
        assert!(matches!(parse(b"{\"keys\": 3}"), Err(JwksError::Parse(_))));
    }
}
