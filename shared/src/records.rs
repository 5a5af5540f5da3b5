//! The records on each topic of the design brief, as JSON with a `schema_version`.
//!
//! Each type has a JSON Schema under `schemas/` (`schemas/README.md` maps them); the test
//! `tests/schemas.rs` validates serialised samples against the schemas and checks that the
//! schemas reject what Rust would reject, so the two cannot drift apart.
//!
//! The event envelope is the one record that arrives from outside (direct producers), so its
//! Rust type rejects unknown fields, exactly as its schema does. The internal records tolerate
//! unknown fields, so during a rolling upgrade an older consumer can read a newer producer's
//! record; a change that old readers cannot survive bumps `schema_version`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ErrorClass, EventType};
use crate::ids::{DeliveryId, EndpointId, EventId, TenantId};

/// The version every record type is written with today.
pub const SCHEMA_VERSION: u32 = 1;
/// The most of a response body kept with an attempt or a dead letter.
pub const RESPONSE_EXCERPT_MAX: usize = 1024;
/// Longest idempotency or ordering key accepted.
pub const KEY_MAX: usize = 255;

/// A record's `schema_version` must be one this build understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct SchemaVersion(u32);

impl SchemaVersion {
    pub const CURRENT: Self = Self(SCHEMA_VERSION);
}

impl Default for SchemaVersion {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl TryFrom<u32> for SchemaVersion {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        if v == SCHEMA_VERSION {
            Ok(Self(v))
        } else {
            Err(format!(
                "unsupported schema_version {v}, this build reads {SCHEMA_VERSION}"
            ))
        }
    }
}

impl From<SchemaVersion> for u32 {
    fn from(v: SchemaVersion) -> Self {
        v.0
    }
}

/// On `events`: one published event. Key: the ordering key if given, else the event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEnvelope {
    pub schema_version: SchemaVersion,
    pub event_id: EventId,
    pub tenant_id: TenantId,
    pub event_type: EventType,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
}

impl EventEnvelope {
    /// The Kafka key: events with one ordering key share a partition and so keep their order.
    pub fn kafka_key(&self) -> String {
        self.ordering_key
            .clone()
            .unwrap_or_else(|| self.event_id.to_string())
    }
}

/// What an earlier attempt of a delivery did, carried along so the DLQ record is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptSummary {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub duration_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
}

/// Set on a delivery that an operator replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayInfo {
    /// The replay operation (recorded in PostgreSQL) that re-enqueued this delivery.
    pub replay_id: String,
    pub reason: String,
    pub requested_by: String,
    pub replayed_at: DateTime<Utc>,
}

/// On `deliveries`: one (event, endpoint) pair to send. Key: the endpoint id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub schema_version: SchemaVersion,
    /// Sent as `webhook-id`; the same across retries, crash re-runs and replays.
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub tenant_id: TenantId,
    pub endpoint_id: EndpointId,
    pub event_type: EventType,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub occurred_at: DateTime<Utc>,
    /// The number of the attempt this record asks for, 1 for the first.
    pub attempt: u32,
    /// Earlier attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayInfo>,
}

/// On `deliveries.retry.<tier>`: a delivery waiting for its due time. Key: the endpoint id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub schema_version: SchemaVersion,
    /// Not to be re-enqueued before this instant.
    pub due_at: DateTime<Utc>,
    /// The tier's name (`5s`, `5m`, …), as in the topic name.
    pub tier: String,
    /// The delivery to put back on `deliveries` when due, with `attempt` already advanced.
    pub delivery: DeliveryRecord,
}

/// Why a delivery was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Every attempt of the retry schedule failed.
    Exhausted,
    /// The endpoint answered 410 Gone and was disabled.
    Gone,
    /// The endpoint was deleted or disabled while the delivery was in flight.
    EndpointUnavailable,
}

impl DeadLetterReason {
    /// The serialised name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Gone => "gone",
            Self::EndpointUnavailable => "endpoint_unavailable",
        }
    }
}

/// Where a record was read from: enough to find it again with `kcat -o`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// On `deliveries.dlq`: a delivery that will not be retried, with everything needed to decide
/// whether to replay it. Key: the endpoint id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub schema_version: SchemaVersion,
    pub reason: DeadLetterReason,
    pub dead_lettered_at: DateTime<Utc>,
    /// The delivery, its `attempts` holding every attempt made.
    pub delivery: DeliveryRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    /// The last response body, cut to at most [`RESPONSE_EXCERPT_MAX`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    pub source: SourcePosition,
}

/// On `events.invalid`: a record from `events` that failed validation, kept whole (base64,
/// since it may not even be UTF-8) with the reason. Key: the original key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidEventRecord {
    pub schema_version: SchemaVersion,
    pub reason: String,
    pub received_at: DateTime<Utc>,
    pub source: SourcePosition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub value_base64: String,
}

/// Cuts `body` to at most [`RESPONSE_EXCERPT_MAX`] bytes on a character boundary.
pub fn response_excerpt(body: &str) -> String {
    if body.len() <= RESPONSE_EXCERPT_MAX {
        return body.to_owned();
    }
    let mut end = RESPONSE_EXCERPT_MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_respects_limit_and_char_boundaries() {
        assert_eq!(response_excerpt("short"), "short");
        let long = "é".repeat(RESPONSE_EXCERPT_MAX);
        let cut = response_excerpt(&long);
        assert!(cut.len() <= RESPONSE_EXCERPT_MAX && cut.len() >= RESPONSE_EXCERPT_MAX - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn rejects_unknown_schema_versions() {
        assert!(serde_json::from_str::<SchemaVersion>("1").is_ok());
        let err = serde_json::from_str::<SchemaVersion>("2").expect_err("v2 is unknown");
        assert!(
            err.to_string().contains("unsupported schema_version 2"),
            "{err}"
        );
    }
}
