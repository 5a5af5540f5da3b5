//! Authentication and tenant isolation: bad tokens get 401; a tenant's token sees another
//! tenant's resources as 404 and changes nothing; operators act across tenants.

use crate::common::App;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;
use shared::jwt::DevKeys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_rejected_with_401() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let path = format!("/v1/tenants/{tenant}/endpoints");

    let mut cases: Vec<(&str, Option<String>)> =
        vec![("no token", None), ("garbage", Some("not.a.jwt".into()))];
    // Signed by another key that claims our key's kid.
    let forger = DevKeys::generate()?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(app.keys.kid().to_owned());
    let forged = jsonwebtoken::encode(
        &header,
        &app.claims(Some(tenant), true),
        forger.encoding_key(),
    )?;
    cases.push(("forged signature", Some(forged)));
    // A key the JWKS does not have.
    cases.push((
        "unknown kid",
        Some(forger.issue(&app.claims(Some(tenant), false))?),
    ));
    let mut expired = app.claims(Some(tenant), false);
    expired.exp = chrono::Utc::now().timestamp() - 3600;
    cases.push(("expired", Some(app.keys.issue(&expired)?)));
    let mut early = app.claims(Some(tenant), false);
    early.nbf = chrono::Utc::now().timestamp() + 3600;
    cases.push(("not yet valid", Some(app.keys.issue(&early)?)));
    let mut audience = app.claims(Some(tenant), false);
    audience.aud = "someone-else".into();
    cases.push(("wrong audience", Some(app.keys.issue(&audience)?)));
    let mut issuer = app.claims(Some(tenant), false);
    issuer.iss = "evil".into();
    cases.push(("wrong issuer", Some(app.keys.issue(&issuer)?)));
    // HS256 with the public key as the secret: the classic algorithm-confusion attack.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(app.keys.kid().to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &app.claims(Some(tenant), true),
        &EncodingKey::from_secret(app.keys.jwks_json().as_bytes())?,
    )?;
    cases.push(("HS256", Some(confused)));
    let mut nobody = app.claims(None, false);
    nobody.tenant_id = None;
    cases.push((
        "no tenant and no operator scope",
        Some(app.keys.issue(&nobody)?),
    ));
    let mut bad_tenant = app.claims(None, false);
    bad_tenant.tenant_id = Some("ep_0190c5a1b2c37d4e8f9a0b1c2d3e4f51".into());
    cases.push((
        "tenant_id of the wrong kind",
        Some(app.keys.issue(&bad_tenant)?),
    ));

    for (what, token) in cases {
        let (status, body) = app.json(Method::GET, &path, token.as_deref(), None).await?;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    // Ping needs no token; the tenant's own token works.
    assert_eq!(app.json(Method::GET, "/v1/ping", None, None).await?.0, 200);
    assert_eq!(
        app.json(Method::GET, &path, Some(&app.tenant_token(&tenant)), None)
            .await?
            .0,
        200
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_resources_are_not_found_and_unchanged() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let a = app.create_tenant().await?;
    let b = app.create_tenant().await?;
    let endpoint = app
        .create_endpoint(&a, "https://a.example.com/hook")
        .await?;
    let ep = endpoint["id"].as_str().expect("id").to_owned();
    let (_, sub) = app
        .json(
            Method::POST,
            &format!("/v1/tenants/{a}/subscriptions"),
            Some(&app.tenant_token(&a)),
            Some(json!({"event_type": "*", "endpoint_id": ep})),
        )
        .await?;
    let sub = sub["id"].as_str().expect("sub").to_owned();
    let b_token = app.tenant_token(&b);

    let attempts: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/v1/tenants/{a}"), None),
        (Method::GET, format!("/v1/tenants/{a}/endpoints"), None),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints"),
            Some(json!({"url": "https://evil.example.com"})),
        ),
        (Method::GET, format!("/v1/tenants/{a}/endpoints/{ep}"), None),
        (
            Method::PATCH,
            format!("/v1/tenants/{a}/endpoints/{ep}"),
            Some(json!({"url": "https://evil.example.com"})),
        ),
        (
            Method::DELETE,
            format!("/v1/tenants/{a}/endpoints/{ep}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints/{ep}:disable"),
            Some(json!({"reason": "x"})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints/{ep}:rotate-secret"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{a}/endpoints/{ep}/secret"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/subscriptions"),
            Some(json!({"event_type": "*", "endpoint_id": ep})),
        ),
        (Method::GET, format!("/v1/tenants/{a}/subscriptions"), None),
        (
            Method::GET,
            format!("/v1/tenants/{a}/subscriptions/{sub}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/tenants/{a}/subscriptions/{sub}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/events:publish"),
            Some(json!({"event_type": "x", "payload": {}})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/events:batch"),
            Some(json!({"events": [{"event_type": "x", "payload": {}}]})),
        ),
        (Method::GET, format!("/v1/tenants/{a}/events"), None),
        (Method::GET, format!("/v1/dlq?tenant_id={a}"), None),
    ];
    for (method, path, body) in attempts {
        let (status, resp) = app
            .json(method.clone(), &path, Some(&b_token), body)
            .await?;
        assert_eq!(
            status, 404,
            "{method} {path} with another tenant's token: {resp}"
        );
    }
    // Using B's own path with A's endpoint id is also "not found".
    let (status, _) = app
        .json(
            Method::GET,
            &format!("/v1/tenants/{b}/endpoints/{ep}"),
            Some(&b_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = app
        .json(
            Method::POST,
            &format!("/v1/tenants/{b}/subscriptions"),
            Some(&b_token),
            Some(json!({"event_type": "*", "endpoint_id": ep})),
        )
        .await?;
    assert_eq!(status, 404, "subscribing B to A's endpoint");

    // Nothing of A's changed.
    let a_token = app.tenant_token(&a);
    let (status, after) = app
        .json(
            Method::GET,
            &format!("/v1/tenants/{a}/endpoints/{ep}"),
            Some(&a_token),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(after["url"], "https://a.example.com/hook");
    assert_eq!(after["enabled"], true);
    let (_, secret) = app
        .json(
            Method::GET,
            &format!("/v1/tenants/{a}/endpoints/{ep}/secret"),
            Some(&a_token),
            None,
        )
        .await?;
    assert_eq!(
        secret["secret"], endpoint["secret"],
        "secret was not rotated"
    );
    assert_eq!(
        app.json(
            Method::GET,
            &format!("/v1/tenants/{a}/subscriptions/{sub}"),
            Some(&a_token),
            None
        )
        .await?
        .0,
        200
    );
    let db = app.env.db().await?;
    let endpoints: i64 = db
        .query_one("SELECT count(*) FROM endpoints", &[])
        .await?
        .get(0);
    assert_eq!(endpoints, 1);

    // The operator reaches both tenants; a tenant token cannot create tenants.
    assert_eq!(
        app.json(
            Method::GET,
            &format!("/v1/tenants/{a}/endpoints/{ep}"),
            Some(&app.operator),
            None
        )
        .await?
        .0,
        200
    );
    let (status, _) = app
        .json(
            Method::POST,
            "/v1/tenants",
            Some(&a_token),
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_eq!(status, 403);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_rate_limit_answers_429_with_retry_after() -> anyhow::Result<()> {
    let app = App::spawn_with(|c| {
        c.gateway.rate_limit_per_sec = 1;
        c.gateway.rate_limit_burst = 3;
    })
    .await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let path = format!("/v1/tenants/{tenant}/endpoints");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = app.call(Method::GET, &path, Some(&token), None).await?;
        if resp.status() == 429 {
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .expect("Retry-After")
                .to_str()?
                .parse()?;
            assert!((1..=2).contains(&retry), "retry-after {retry}");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another tenant has its own bucket.
    let other = app.create_tenant().await?;
    let (status, _) = app
        .json(
            Method::GET,
            &format!("/v1/tenants/{other}/endpoints"),
            Some(&app.tenant_token(&other)),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    app.stop().await
}
