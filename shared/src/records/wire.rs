//! Records as they go on the wire: the key, the JSON value and the headers docs/kafka.md
//! promises (`traceparent`, `tracestate`, `harborhook-tenant-id`), built in one place for every
//! topic, so no producer can send a record keyed or labelled differently from the others.
//!
//! The tenant header is always the record's own tenant, never copied from an incoming record:
//! a direct producer's headers are input, and the header is what consumers filter and account
//! by. The trace context is the caller's (the request's span, or the one carried by the record
//! being forwarded); where there is none a new trace starts (`kafka::headers::or_new_trace`).

use opentelemetry::Context;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use super::{DeadLetterRecord, DeliveryRecord, EventEnvelope, RetryRecord};
use crate::ids::TenantId;
use crate::kafka::trace_headers;

/// One record ready to produce (to any topic of its kind, any number of times).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

impl Outgoing {
    fn new(
        key: String,
        value: &impl Serialize,
        tenant: &TenantId,
        cx: &Context,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            key,
            value: serde_json::to_vec(value)?,
            headers: trace_headers(cx, tenant),
        })
    }

    /// For `events`: keyed by the ordering key, else the event id.
    pub fn event(envelope: &EventEnvelope, cx: &Context) -> Result<Self, serde_json::Error> {
        Self::new(envelope.kafka_key(), envelope, &envelope.tenant_id, cx)
    }

    /// For `deliveries`: keyed by the endpoint, so one endpoint's deliveries keep their order.
    pub fn delivery(record: &DeliveryRecord, cx: &Context) -> Result<Self, serde_json::Error> {
        Self::new(
            record.endpoint_id.to_string(),
            record,
            &record.tenant_id,
            cx,
        )
    }

    /// For a retry tier: keyed by the endpoint, as on `deliveries`.
    pub fn retry(record: &RetryRecord, cx: &Context) -> Result<Self, serde_json::Error> {
        let d = &record.delivery;
        Self::new(d.endpoint_id.to_string(), record, &d.tenant_id, cx)
    }

    /// For `deliveries.dlq`: keyed by the endpoint.
    pub fn dead_letter(record: &DeadLetterRecord, cx: &Context) -> Result<Self, serde_json::Error> {
        let d = &record.delivery;
        Self::new(d.endpoint_id.to_string(), record, &d.tenant_id, cx)
    }

    /// The record to hand to the producer for `topic`.
    pub fn to<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, str, Vec<u8>> {
        FutureRecord::to(topic)
            .key(self.key.as_str())
            .payload(&self.value)
            .headers(self.headers.clone())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;
    use crate::kafka::{TENANT_HEADER, TRACEPARENT_HEADER};

    fn header<'a>(h: &'a OwnedHeaders, key: &str) -> Option<&'a str> {
        h.iter()
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    #[test]
    fn a_record_without_a_trace_starts_one_and_names_its_tenant() -> Result<(), serde_json::Error> {
        let tenant = TenantId::new();
        let envelope = EventEnvelope {
            schema_version: super::super::SchemaVersion::CURRENT,
            event_id: crate::ids::EventId::new(),
            tenant_id: tenant,
            event_type: "order.created".parse().map_err(serde::de::Error::custom)?,
            payload: crate::payload::Payload::empty(),
            occurred_at: chrono::Utc::now(),
            idempotency_key: None,
            ordering_key: None,
        };
        let a = Outgoing::event(&envelope, &Context::new())?;
        let b = Outgoing::event(&envelope, &Context::new())?;
        assert_eq!(
            header(&a.headers, TENANT_HEADER),
            Some(tenant.to_string().as_str())
        );
        let tp = header(&a.headers, TRACEPARENT_HEADER).unwrap_or_default();
        // 00-<32 hex trace>-<16 hex span>-<flags>
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with("00-") && !tp.contains("-00000000000000000000000000000000-"));
        // Each record without a trace gets its own.
        assert_ne!(Some(tp), header(&b.headers, TRACEPARENT_HEADER));
        assert_eq!(a.key, envelope.kafka_key());
        Ok(())
    }
}
