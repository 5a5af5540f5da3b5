//! Test harness: a schema with tenants, endpoints and subscriptions written as the API writes
//! them, a direct producer for `events`, and a reader of `deliveries` / `events.invalid`.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, SubscriptionId, TenantId};
use shared::records::{DeliveryRecord, EventEnvelope, SchemaVersion};
use shared::testing::TestEnv;

pub struct World {
    pub env: TestEnv,
    pub db: tokio_postgres::Client,
    pub producer: FutureProducer,
}

impl World {
    /// A fresh schema (migrated) and topic catalog.
    pub async fn new() -> anyhow::Result<Self> {
        let env = TestEnv::new();
        let pool = shared::db::pool(&env.config.database)?;
        shared::db::migrate(&pool, Some(&env.schema)).await?;
        let admin = shared::kafka::admin(&env.config.kafka, "test")?;
        shared::kafka::ensure_topics(&admin, &env.catalog(), Duration::from_secs(30)).await?;
        let db = env.db().await?;
        let producer = shared::kafka::producer(&env.config.kafka, "test-producer")?;
        Ok(Self { env, db, producer })
    }

    pub async fn tenant(&self) -> anyhow::Result<TenantId> {
        let id = TenantId::new();
        self.db
            .execute("INSERT INTO tenants (id, name) VALUES ($1, 'acme')", &[&id])
            .await?;
        Ok(id)
    }

    pub async fn endpoint(&self, tenant: &TenantId, enabled: bool) -> anyhow::Result<EndpointId> {
        let id = EndpointId::new();
        let reason: Option<&str> = if enabled { None } else { Some("test") };
        self.db
            .execute(
                "INSERT INTO endpoints (id, tenant_id, url, enabled, disabled_reason) VALUES ($1, $2, 'https://e.example.com', $3, $4)",
                &[&id, tenant, &enabled, &reason],
            )
            .await?;
        Ok(id)
    }

    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        endpoint: &EndpointId,
        pattern: &str,
    ) -> anyhow::Result<()> {
        self.db
            .execute(
                "INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern) VALUES ($1, $2, $3, $4)",
                &[&SubscriptionId::new(), tenant, endpoint, &pattern],
            )
            .await?;
        Ok(())
    }

    pub fn envelope(
        &self,
        tenant: &TenantId,
        event_type: &str,
        key: Option<&str>,
    ) -> EventEnvelope {
        EventEnvelope {
            schema_version: SchemaVersion::CURRENT,
            event_id: EventId::new(),
            tenant_id: *tenant,
            event_type: event_type.parse().expect("event type"),
            payload: shared::payload::Payload::from_value(&json!({"n": 1})),
            occurred_at: Utc::now(),
            idempotency_key: key.map(str::to_owned),
            ordering_key: None,
        }
    }

    /// Writes an envelope to `events` as a direct producer would.
    pub async fn publish(&self, envelope: &EventEnvelope) -> anyhow::Result<()> {
        let value = serde_json::to_vec(envelope)?;
        self.publish_raw(Some(envelope.kafka_key().as_bytes()), &value)
            .await
    }

    pub async fn publish_raw(&self, key: Option<&[u8]>, value: &[u8]) -> anyhow::Result<()> {
        let catalog = self.env.catalog();
        let mut record = FutureRecord::to(catalog.events()).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    pub fn reader(&self, topic: &str) -> anyhow::Result<StreamConsumer> {
        self.env.reader(topic)
    }

    pub async fn cleanup(self) -> anyhow::Result<()> {
        self.env.cleanup().await
    }
}

/// Reads until `want` records arrived or `quiet` passed without one.
pub async fn drain(consumer: &StreamConsumer, want: usize, quiet: Duration) -> Vec<OwnedMessage> {
    shared::testing::drain(consumer, want, quiet)
        .await
        .expect("consume")
}

pub fn deliveries(messages: &[OwnedMessage]) -> Vec<DeliveryRecord> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().expect("payload")).expect("delivery record"))
        .collect()
}

/// (event, endpoint) → how many delivery records carried it; checks every id is the derived one.
pub fn pairs(records: &[DeliveryRecord]) -> HashMap<(EventId, EndpointId), usize> {
    let mut out = HashMap::new();
    for r in records {
        assert_eq!(
            r.delivery_id,
            DeliveryId::derive(&r.event_id, &r.endpoint_id),
            "delivery id is derived"
        );
        *out.entry((r.event_id, r.endpoint_id)).or_insert(0) += 1;
    }
    out
}
