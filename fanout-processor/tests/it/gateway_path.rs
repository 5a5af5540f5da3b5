//! The gateway and fan-out together: an event published through the API reaches `deliveries`,
//! and the same idempotency key published twice (and once more straight to Kafka with another
//! event id) fans out once.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{World, deliveries, drain, pairs};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use serde_json::json;
use shared::jwt::{Claims, DevKeys};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publishes_fan_out_once_per_idempotency_key() -> anyhow::Result<()> {
    let mut world = World::new().await?;
    let keys_dir = std::env::temp_dir().join(format!("{}-keys", world.env.schema));
    let keys = DevKeys::load_or_create(&keys_dir)?;
    world.env.config.gateway.auth.jwks_file =
        Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
    let tenant = world.tenant().await?;
    let ep = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &ep, "order.*").await?;

    let shutdown = CancellationToken::new();
    let gateway = ingest_gateway::start(world.env.config.clone(), shutdown.clone()).await?;
    let fanout = fanout_processor::start(world.env.config.clone(), shutdown.clone()).await?;
    let reader = world.reader(world.env.catalog().deliveries())?;
    let auth = &world.env.config.gateway.auth;
    let token = keys.issue(&Claims::new(
        &auth.issuer,
        &auth.audience,
        "test",
        Some(tenant),
        false,
        Duration::from_secs(600),
    ))?;
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/v1/tenants/{tenant}/events:publish",
        gateway.local_addr
    );
    let body = json!({"event_type": "order.created", "payload": {"order": 7}, "idempotency_key": "order-7"});
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let resp = http
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        assert_eq!(resp.status(), 202);
        let v: serde_json::Value = resp.json().await?;
        ids.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids.len(), 1);
    // A direct producer re-sends the same key under another event id: a duplicate.
    let direct = world.envelope(&tenant, "order.created", Some("order-7"));
    world.publish(&direct).await?;
    let plain = http
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"event_type": "order.paid", "payload": {}}))
        .send()
        .await?;
    assert_eq!(plain.status(), 202);

    let messages = drain(&reader, 3, Duration::from_secs(5)).await;
    let got = pairs(&deliveries(&messages));
    let events: HashSet<String> = got.keys().map(|(e, _)| e.to_string()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.contains(ids.iter().next().map(String::as_str).unwrap_or_default()));
    assert!(!events.contains(&direct.event_id.to_string()));
    // The gateway's trace context rides through fan-out into the delivery record's headers.
    for m in &messages {
        let names: Vec<&str> = m
            .headers()
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default();
        assert!(names.contains(&"harborhook-tenant-id"), "{names:?}");
    }
    shutdown.cancel();
    gateway.wait().await?;
    fanout.wait().await?;
    let _ = std::fs::remove_dir_all(&keys_dir);
    world.cleanup().await
}
