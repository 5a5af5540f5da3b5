//! How large a payload the pipeline can carry.
//!
//! A published event becomes several records on its way: the envelope on `events`, a delivery
//! per endpoint, a retry record per failed attempt (carrying every earlier attempt), and
//! possibly a dead letter (carrying all attempts, the last response body and the error). Each
//! embeds the payload verbatim, so each is the payload plus an envelope whose every field has
//! a maximum. The largest envelope is computed here once, by serialising the worst case of
//! each record type (every string at its longest and escaped six bytes per byte, every number
//! at its widest, one attempt summary per step of the retry schedule), and added to the
//! budgets for headers, the key and librdkafka's own framing. A payload within
//! [`RecordLimits::max_payload_bytes`] therefore fits `kafka.message_max_bytes` as whatever
//! record it becomes; a larger one is refused at the door (413 at the API, `events.invalid`
//! for direct producers).

use chrono::{DateTime, Utc};

use crate::domain::{ErrorClass, EventType};
use crate::ids::{DeliveryId, EndpointId, EventId, TenantId};
use crate::payload::Payload;
use crate::records::{
    AttemptSummary, DeadLetterReason, DeadLetterRecord, DeliveryRecord, ERROR_MAX, REASON_MAX,
    REQUESTED_BY_MAX, RESPONSE_EXCERPT_MAX, ReplayInfo, RetryRecord, SchemaVersion, SourcePosition,
};

/// Record headers (`traceparent`, `tracestate` of at most 512 bytes, the tenant id), with room.
pub const HEADERS_MAX: usize = 1024;
/// The record key (an endpoint id, an ordering key of at most 255 characters), with room.
pub const KEY_BUDGET: usize = 1100;
/// librdkafka counts its per-message framing against `message.max.bytes`.
pub const FRAMING_BUDGET: usize = 512;
/// The smallest payload limit a configuration may leave.
pub const MIN_PAYLOAD_BYTES: usize = 64 * 1024;

/// A payload larger than the pipeline can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{size} bytes; at most {max} bytes can be delivered (kafka.message_max_bytes less the record envelope)"
)]
pub struct TooLarge {
    pub size: usize,
    pub max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// The producer's `message.max.bytes`.
    pub message_max_bytes: usize,
    /// The most bytes any record adds around its payload, headers and key included.
    pub envelope_bytes: usize,
}

impl RecordLimits {
    /// The limits for a producer limit and a retry schedule of `schedule_len` delays.
    pub fn new(message_max_bytes: usize, schedule_len: usize) -> Self {
        Self {
            message_max_bytes,
            envelope_bytes: worst_envelope(schedule_len)
                + HEADERS_MAX
                + KEY_BUDGET
                + FRAMING_BUDGET,
        }
    }

    /// The largest payload every record of an event can carry.
    pub fn max_payload_bytes(&self) -> usize {
        self.message_max_bytes.saturating_sub(self.envelope_bytes)
    }

    pub fn check_payload(&self, payload: &Payload) -> Result<(), TooLarge> {
        let max = self.max_payload_bytes();
        if payload.len() > max {
            Err(TooLarge {
                size: payload.len(),
                max,
            })
        } else {
            Ok(())
        }
    }
}

/// Text of `n` characters, each of which JSON escapes to six bytes (`\u0001`): the most a
/// character can take in a record (a non-ASCII character is carried as at most 4 bytes).
fn escaped(n: usize) -> String {
    "\u{1}".repeat(n)
}

fn longest_class() -> ErrorClass {
    ErrorClass::ALL
        .into_iter()
        .max_by_key(|c| c.as_str().len())
        .unwrap_or(ErrorClass::RateLimited)
}

fn longest_reason() -> DeadLetterReason {
    DeadLetterReason::ALL
        .into_iter()
        .max_by_key(|r| r.as_str().len())
        .unwrap_or(DeadLetterReason::EndpointUnavailable)
}

/// The size of the largest record an event with payload `{}` can become, less the `{}`.
fn worst_envelope(schedule_len: usize) -> usize {
    let latest: DateTime<Utc> = DateTime::<Utc>::MAX_UTC;
    let event_type: EventType = "x"
        .repeat(255)
        .parse()
        .unwrap_or_else(|_| unreachable!("255 letters are an event type"));
    let summary = AttemptSummary {
        attempt: u32::MAX,
        at: latest,
        duration_ms: u32::MAX,
        status_code: Some(u16::MAX),
        error_class: Some(longest_class()),
    };
    let delivery = DeliveryRecord {
        schema_version: SchemaVersion::CURRENT,
        delivery_id: DeliveryId::from_uuid(uuid::Uuid::max()),
        event_id: EventId::from_uuid(uuid::Uuid::max()),
        tenant_id: TenantId::from_uuid(uuid::Uuid::max()),
        endpoint_id: EndpointId::from_uuid(uuid::Uuid::max()),
        event_type,
        payload: Payload::empty(),
        occurred_at: latest,
        attempt: u32::MAX,
        // One summary per attempt: the first plus one per retry of the schedule.
        attempts: vec![summary; schedule_len + 1],
        replay: Some(ReplayInfo {
            replay_id: uuid::Uuid::max().hyphenated().to_string(),
            reason: escaped(REASON_MAX),
            requested_by: escaped(REQUESTED_BY_MAX),
            replayed_at: latest,
        }),
        deferred_since: Some(latest),
    };
    let source = SourcePosition {
        // Kafka's longest topic name.
        topic: "x".repeat(249),
        partition: i32::MAX,
        offset: i64::MAX,
    };
    let dead = DeadLetterRecord {
        schema_version: SchemaVersion::CURRENT,
        reason: longest_reason(),
        dead_lettered_at: latest,
        delivery: delivery.clone(),
        last_status: Some(u16::MAX),
        error_class: Some(longest_class()),
        response_body: Some(escaped(RESPONSE_EXCERPT_MAX)),
        error: Some(escaped(ERROR_MAX)),
        source,
    };
    let retry = RetryRecord {
        schema_version: SchemaVersion::CURRENT,
        due_at: latest,
        tier: "x".repeat(64),
        delivery,
    };
    let size = |v: serde_json::Result<Vec<u8>>| v.map_or(usize::MAX / 4, |b| b.len());
    size(serde_json::to_vec(&dead))
        .max(size(serde_json::to_vec(&retry)))
        .saturating_sub(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_bounded_and_grows_with_the_schedule() {
        let short = RecordLimits::new(1_000_000, 1);
        let long = RecordLimits::new(1_000_000, 20);
        assert!(short.envelope_bytes < long.envelope_bytes);
        // Reason and requested_by escaped (6x), excerpt and error escaped (6x), 2 summaries.
        assert!(short.envelope_bytes > 6 * (REASON_MAX + REQUESTED_BY_MAX + 2 * 1024));
        assert!(short.envelope_bytes < 40_000, "{}", short.envelope_bytes);
        assert_eq!(short.max_payload_bytes(), 1_000_000 - short.envelope_bytes);
    }

    #[test]
    fn payloads_over_the_limit_are_refused() {
        let limits = RecordLimits::new(100_000, 6);
        let max = limits.max_payload_bytes();
        let fits = Payload::parse(&format!("{{\"a\":\"{}\"}}", "x".repeat(max - 8))).expect("json");
        assert_eq!(fits.len(), max);
        assert_eq!(limits.check_payload(&fits), Ok(()));
        let over = Payload::parse(&format!("{{\"a\":\"{}\"}}", "x".repeat(max - 7))).expect("json");
        assert_eq!(
            limits.check_payload(&over),
            Err(TooLarge { size: max + 1, max })
        );
    }
}
