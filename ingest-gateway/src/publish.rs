//! Publishing: validate, claim the idempotency key, produce the envelope to `events`, and only
//! then answer 202.
//!
//! **Idempotency.** `(tenant, key)` is the primary key of `idempotency_keys`, so concurrent
//! duplicates collide in PostgreSQL whichever replica they reach. The first request inserts the
//! row as `pending` with a fresh event id and produces; on the broker's ack it marks the row
//! `published`. A duplicate that finds the row
//! - `published` (and unexpired) answers 202 with the same event id and produces nothing;
//! - `pending` waits (polling) up to the publish timeout for the first to finish, then answers
//!   409 "in progress" so the client retries;
//! - `failed`, or `pending` for longer than twice the publish timeout (its gateway died), takes
//!   the row over and produces **the same event id** again. If the first attempt did reach the
//!   broker after all, fan-out sees one event id twice, and deterministic delivery ids make the
//!   deliveries identical: receivers see one `webhook-id`.
//!
//! A key reused within the window for a different request (another type or payload) is a 422.
//! After the window (`idempotency.window`) the key starts a new event.
//!
//! **What is accepted** is what the pipeline can carry to the receiver unchanged (docs/api.md):
//! the payload is kept as the JSON text sent (shared::payload) and must fit every record it can
//! become (shared::records::limits: 413 otherwise, never a 503 from a broker that would refuse
//! it); keys are 1 to 255 bytes without control characters.
//!
//! **Broker deadline.** The gateway's producer has `message.timeout.ms` equal to the publish
//! timeout, so librdkafka has given up on the record by the time we answer 503: a 503 means the
//! record was not written, except when the broker wrote it and the ack was lost, which the
//! idempotency key (or, without one, the client's retry creating a second event) covers.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use shared::domain::EventType;
use shared::ids::{EventId, TenantId};
use shared::payload::Payload;
use shared::records::{EventEnvelope, Outgoing, SchemaVersion, check_key};

use crate::error::{ApiError, ApiResult};
use crate::metrics::TenantLabel;
use crate::state::AppState;

/// One event as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub event_type: String,
    /// Kept as the JSON text sent; checked in `validate`.
    pub payload: Box<serde_json::value::RawValue>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub event_id: EventId,
    /// True when the idempotency key matched an earlier publish and nothing new was produced.
    pub duplicate: bool,
}

struct Validated {
    event_type: EventType,
    payload: Payload,
    idempotency_key: Option<String>,
    ordering_key: Option<String>,
    hash: String,
}

fn validate(
    state: &AppState,
    req: PublishRequest,
    header_key: Option<String>,
) -> ApiResult<Validated> {
    let event_type: EventType = req
        .event_type
        .parse()
        .map_err(|e| ApiError::invalid("event_type", e))?;
    let payload = Payload::parse(req.payload.get()).map_err(|e| ApiError::invalid("payload", e))?;
    state
        .limits
        .check_payload(&payload)
        .map_err(|e| ApiError::PayloadTooLarge(format!("payload: {e}")))?;
    let idempotency_key = match (header_key, req.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid(
                "idempotency_key",
                "differs from the Idempotency-Key header",
            ));
        }
        (h, b) => h.or(b),
    };
    for (field, key) in [
        ("idempotency_key", &idempotency_key),
        ("ordering_key", &req.ordering_key),
    ] {
        if let Some(key) = key {
            check_key(key).map_err(|e| ApiError::invalid(field, e))?;
        }
    }
    // What makes two requests "the same" for idempotency: type, payload and ordering key. The
    // payload is carried byte for byte (shared::payload), so it is compared byte for byte: two
    // payloads that differ in anything (digits beyond a double, key order, escapes) are two
    // requests, and a retry that re-encodes its JSON gets 422 rather than having a different
    // payload silently taken for the first. One pass over the text, whatever its shape.
    let hash = if idempotency_key.is_some() {
        let mut hasher = Sha256::new();
        hasher.update(event_type.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(payload.as_bytes());
        hasher.update([0]);
        hasher.update(req.ordering_key.as_deref().unwrap_or("").as_bytes());
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        String::new()
    };
    Ok(Validated {
        event_type,
        payload,
        idempotency_key,
        ordering_key: req.ordering_key,
        hash,
    })
}

enum Claim {
    /// We own the key: produce this event id.
    Owned(EventId),
    /// An earlier request published this event id.
    Done(EventId),
}

/// Claims `(tenant, key)` for this request (see the module docs).
async fn claim(state: &AppState, tenant: &TenantId, key: &str, hash: &str) -> ApiResult<Claim> {
    let window =
        chrono::Duration::from_std(state.idempotency_window).map_err(ApiError::internal)?;
    let stale =
        chrono::Duration::from_std(state.config.publish_timeout * 2).map_err(ApiError::internal)?;
    let deadline = Instant::now() + state.config.publish_timeout;
    loop {
        let client = state.pool.get().await?;
        let fresh = EventId::new();
        // Insert, or take over an expired, failed or abandoned row. An expired row starts a
        // new event; a failed or abandoned one keeps its event id.
        let taken = client
            .query_opt(
                "INSERT INTO idempotency_keys (tenant_id, key, event_id, request_hash, state, expires_at)
                 VALUES ($1, $2, $3, $4, 'pending', now() + $5::text::interval)
                 ON CONFLICT (tenant_id, key) DO UPDATE SET
                    event_id = CASE WHEN idempotency_keys.expires_at <= now()
                                    THEN EXCLUDED.event_id ELSE idempotency_keys.event_id END,
                    request_hash = EXCLUDED.request_hash,
                    state = 'pending',
                    created_at = now(),
                    expires_at = CASE WHEN idempotency_keys.expires_at <= now()
                                      THEN EXCLUDED.expires_at ELSE idempotency_keys.expires_at END
                 WHERE idempotency_keys.expires_at <= now()
                    OR (idempotency_keys.request_hash = EXCLUDED.request_hash
                        AND (idempotency_keys.state = 'failed'
                             OR (idempotency_keys.state = 'pending'
                                 AND idempotency_keys.created_at < now() - $6::text::interval)))
                 RETURNING event_id",
                &[tenant, &key, &fresh, &hash, &pg_interval(window), &pg_interval(stale)],
            )
            .await?;
        if let Some(row) = taken {
            return Ok(Claim::Owned(row.try_get(0)?));
        }
        let existing = client
            .query_opt(
                "SELECT event_id, request_hash, state FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                &[tenant, &key],
            )
            .await?;
        let Some(row) = existing else { continue }; // Deleted in between: try again.
        let (event_id, other_hash, row_state): (EventId, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if other_hash != hash {
            return Err(ApiError::Unprocessable {
                message: "idempotency key was already used for a different request".into(),
                details: vec![
                    serde_json::json!({"field": "idempotency_key", "event_id": event_id}),
                ],
            });
        }
        if row_state == "published" {
            return Ok(Claim::Done(event_id));
        }
        if Instant::now() >= deadline {
            return Err(ApiError::Conflict(
                "a request with this idempotency key is still in progress; retry".into(),
            ));
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pg_interval(d: chrono::Duration) -> String {
    format!("{} milliseconds", d.num_milliseconds())
}

async fn finish_claim(
    state: &AppState,
    tenant: &TenantId,
    key: &str,
    event: &EventId,
    outcome: &str,
) {
    let result = async {
        let client = state.pool.get().await?;
        client
            .execute(
                "UPDATE idempotency_keys SET state = $4 WHERE tenant_id = $1 AND key = $2 AND event_id = $3",
                &[tenant, &key, event, &outcome],
            )
            .await?;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(e) = result {
        // The row stays `pending`; after twice the publish timeout a retry takes it over with
        // the same event id, so nothing is lost or duplicated beyond a shared webhook-id.
        tracing::warn!(tenant_id = %tenant, event_id = %event, error = %shared::error_chain(&e), "recording the idempotency outcome failed");
    }
}

/// Validates and publishes one event for `tenant`.
pub async fn publish(
    state: &AppState,
    tenant: TenantId,
    req: PublishRequest,
    header_key: Option<String>,
) -> ApiResult<Published> {
    let v = validate(state, req, header_key)?;
    let event_id = match &v.idempotency_key {
        Some(key) => match claim(state, &tenant, key, &v.hash).await? {
            Claim::Done(event_id) => {
                return Ok(Published {
                    event_id,
                    duplicate: true,
                });
            }
            Claim::Owned(event_id) => event_id,
        },
        None => EventId::new(),
    };
    let envelope = EventEnvelope {
        schema_version: SchemaVersion::CURRENT,
        event_id,
        tenant_id: tenant,
        event_type: v.event_type,
        payload: v.payload,
        occurred_at: Utc::now(),
        idempotency_key: v.idempotency_key.clone(),
        ordering_key: v.ordering_key,
    };
    let produced = produce(state, &envelope).await;
    if let Some(key) = &v.idempotency_key {
        let outcome = if produced.is_ok() {
            "published"
        } else {
            "failed"
        };
        finish_claim(state, &tenant, key, &event_id, outcome).await;
    }
    produced?;
    state
        .metrics
        .published
        .get_or_create(&TenantLabel {
            tenant_id: tenant.to_string(),
        })
        .inc();
    tracing::info!(tenant_id = %tenant, event_id = %event_id, event_type = %envelope.event_type, "event published");
    Ok(Published {
        event_id,
        duplicate: false,
    })
}

async fn produce(state: &AppState, envelope: &EventEnvelope) -> ApiResult<()> {
    let outgoing =
        Outgoing::event(envelope, &crate::metrics::onward_context()).map_err(ApiError::internal)?;
    let record = outgoing.to(state.catalog.events());
    let start = Instant::now();
    // The producer's own message timeout equals the publish timeout; the outer timeout only
    // guards against a report that never comes.
    let producer = state.producer();
    let sent = tokio::time::timeout(
        state.config.publish_timeout + Duration::from_secs(1),
        producer.send(record, state.config.publish_timeout),
    )
    .await;
    state.metrics.produce.observe(start.elapsed().as_secs_f64());
    match sent {
        Ok(Ok(_)) => Ok(()),
        // Refused for its size after all (a broker limit below the producer's): the request's
        // problem, 413, not an outage.
        Ok(Err((e, _))) if shared::kafka::permanent(&e) => {
            tracing::warn!(event_id = %envelope.event_id, error = %e, "the broker refused the event");
            Err(ApiError::PayloadTooLarge(format!(
                "the event log refused the event ({e}); make the payload smaller"
            )))
        }
        Ok(Err((e, _))) => {
            tracing::warn!(event_id = %envelope.event_id, error = %e, "produce failed");
            state.replace_producer_if_fatal();
            Err(ApiError::Unavailable {
                message: "the event log is unavailable; retry".into(),
                retry_after_secs: 2,
            })
        }
        Err(_) => Err(ApiError::Unavailable {
            message: "the event log did not acknowledge in time; retry".into(),
            retry_after_secs: 2,
        }),
    }
}
