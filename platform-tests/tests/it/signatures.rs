//! Standard Webhooks `v1a` (ed25519) end to end: an endpoint opts in through the API, the tenant
//! fetches its public key, and the deliveries the running platform sends carry `v1` and `v1a`
//! signatures that verify (the `v1a` ones with the public key alone); a rotation signs with both
//! keys during the overlap; turning it off stops `v1a`; another tenant cannot read the key.

use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Platform, Receiver, verified};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde_json::{Value, json};
use shared::asymmetric::PublicKey;

/// The `v1a` signatures of a received request that `key` verifies, and how many it carries.
fn v1a(key: &PublicKey, h: &HeaderMap, body: &[u8]) -> (usize, usize) {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (id, ts) = (
        get("webhook-id"),
        get("webhook-timestamp").parse().unwrap_or(0),
    );
    let sigs: Vec<&str> = get("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1a,"))
        .collect();
    let good = sigs
        .iter()
        .filter_map(|s| BASE64.decode(s).ok())
        .filter(|s| key.verify(id, ts, body, s))
        .count();
    (good, sigs.len())
}

fn keys(v: &Value) -> anyhow::Result<Vec<PublicKey>> {
    let mut out = vec![v["public_key"].as_str().unwrap_or_default().parse()?];
    for p in v["previous"].as_array().into_iter().flatten() {
        out.push(p["public_key"].as_str().unwrap_or_default().parse()?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1a_signatures_verify_with_the_public_key_and_rotate() -> anyhow::Result<()> {
    let p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    let (a, token_a) = p.tenant().await?;
    let (b, token_b) = p.tenant().await?;
    let (ep, secret) = p
        .endpoint(&a, &token_a, format!("http://{addr}/v1a"), "*")
        .await?;
    let base = format!("/v1/tenants/{a}/endpoints/{ep}");

    // Off by default: no key to fetch, no v1a sent.
    p.publish(&a, &token_a, "order.created", json!({"before": true}), None)
        .await?;
    let got = receiver.wait("v1a", 1, 60).await?;
    let sig = got[0].1["webhook-signature"].to_str()?;
    assert!(
        sig.starts_with("v1,") && !sig.contains("v1a,"),
        "no v1a before opting in: {sig}"
    );
    let (s, _) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "no public key before opting in");
    let (s, e) = p
        .call(
            Method::PATCH,
            &base,
            &token_a,
            Some(json!({"signature_v1a": true})),
            None,
        )
        .await?;
    assert_eq!(
        (s, &e["signature_v1a"]),
        (StatusCode::OK, &json!(true)),
        "{e}"
    );
    let (s, k) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{k}");
    let first = keys(&k)?;
    assert_eq!(first.len(), 1, "one key before a rotation: {k}");
    // Another tenant reads and changes nothing of it: not through A's path (its token is for
    // B), and not through its own path with A's endpoint id (404, as for every id of A's).
    let (s, _) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_b,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let foreign = format!("/v1/tenants/{b}/endpoints/{ep}");
    let (s, _) = p
        .call(
            Method::GET,
            &format!("{foreign}/public-key"),
            &token_b,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "A's key under B's tenant");
    let (s, _) = p
        .call(
            Method::PATCH,
            &foreign,
            &token_b,
            Some(json!({"signature_v1a": false})),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "A's endpoint under B's tenant");

    // Deliveries carry v1 (the secret verifies) and v1a (the public key verifies). The
    // delivery-consumer learns of the change through the config notification: publish until a
    // request shows it, bounded.
    let until = |want: fn(usize, usize) -> bool, key: PublicKey| {
        let (p, receiver, token_a, a) = (&p, &receiver, &token_a, &a);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            loop {
                let seen = receiver.requests("v1a").len();
                p.publish(a, token_a, "order.created", json!({"n": n}), None)
                    .await?;
                n += 1;
                let got = receiver.wait("v1a", seen + 1, 30).await?;
                let (_, h, body) = got.last().expect("a request").clone();
                let (good, total) = v1a(&key, &h, &body);
                if want(good, total) {
                    return anyhow::Ok((h, body));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no delivery as wanted: {good} of {total} v1a signatures verify"
                );
            }
        }
    };
    let (h, body) = until(|good, total| good == 1 && total == 1, first[0]).await?;
    assert!(verified(&secret, &h, &body), "v1 still verifies beside v1a");
    let sig = h["webhook-signature"].to_str()?;
    assert!(
        sig.starts_with("v1,") && sig.contains(" v1a,"),
        "v1 first, then v1a: {sig}"
    );
    // A forged body fails v1a.
    assert_eq!(v1a(&first[0], &h, b"{\"n\":-1}").0, 0);

    // Rotation: a new key signs beside the old one, and the public-key read lists both.
    let (s, r) = p
        .call(
            Method::POST,
            &format!("{base}:rotate-secret"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, k) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    let rotated = keys(&k)?;
    assert_eq!(rotated.len(), 2, "current and previous: {k}");
    assert_eq!(rotated[1], first[0], "the previous key is the first one");
    assert_ne!(rotated[0], first[0], "a new key");
    let (h, body) = until(|good, total| good == 1 && total == 2, rotated[0]).await?;
    assert_eq!(
        v1a(&first[0], &h, &body),
        (1, 2),
        "the old key verifies too"
    );

    // A current secret left without a key (a previous release's gateway rotated it during a
    // rollout): the key read repairs it rather than show the previous key as the current one,
    // and deliveries are signed with the repaired key.
    p.world
        .db
        .execute(
            "UPDATE endpoint_secrets SET signing_key = NULL WHERE endpoint_id = $1 AND expires_at IS NULL",
            &[&ep.parse::<shared::ids::EndpointId>()?],
        )
        .await?;
    let (s, k) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{k}");
    let repaired = keys(&k)?;
    assert_eq!(repaired.len(), 2, "{k}");
    assert_eq!(repaired[1], first[0], "the previous key stays previous");
    assert!(!rotated.contains(&repaired[0]), "a new current key");
    let (h, body) = until(|good, total| good == 1 && total == 2, repaired[0]).await?;
    assert_eq!(v1a(&first[0], &h, &body), (1, 2));

    // Off again: no v1a, and no key to fetch; the v1 signature goes on.
    let (s, _) = p
        .call(
            Method::PATCH,
            &base,
            &token_a,
            Some(json!({"signature_v1a": false})),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK);
    let (h, body) = until(|_, total| total == 0, rotated[0]).await?;
    let new_secret = r["secret"].as_str().unwrap_or_default().parse()?;
    assert!(
        verified(&new_secret, &h, &body),
        "v1 with the rotated secret"
    );
    let (s, _) = p
        .call(
            Method::GET,
            &format!("{base}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Created with v1a on, on the original scheme: the key exists from the start, and the
    // deliveries carry `v1a` in the standard headers beside X-HarborHook-Signature.
    let (s, e) = p
        .call(
            Method::POST,
            &format!("/v1/tenants/{a}/endpoints"),
            &token_a,
            Some(
                json!({"url": format!("http://{addr}/legacy"), "signature_v1a": true,
                        "signature_scheme": "harborhook_legacy"}),
            ),
            None,
        )
        .await?;
    assert_eq!(
        (s, &e["signature_v1a"]),
        (StatusCode::CREATED, &json!(true)),
        "{e}"
    );
    let legacy = e["id"].as_str().unwrap_or_default().to_owned();
    let (s, k) = p
        .call(
            Method::GET,
            &format!("/v1/tenants/{a}/endpoints/{legacy}/public-key"),
            &token_a,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{k}");
    let legacy_key = keys(&k)?;
    assert_eq!(legacy_key.len(), 1, "{k}");
    let (s, sub) = p
        .call(
            Method::POST,
            &format!("/v1/tenants/{a}/subscriptions"),
            &token_a,
            Some(json!({"endpoint_id": legacy, "event_type": "*"})),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{sub}");
    p.publish(&a, &token_a, "order.created", json!({"legacy": 1}), None)
        .await?;
    let got = receiver.wait("legacy", 1, 60).await?;
    let (_, h, body) = &got[0];
    let legacy_secret: shared::domain::SigningSecret =
        e["secret"].as_str().unwrap_or_default().parse()?;
    let ts = h["x-harborhook-timestamp"].to_str()?.parse()?;
    assert_eq!(
        h["x-harborhook-signature"].to_str()?,
        shared::signing::legacy_signature(&[&legacy_secret], ts, body),
        "the original scheme's signature"
    );
    assert_eq!(v1a(&legacy_key[0], h, body), (1, 1), "and v1a beside it");
    p.world.cleanup().await
}
