//! Tokens shaped like those of real identity providers: `aud` arrays, no `nbf`, custom claims
//! nested or namespaced, operator rights in `realm_access.roles`, `permissions`, `scp` or
//! `roles`, RSA keys published without `alg` (Entra ID). Each provider's claims are copied from
//! its documentation's example access token; docs/authentication.md gives the matching gateway
//! settings, which each case below uses.
//!
//! Per provider: a tenant token reaches its tenant (200) and not another (404) nor operator
//! routes such as creating a tenant (403); an operator token acts across tenants; the same token with our audience
//! missing from `aud`, issued in the future, or carrying the operator value in a claim the
//! settings do not name, is refused.

use crate::common::App;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use shared::config::AuthConfig;

const RSA_PEM: &str = include_str!("../fixtures/rsa-test-key.pem");
const KID: &str = "idp-rsa-1";

struct Shape {
    name: &'static str,
    settings: fn(&mut AuthConfig),
    /// The provider's token for `tenant` (None: an operator's token).
    claims: fn(tenant: Option<&str>, now: i64) -> Value,
    /// Where a provider would put a right our settings do not read.
    stray_operator: fn(&mut Value),
}

fn rsa() -> anyhow::Result<(EncodingKey, Jwk)> {
    let encoding = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    jwk.common.key_id = Some(KID.into());
    // As Entra ID publishes them: no `alg`, with `use` and an `x5t`.
    jwk.common.key_algorithm = None;
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    jwk.common.x509_sha1_fingerprint = Some("nOo3ZDrODXEK1jKWhXslHR_KXEg".into());
    Ok((encoding, jwk))
}

fn sign(encoding: &EncodingKey, claims: &Value) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    Ok(jsonwebtoken::encode(&header, claims, encoding)?)
}

async fn check(shape: &Shape) -> anyhow::Result<()> {
    let (encoding, jwk) = rsa()?;
    let file = std::env::temp_dir().join(format!(
        "harborhook-idp-{}-{}.json",
        shape.name,
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_string(&JwkSet { keys: vec![jwk] })?)?;
    let app = App::spawn_with(|c| {
        c.gateway.auth.jwks_file = Some(file.display().to_string());
        (shape.settings)(&mut c.gateway.auth);
    })
    .await?;
    let result = exercise(&app, shape, &encoding).await;
    let _ = std::fs::remove_file(&file);
    app.stop().await?;
    result
}

async fn exercise(app: &App, shape: &Shape, key: &EncodingKey) -> anyhow::Result<()> {
    let name = shape.name;
    let now = chrono::Utc::now().timestamp();
    let operator = sign(key, &(shape.claims)(None, now))?;
    // Creating a tenant is an operator's action.
    let create_as = |token: String| async move {
        app.json(
            Method::POST,
            "/v1/tenants",
            Some(&token),
            Some(json!({"name": "acme"})),
        )
        .await
    };
    let create = |token: String| async move {
        let (status, body) = create_as(token).await?;
        anyhow::ensure!(
            status == 201,
            "{name}: operator creates a tenant: {status} {body}"
        );
        anyhow::Ok(body["id"].as_str().unwrap_or_default().to_owned())
    };
    let mine = create(operator.clone()).await?;
    let theirs = create(operator.clone()).await?;

    let tenant_claims = (shape.claims)(Some(&mine), now);
    let tenant = sign(key, &tenant_claims)?;
    let status = |path: String, token: String| async move {
        let (status, body) = app.json(Method::GET, &path, Some(&token), None).await?;
        anyhow::Ok((status, body))
    };
    let (s, body) = status(format!("/v1/tenants/{mine}/endpoints"), tenant.clone()).await?;
    assert_eq!(s, 200, "{name}: a tenant token reaches its tenant: {body}");
    let (s, _) = status(format!("/v1/tenants/{theirs}/endpoints"), tenant.clone()).await?;
    assert_eq!(s, 404, "{name}: and not another");
    let (s, _) = create_as(tenant.clone()).await?;
    assert_eq!(s, 403, "{name}: nor operator routes");
    let (s, body) = status(format!("/v1/tenants/{theirs}/endpoints"), operator.clone()).await?;
    assert_eq!(s, 200, "{name}: an operator acts across tenants: {body}");

    let mut refused: Vec<(&str, Value)> = Vec::new();
    let mut other_audience = tenant_claims.clone();
    other_audience["aud"] = match &tenant_claims["aud"] {
        Value::Array(_) => json!(["someone-else", "account"]),
        _ => json!("someone-else"),
    };
    refused.push(("our audience missing from aud", other_audience));
    let mut future = tenant_claims.clone();
    future["iat"] = json!(now + 3600);
    refused.push(("issued in the future", future));
    let mut expired = tenant_claims.clone();
    expired["exp"] = json!(now - 3600);
    refused.push(("expired", expired));
    for (what, claims) in refused {
        let (s, body) =
            status(format!("/v1/tenants/{mine}/endpoints"), sign(key, &claims)?).await?;
        assert_eq!(s, 401, "{name}: {what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}: {what}");
    }
    let mut stray = tenant_claims.clone();
    (shape.stray_operator)(&mut stray);
    let (s, _) = create_as(sign(key, &stray)?).await?;
    assert_eq!(
        s, 403,
        "{name}: a right in a claim the settings do not name grants nothing"
    );
    Ok(())
}

fn keycloak(tenant: Option<&str>, now: i64) -> Value {
    let roles: Vec<&str> = if tenant.is_some() {
        vec!["offline_access", "uma_authorization"]
    } else {
        vec!["offline_access", "harborhook-operator"]
    };
    let mut claims = json!({
        "exp": now + 300, "iat": now, "auth_time": now - 5,
        "jti": "onrtac:9c1f0b43-5d57-4c2e-9d6a-1f0a8c3f2b11",
        "iss": "https://sso.example.com/realms/acme",
        "aud": ["harborhook", "account"],
        "sub": "f1b6a8d2-7c43-4e0c-8d7a-2a3c9e6b5f10",
        "typ": "Bearer", "azp": "harborhook-cli", "sid": "a8d2f1b6-4e0c-7c43",
        "acr": "1", "allowed-origins": ["https://console.example.com"],
        "realm_access": {"roles": roles},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid email profile",
        "email_verified": true, "preferred_username": "ops@example.com",
    });
    if let Some(t) = tenant {
        claims["harborhook"] = json!({"tenant_id": t});
    }
    claims
}

fn auth0(tenant: Option<&str>, now: i64) -> Value {
    let mut claims = json!({
        "iss": "https://acme.us.auth0.com/",
        "sub": "auth0|65f0c1e2a3b4c5d6e7f80912",
        "aud": ["harborhook", "https://acme.us.auth0.com/userinfo"],
        "iat": now, "exp": now + 86400,
        "scope": "openid profile email",
        "azp": "Xq1w2e3r4t5y6u7i8o9p0aSdFgHjKl",
        "permissions": if tenant.is_some() { json!(["events:publish"]) } else { json!(["harborhook:operator"]) },
    });
    if let Some(t) = tenant {
        claims["https://harborhook.example/tenant_id"] = json!(t);
    }
    claims
}

fn okta(tenant: Option<&str>, now: i64) -> Value {
    let mut claims = json!({
        "ver": 1, "jti": "AT.Xk2aW9v1_5hB3c7d9f0g2h4j6k8l0m",
        "iss": "https://acme.okta.com/oauth2/default",
        "aud": "api://harborhook",
        "iat": now, "exp": now + 3600,
        "cid": "0oa1b2c3d4e5f6g7h8i9", "uid": "00u1a2b3c4d5e6f7g8h9",
        "scp": ["openid", "harborhook:publish"],
        "groups": if tenant.is_some() { json!(["Everyone"]) } else { json!(["Everyone", "harborhook-operators"]) },
        "auth_time": now - 60,
        "sub": "ops@example.com",
    });
    if let Some(t) = tenant {
        claims["tenant_id"] = json!(t);
    }
    claims
}

fn entra(tenant: Option<&str>, now: i64) -> Value {
    let mut claims = json!({
        "aud": "6e74172b-be56-4843-9ff4-e66a39bb12e3",
        "iss": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
        "iat": now, "nbf": now, "exp": now + 3900,
        "aio": "E2ZgYJh8sGt7l/rPV3v9y8sZ5dXJAA==",
        "azp": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "azpacr": "1",
        "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474",
        "rh": "0.AQcAv4j5cvGGr0GRqy180BHbRysXdG5WvkNIn_TmajmbEuMHAAA.",
        "sub": "l3_roISQU222bULS9yi2k0XpqpOiMz5H3ZACo1GeXA",
        "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "uti": "fqiBqXLPj0eQa82S-IYFAA", "ver": "2.0",
    });
    match tenant {
        Some(t) => claims["harborhook_tenant"] = json!(t),
        None => claims["roles"] = json!(["Harborhook.Operator"]),
    }
    claims
}

fn google(tenant: Option<&str>, now: i64) -> Value {
    let mut claims = json!({
        "iss": "https://securetoken.google.com/acme-project",
        "aud": "acme-project",
        "auth_time": now - 30,
        "user_id": "Xy9Zp1Qw2Er3Ty4Ui5Op6As7Df8",
        "sub": "Xy9Zp1Qw2Er3Ty4Ui5Op6As7Df8",
        "iat": now, "exp": now + 3600,
        "email": "ops@example.com", "email_verified": true,
        "firebase": {"identities": {"email": ["ops@example.com"]}, "sign_in_provider": "password"},
    });
    match tenant {
        Some(t) => claims["harborhook_tenant"] = json!(t),
        None => claims["harborhook_roles"] = json!(["harborhook:operator"]),
    }
    claims
}

const SHAPES: [Shape; 5] = [
    Shape {
        name: "keycloak",
        settings: |a| {
            a.issuer = "https://sso.example.com/realms/acme".into();
            a.audience = "harborhook".into();
            a.tenant_claim = "harborhook.tenant_id".into();
            a.operator_claims = vec!["realm_access.roles".into()];
            a.operator_scope = "harborhook-operator".into();
        },
        claims: keycloak,
        stray_operator: |c| {
            c["resource_access"]["harborhook"] = json!({"roles": ["harborhook-operator"]})
        },
    },
    Shape {
        name: "auth0",
        settings: |a| {
            a.issuer = "https://acme.us.auth0.com/".into();
            a.audience = "harborhook".into();
            a.tenant_claim = "https://harborhook.example/tenant_id".into();
            // RBAC on: `permissions` holds what the user was granted; `scope` (what was asked
            // for) grants nothing.
            a.operator_claims = vec!["permissions".into()];
            a.operator_scope = "harborhook:operator".into();
        },
        claims: auth0,
        stray_operator: |c| c["scope"] = json!("openid harborhook:operator"),
    },
    Shape {
        name: "okta",
        settings: |a| {
            a.issuer = "https://acme.okta.com/oauth2/default".into();
            a.audience = "api://harborhook".into();
            // A groups claim: a custom scope is granted to whoever asks unless a policy says
            // otherwise, so it is no place for an operator right.
            a.operator_claims = vec!["groups".into()];
            a.operator_scope = "harborhook-operators".into();
        },
        claims: okta,
        stray_operator: |c| c["scp"] = json!(["harborhook-operators"]),
    },
    Shape {
        name: "entra",
        settings: |a| {
            a.issuer =
                "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
                    .into();
            // v2 tokens carry the application (client) id as `aud`.
            a.audience = "6e74172b-be56-4843-9ff4-e66a39bb12e3".into();
            a.tenant_claim = "harborhook_tenant".into();
            a.operator_claims = vec!["roles".into()];
            a.operator_scope = "Harborhook.Operator".into();
        },
        claims: entra,
        // Delegated scopes (`scp`) are what the user consented to, not an app role.
        stray_operator: |c| c["scp"] = json!("Harborhook.Operator"),
    },
    Shape {
        name: "google",
        settings: |a| {
            a.issuer = "https://securetoken.google.com/acme-project".into();
            a.audience = "acme-project".into();
            a.tenant_claim = "harborhook_tenant".into();
            a.operator_claims = vec!["harborhook_roles".into()];
        },
        claims: google,
        // The default claim names mean nothing once the settings name others.
        stray_operator: |c| c["scope"] = json!("harborhook:operator"),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_tokens() -> anyhow::Result<()> {
    check(&SHAPES[0]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0_tokens() -> anyhow::Result<()> {
    check(&SHAPES[1]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_tokens() -> anyhow::Result<()> {
    check(&SHAPES[2]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_id_tokens() -> anyhow::Result<()> {
    check(&SHAPES[3]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_identity_platform_tokens() -> anyhow::Result<()> {
    check(&SHAPES[4]).await
}
