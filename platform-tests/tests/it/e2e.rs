//! The platform end to end: the four services as separate processes (the binaries the
//! workspace builds) against the real PostgreSQL and broker, driven through the HTTP API, a
//! direct producer and harborctl, with receivers on loopback.

use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Behaviour, Platform, Receiver, verified};
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_delivers_end_to_end() -> anyhow::Result<()> {
    let p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    let url = |path: &str| format!("http://{addr}/{path}");
    let (a, token_a) = p.tenant().await?;
    let (b, token_b) = p.tenant().await?;

    // Happy path with fan-out: `*` gets every event, `order.*` only orders; all signed.
    let (_, all_secret) = p.endpoint(&a, &token_a, url("all"), "*").await?;
    let (_, _) = p.endpoint(&a, &token_a, url("orders"), "order.*").await?;
    for n in 0..3 {
        p.publish(&a, &token_a, "order.created", json!({"n": n}), None)
            .await?;
    }
    let invoice = p
        .publish(&a, &token_a, "invoice.paid", json!({"n": 9}), None)
        .await?;
    let got = receiver.wait("all", 4, 60).await?;
    assert!(
        got.iter()
            .all(|(_, h, body)| verified(&all_secret, h, body)),
        "signed"
    );
    receiver.wait("orders", 3, 30).await?;

    // Idempotent publish: one event id, one delivery.
    receiver.set("idem", Behaviour::default());
    let (_, _) = p.endpoint(&b, &token_b, url("idem"), "*").await?;
    let first = p
        .publish(
            &b,
            &token_b,
            "order.created",
            json!({"k": 1}),
            Some("key-1"),
        )
        .await?;
    let second = p
        .publish(
            &b,
            &token_b,
            "order.created",
            json!({"k": 1}),
            Some("key-1"),
        )
        .await?;
    assert_eq!(first, second, "same event id");

    // Tenant isolation: B can neither read nor publish as A (404, ids do not leak).
    let (s, _) = p
        .call(
            Method::GET,
            &format!("/v1/events/{invoice}"),
            &token_b,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = p
        .call(
            Method::POST,
            &format!("/v1/tenants/{a}/events:publish"),
            &token_b,
            Some(json!({"event_type": "x.y", "payload": {}})),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Retries then success: two 500s, then 200, one webhook-id throughout.
    receiver.set(
        "flaky",
        Behaviour {
            fail: 2,
            delay: Duration::ZERO,
        },
    );
    let (c, token_c) = p.tenant().await?;
    p.endpoint(&c, &token_c, url("flaky"), "*").await?;
    let flaky_event = p
        .publish(&c, &token_c, "order.created", json!({"f": 1}), None)
        .await?;
    let got = receiver.wait("flaky", 3, 60).await?;
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|(_, h, _)| h["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 1);

    // A slow endpoint beside a healthy one.
    receiver.set(
        "slow",
        Behaviour {
            fail: 0,
            delay: Duration::from_secs(2),
        },
    );
    let (d, token_d) = p.tenant().await?;
    p.endpoint(&d, &token_d, url("slow"), "*").await?;
    p.endpoint(&d, &token_d, url("healthy"), "*").await?;
    let mut sent = Vec::new();
    for n in 0..15 {
        sent.push(Instant::now());
        p.publish(&d, &token_d, "order.created", json!({"n": n}), None)
            .await?;
    }
    let healthy = receiver.wait("healthy", 15, 30).await?;
    // Paired by payload, not by arrival index: deliveries need not arrive in publish order.
    let mut waits = Vec::new();
    for (at, _, body) in &healthy {
        let n: serde_json::Value = serde_json::from_slice(body)?;
        let n = n["n"].as_u64().and_then(|n| usize::try_from(n).ok());
        let published = n
            .and_then(|n| sent.get(n))
            .ok_or_else(|| anyhow::anyhow!("unexpected body {}", String::from_utf8_lossy(body)))?;
        waits.push((n, at.saturating_duration_since(*published)));
    }
    let mut seen: Vec<_> = waits.iter().map(|(n, _)| *n).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        15,
        "each of the 15 events reached the healthy endpoint"
    );
    let worst = waits.iter().map(|(_, w)| *w).max().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(1500),
        "healthy endpoint waited {worst:?} beside a slow one"
    );

    // Direct producer: an envelope written straight to `events` is delivered.
    let envelope = json!({
        "schema_version": 1, "event_id": shared::ids::EventId::new(), "tenant_id": c,
        "event_type": "order.shipped", "payload": {"direct": true}, "occurred_at": chrono::Utc::now(),
    });
    let producer = shared::kafka::producer(&p.world.env.config.kafka, "e2e")?;
    let topic = p.world.env.catalog().events().to_owned();
    let value = serde_json::to_vec(&envelope)?;
    let key = envelope["event_id"].as_str().unwrap_or_default().to_owned();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let got = receiver.wait("flaky", 4, 30).await?;
    assert!(
        got.iter()
            .any(|(_, _, body)| body.as_ref() == br#"{"direct":true}"#)
    );

    // The idempotent pair was delivered once (checked last: it had all this time to repeat).
    assert_eq!(receiver.requests("idem").len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.delivery_status(&token_c, &flaky_event).await? != ["delivered"] {
        anyhow::ensure!(
            Instant::now() < deadline,
            "flaky delivery not recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.world.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_are_replayed_from_the_dlq_to_success() -> anyhow::Result<()> {
    let p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    receiver.set(
        "down",
        Behaviour {
            fail: usize::MAX,
            delay: Duration::ZERO,
        },
    );
    let (t, token) = p.tenant().await?;
    let (endpoint, _) = p
        .endpoint(&t, &token, format!("http://{addr}/down"), "*")
        .await?;
    let event = p
        .publish(&t, &token, "order.created", json!({"n": 1}), None)
        .await?;
    // 1 + 2 retries on the 1 s / 2 s test schedule, then the DLQ.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.delivery_status(&token, &event).await? != ["dead_lettered"] {
        anyhow::ensure!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(receiver.requests("down").len(), 3);
    let listed = p.world.json(&["dlq", "list", "--endpoint", &endpoint], &[]);
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    receiver.set("down", Behaviour::default()); // the receiver is fixed
    let replay = p.world.json(
        &[
            "dlq",
            "replay",
            "--endpoint",
            &endpoint,
            "--reason",
            "receiver fixed",
        ],
        &[],
    );
    assert_eq!(replay["replayed"], 1);
    let got = receiver.wait("down", 4, 30).await?;
    assert_eq!(
        got[3].1["webhook-id"], got[0].1["webhook-id"],
        "the replay keeps the webhook-id"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.delivery_status(&token, &event).await? != ["delivered"] {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replayed delivery not recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.world.cleanup().await
}
