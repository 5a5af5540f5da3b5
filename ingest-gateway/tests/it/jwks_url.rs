//! Keys from a JWKS URL: RS256 and ES256 tokens verify; a token signed by a key added to the
//! JWKS after start-up (an unknown `kid`) triggers a refetch and then verifies; a key removed
//! from the JWKS stops working after the background refresh; `http://` needs the dev switch.
//! A hostile identity provider is tried in jwks_hostile.rs.

use std::sync::{Arc, Mutex};

use crate::common::App;
use axum::Router;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use shared::jwt::DevKeys;

const RSA_PEM: &str = include_str!("../fixtures/rsa-test-key.pem");

struct RsaKey {
    encoding: EncodingKey,
    jwk: Jwk,
}

fn rsa_key() -> anyhow::Result<RsaKey> {
    let encoding = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    jwk.common.key_id = Some("rsa-test".into());
    Ok(RsaKey { encoding, jwk })
}

/// A loopback JWKS endpoint whose key set the test can change.
async fn serve_jwks(set: Arc<Mutex<JwkSet>>) -> anyhow::Result<String> {
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let set = set.clone();
            async move { axum::Json(set.lock().expect("lock").clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_url_and_refresh_on_an_unknown_kid() -> anyhow::Result<()> {
    let es = DevKeys::generate()?;
    let set = Arc::new(Mutex::new(JwkSet {
        keys: es.jwks().keys,
    }));
    let url = serve_jwks(set.clone()).await?;
    let app = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(url.clone());
        c.gateway.auth.jwks_file = None;
        c.gateway.auth.allow_insecure_jwks_url = true;
        // Short, so the removal below is seen within the test.
        c.gateway.auth.jwks_cache_ttl = std::time::Duration::from_secs(1);
    })
    .await?;
    let op_claims = app.claims(None, true);
    let es_token = es.issue(&op_claims)?;
    let (status, body) = app
        .json(Method::GET, "/v1/dlq", Some(&es_token), None)
        .await?;
    assert_eq!(status, 200, "ES256 from the URL: {body}");

    // Past a background refresh or two (TTL 1 s): those must not count against the
    // unknown-kid fetch limit, or a key published now would be refused for 10 s.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // An RS256 key is added to the JWKS after start-up: its first token refetches the set.
    let rsa = rsa_key()?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-test".into());
    let rs_token = jsonwebtoken::encode(&header, &op_claims, &rsa.encoding)?;
    set.lock().expect("lock").keys.push(rsa.jwk.clone());
    let (status, body) = app
        .json(Method::GET, "/v1/dlq", Some(&rs_token), None)
        .await?;
    assert_eq!(status, 200, "RS256 after refresh on an unknown kid: {body}");

    // The RSA token with its header claiming ES256 is refused (algorithm must match the key).
    let mut lying = Header::new(Algorithm::ES256);
    lying.kid = Some("rsa-test".into());
    let lying_token = jsonwebtoken::encode(&lying, &op_claims, es.encoding_key())?;
    assert_eq!(
        app.json(Method::GET, "/v1/dlq", Some(&lying_token), None)
            .await?
            .0,
        401
    );
    // The JWK names RS256: a PS256 token signed by the same RSA key is refused (the key's
    // `alg` decides, not the token's header, even within the RSA family).
    let mut ps = Header::new(Algorithm::PS256);
    ps.kid = Some("rsa-test".into());
    let ps_token = jsonwebtoken::encode(&ps, &op_claims, &rsa.encoding)?;
    let (status, body) = app
        .json(Method::GET, "/v1/dlq", Some(&ps_token), None)
        .await?;
    assert_eq!(status, 401, "PS256 with an RS256 key: {body}");
    // App's own operator token is signed by its file key, which is in no JWKS this gateway
    // reads; the reload it triggers (at most one per 10 s) does not make it valid.
    let (status, _) = app
        .json(Method::GET, "/v1/dlq", Some(&app.operator), None)
        .await?;
    assert_eq!(status, 401, "a key that is not in the JWKS");

    // The ES256 key is removed from the JWKS. The background refresh (every second here)
    // drops it without any request asking: its tokens stop working; the RSA key still in the
    // set keeps working.
    set.lock()
        .expect("lock")
        .keys
        .retain(|k| k.common.key_id.as_deref() == Some("rsa-test"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = app
            .json(Method::GET, "/v1/dlq", Some(&es_token), None)
            .await?;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "a key removed from the JWKS stops working after a refresh"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = app
        .json(Method::GET, "/v1/dlq", Some(&rs_token), None)
        .await?;
    assert_eq!(status, 200, "the key still listed keeps working: {body}");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_url_fails_start_up() -> anyhow::Result<()> {
    let result = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
        c.gateway.auth.jwks_file = None;
        c.gateway.auth.allow_insecure_jwks_url = true;
    })
    .await;
    let err = result.err().expect("start-up must fail without keys");
    let text = format!("{err:#}");
    assert!(text.contains("fetching JWKS from"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_jwks_url_needs_the_dev_switch() -> anyhow::Result<()> {
    let es = DevKeys::generate()?;
    let url = serve_jwks(Arc::new(Mutex::new(es.jwks()))).await?;
    let result = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(url.clone());
        c.gateway.auth.jwks_file = None;
    })
    .await;
    let err = result.err().expect("keys fetched in the clear are refused");
    let text = format!("{err:#}");
    assert!(text.contains("allow_insecure_jwks_url"), "{text}");
    Ok(())
}

/// An identity provider behind a private CA (an in-cluster Keycloak, say): its JWKS over https
/// verifies with `jwks_ca_file`, and without it the gateway refuses to start (the certificate is
/// checked, the handshake refused) rather than trust keys it cannot authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_jwks_behind_a_private_ca_needs_its_ca_file() -> anyhow::Result<()> {
    let es = DevKeys::generate()?;
    let set = Arc::new(Mutex::new(es.jwks()));
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let set = set.clone();
            async move { axum::Json(set.lock().expect("lock").clone()) }
        }),
    );
    let idp = shared::testing::tls::serve(app).await?;
    let url = format!("{}/jwks.json", idp.url);

    let refused = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(url.clone());
        c.gateway.auth.jwks_file = None;
    })
    .await;
    let err = format!(
        "{:#}",
        refused
            .err()
            .expect("an unverifiable JWKS server is refused")
    );
    assert!(err.contains("fetching JWKS from"), "{err}");
    assert!(idp.refused() > 0, "the handshake was tried and refused");

    let ca = std::env::temp_dir().join(format!("hh-jwks-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &idp.ca_pem)?;
    let app = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(url.clone());
        c.gateway.auth.jwks_file = None;
        c.gateway.auth.jwks_ca_file = Some(ca.clone());
    })
    .await?;
    let token = es.issue(&app.claims(None, true))?;
    let (status, body) = app.json(Method::GET, "/v1/dlq", Some(&token), None).await?;
    assert_eq!(status, 200, "keys from the https JWKS verify: {body}");
    let _ = std::fs::remove_file(&ca);
    app.stop().await
}
