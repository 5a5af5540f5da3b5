//! The records on each topic of the design brief, as JSON with a `schema_version`.
//!
//! Each type has a JSON Schema under `schemas/` (`schemas/README.md` maps them); the test
//! `tests/it/schemas.rs` validates serialised samples against the schemas and checks that the
//! schemas reject what Rust would reject, so the two cannot drift apart.
//!
//! The event envelope is the one record that arrives from outside (direct producers), so its
//! Rust type rejects unknown fields, exactly as its schema does. The internal records tolerate
//! unknown fields, so during a rolling upgrade an older consumer can read a newer producer's
//! record; a change that old readers cannot survive bumps `schema_version`.
//!
//! Every record a published event can become is bounded in size (limits.rs): the payload is
//! carried verbatim and everything around it has a maximum, so the gateway and the fan-out
//! refuse at the door a payload that would not fit the producer's `message.max.bytes` once it
//! is a retry or dead-letter record, instead of accepting it and failing to forward it later.

mod limits;
mod wire;

pub use limits::{MIN_PAYLOAD_BYTES, RecordLimits, TooLarge};
pub use wire::Outgoing;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ErrorClass, EventType};
use crate::ids::{DeliveryId, EndpointId, EventId, TenantId};
use crate::payload::Payload;

/// The version every record type is written with today.
pub const SCHEMA_VERSION: u32 = 1;
/// The most of a response body kept with an attempt or a dead letter.
pub const RESPONSE_EXCERPT_MAX: usize = 1024;
/// Longest idempotency or ordering key accepted, in characters.
pub const KEY_MAX: usize = 255;
/// Longest replay reason, in characters.
pub const REASON_MAX: usize = 1000;
/// Longest `requested_by` of a replay (the token's subject), in characters.
pub const REQUESTED_BY_MAX: usize = 255;
/// Longest free-text `error` kept with a dead letter, in bytes.
pub const ERROR_MAX: usize = 1024;

/// Checks an idempotency or ordering key: 1 to [`KEY_MAX`] characters, no control characters (it is
/// stored in PostgreSQL and shown in logs and the API).
pub fn check_key(key: &str) -> Result<(), crate::text::TextError> {
    if key.is_empty() {
        return Err(crate::text::TextError::Empty);
    }
    crate::text::check_optional(key, KEY_MAX, crate::text::Lines::Single)
}

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
    pub payload: Payload,
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

    /// What the envelope's type cannot say about a direct producer's record: the payload,
    /// the keys and the time are within what the pipeline can store and deliver. The reason
    /// goes to `events.invalid`.
    pub fn check(&self, limits: &RecordLimits) -> Result<(), String> {
        self.payload.check().map_err(|e| format!("payload: {e}"))?;
        limits
            .check_payload(&self.payload)
            .map_err(|e| format!("payload: {e}"))?;
        for (field, key) in [
            ("idempotency_key", &self.idempotency_key),
            ("ordering_key", &self.ordering_key),
        ] {
            if let Some(key) = key {
                check_key(key).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        // PostgreSQL's timestamptz ends in 294276 AD; chrono goes further.
        let year = chrono::Datelike::year(&self.occurred_at);
        if !(1..=9999).contains(&year) {
            return Err("occurred_at: the year must be between 1 and 9999".into());
        }
        Ok(())
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
    pub payload: Payload,
    pub occurred_at: DateTime<Utc>,
    /// The number of the attempt this record asks for, 1 for the first.
    pub attempt: u32,
    /// Earlier attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayInfo>,
    /// When the delivery consumer first deferred this delivery without an attempt (its lane
    /// full, paused or open). Stamped by the platform, never by a producer: the retry horizon
    /// counts from here, so a producer's `occurred_at` can neither dead-letter a delivery at
    /// its first deferral nor keep one circling for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_since: Option<DateTime<Utc>>,
}

/// The event a delivery carries: what every producer of `deliveries` starts from.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub event_id: EventId,
    pub tenant_id: TenantId,
    pub event_type: &'a EventType,
    pub payload: &'a Payload,
    pub occurred_at: DateTime<Utc>,
}

impl<'a> From<&'a EventEnvelope> for EventRef<'a> {
    fn from(e: &'a EventEnvelope) -> Self {
        Self {
            event_id: e.event_id,
            tenant_id: e.tenant_id,
            event_type: &e.event_type,
            payload: &e.payload,
            occurred_at: e.occurred_at,
        }
    }
}

impl DeliveryRecord {
    /// The first attempt of `event` at `endpoint` (a fan-out, or a replay when `replay` is
    /// set): the id is derived, so every producer of the same pair sends the same `webhook-id`.
    pub fn first_attempt(
        event: EventRef<'_>,
        endpoint: EndpointId,
        replay: Option<ReplayInfo>,
    ) -> Self {
        Self {
            schema_version: SchemaVersion::CURRENT,
            delivery_id: DeliveryId::derive(&event.event_id, &endpoint),
            event_id: event.event_id,
            tenant_id: event.tenant_id,
            endpoint_id: endpoint,
            event_type: event.event_type.clone(),
            payload: event.payload.clone(),
            occurred_at: event.occurred_at,
            attempt: 1,
            attempts: Vec::new(),
            replay,
            deferred_since: None,
        }
    }
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
    /// The platform could not forward it (a record over the broker's size limit, an internal
    /// error); `error` says what. Replayable once the cause is fixed.
    Undeliverable,
}

impl DeadLetterReason {
    pub const ALL: [Self; 4] = [
        Self::Exhausted,
        Self::Gone,
        Self::EndpointUnavailable,
        Self::Undeliverable,
    ];

    /// The serialised name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Gone => "gone",
            Self::EndpointUnavailable => "endpoint_unavailable",
            Self::Undeliverable => "undeliverable",
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
    /// What went wrong, for `undeliverable` (at most [`ERROR_MAX`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub source: SourcePosition,
}

/// On `events.invalid`: a record from `events` that failed validation, kept whole (base64,
/// since it may not even be UTF-8) with the reason. Key: the original key (its first KiB). A value too large
/// to fit base64-encoded is cut (`value_truncated`); `value_bytes` is its whole size and
/// `source` finds the original on `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidEventRecord {
    pub schema_version: SchemaVersion,
    pub reason: String,
    pub received_at: DateTime<Utc>,
    pub source: SourcePosition,
    /// The key, or its first KiB when longer (`key_truncated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_truncated: bool,
    pub value_base64: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_truncated: bool,
    #[serde(default)]
    pub value_bytes: usize,
}

/// A receiver's response body as kept with an attempt or a dead letter: storable text (NUL and
/// invalid UTF-8 replaced) of at most [`RESPONSE_EXCERPT_MAX`] bytes.
pub fn response_excerpt(body: &[u8]) -> String {
    crate::text::from_receiver(body, RESPONSE_EXCERPT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_respects_limit_and_char_boundaries() {
        assert_eq!(response_excerpt(b"short"), "short");
        let long = "é".repeat(RESPONSE_EXCERPT_MAX);
        let cut = response_excerpt(long.as_bytes());
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
