//! `harborctl token`: the development key pair and tokens signed by it.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use shared::Config;
use shared::ids::TenantId;
use shared::jwt::{Claims, DevKeys, jwks_path};

pub fn init(dir: &Path, json: bool) -> anyhow::Result<()> {
    let keys = DevKeys::load_or_create(dir)?;
    let path = jwks_path(dir);
    if json {
        println!("{}", json!({"jwks_file": path, "kid": keys.kid()}));
    } else {
        println!("{}", path.display());
    }
    Ok(())
}

pub fn issue(
    config: &Config,
    dir: &Path,
    tenant: Option<TenantId>,
    operator: bool,
    ttl: Duration,
    subject: &str,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        tenant.is_some() || operator,
        "a token needs --tenant ten_… or --operator (or both)"
    );
    let keys = DevKeys::load_or_create(dir)?;
    let auth = &config.gateway.auth;
    let claims = Claims::new(&auth.issuer, &auth.audience, subject, tenant, operator, ttl);
    let token = keys.issue(&claims)?;
    if json {
        println!("{}", json!({"token": token, "claims": claims}));
    } else {
        println!("{token}");
    }
    Ok(())
}
