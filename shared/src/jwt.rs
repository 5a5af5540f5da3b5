//! The claims of Harborhook's bearer tokens, and development keys.
//!
//! Production tokens come from the operator's identity provider, verified by the gateway
//! against its JWKS. For local use and tests, [`DevKeys`] generates an ES256 key pair, writes
//! the private key and a JWKS file, and issues tokens (`harborctl token issue`).

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ids::TenantId;

/// The scope that lets a token act across tenants.
pub const OPERATOR_SCOPE: &str = "harborhook:operator";

/// What a Harborhook token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// The tenant the token is bound to; absent on operator-only tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Space-separated scopes (`harborhook:operator`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

impl Claims {
    /// Claims for `tenant` (and/or the operator scope), valid from now for `ttl`.
    pub fn new(
        issuer: &str,
        audience: &str,
        subject: &str,
        tenant: Option<TenantId>,
        operator: bool,
        ttl: std::time::Duration,
    ) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            sub: subject.to_owned(),
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            nbf: now,
            iat: now,
            tenant_id: tenant.map(|t| t.to_string()),
            scope: if operator {
                OPERATOR_SCOPE.to_owned()
            } else {
                String::new()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("key material")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("generating the key")]
    Generate(String),
    #[error("reading or writing key files in {dir}")]
    Io { dir: String, source: std::io::Error },
}

/// An ES256 signing key with its JWKS, for development and tests.
pub struct DevKeys {
    kid: String,
    encoding: EncodingKey,
    pem: String,
    jwk: Jwk,
}

const PRIVATE_FILE: &str = "dev-signing-key.pem";
const JWKS_FILE: &str = "jwks.json";

impl DevKeys {
    pub fn generate() -> Result<Self, JwtError> {
        use rand::RngCore as _;
        // A uniformly random 32-byte string is a valid P-256 scalar with overwhelming
        // probability; draw again in the negligible case it is not.
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
                break key;
            }
        };
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| JwtError::Generate(e.to_string()))?
            .to_string();
        Self::from_pem(&pem)
    }

    fn from_pem(pem: &str) -> Result<Self, JwtError> {
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)?;
        // The kid is a digest of the public key, so the same key always has the same kid.
        let public = serde_json::to_vec(&jwk.algorithm).unwrap_or_default();
        let kid: String = Sha256::digest(&public)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        jwk.common.key_id = Some(kid.clone());
        Ok(Self {
            kid,
            encoding,
            pem: pem.to_owned(),
            jwk,
        })
    }

    /// Loads the key from `dir`, or generates and writes one there if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, JwtError> {
        let io = |source| JwtError::Io {
            dir: dir.display().to_string(),
            source,
        };
        let private = dir.join(PRIVATE_FILE);
        if private.is_file() {
            let pem = std::fs::read_to_string(&private).map_err(io)?;
            let keys = Self::from_pem(&pem)?;
            // Rewrite the JWKS in case it was removed; it is derived from the key.
            std::fs::write(dir.join(JWKS_FILE), keys.jwks_json()).map_err(io)?;
            return Ok(keys);
        }
        let keys = Self::generate()?;
        std::fs::create_dir_all(dir).map_err(io)?;
        write_private(&private, &keys.pem).map_err(io)?;
        std::fs::write(dir.join(JWKS_FILE), keys.jwks_json()).map_err(io)?;
        Ok(keys)
    }

    /// The private key, for tests that craft tokens by hand.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&self.jwks()).unwrap_or_default()
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// Writes the private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(pem.as_bytes())
}

/// The JWKS file name inside a dev key directory.
pub fn jwks_path(dir: &Path) -> std::path::PathBuf {
    dir.join(JWKS_FILE)
}
