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
    let http = shared::tls::http_client().build()?;
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
    // The caller's own trace (W3C `traceparent`) must continue through the gateway and fan-out.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let plain = http
        .post(&url)
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .json(&json!({"event_type": "order.paid", "payload": {}}))
        .send()
        .await?;
    assert_eq!(plain.status(), 202);
    let paid: serde_json::Value = plain.json().await?;

    // More than can come, so a stray record would be read and counted, not left unread.
    let messages = drain(&reader, 10, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 2, "one delivery per event, one endpoint");
    let got = pairs(&deliveries(&messages));
    let events: HashSet<String> = got.keys().map(|(e, _)| e.to_string()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.contains(ids.iter().next().map(String::as_str).unwrap_or_default()));
    assert!(!events.contains(&direct.event_id.to_string()));
    // The tenant header on every delivery; the caller's trace id on the traced event's.
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| -> Option<String> {
        m.headers()?
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    for (m, record) in messages.iter().zip(deliveries(&messages)) {
        assert_eq!(header(m, "harborhook-tenant-id"), Some(tenant.to_string()));
        let tp = header(m, "traceparent").unwrap_or_default();
        if record.event_id.to_string() == paid["event_id"].as_str().unwrap_or_default() {
            assert_eq!(
                tp.split('-').nth(1),
                Some(TRACE),
                "the caller's trace continues: {tp}"
            );
        } else {
            assert!(tp.starts_with("00-") && !tp.contains(TRACE), "{tp}");
        }
    }
    shutdown.cancel();
    gateway.wait().await?;
    fanout.wait().await?;
    let _ = std::fs::remove_dir_all(&keys_dir);
    world.cleanup().await
}
