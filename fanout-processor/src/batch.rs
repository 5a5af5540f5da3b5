//! One batch of `events` records: validate, join with subscriptions, persist, emit.
//!
//! Order of effects, and why it is safe to repeat: (1) one PostgreSQL transaction records the
//! idempotency keys, the events and their deliveries, all `ON CONFLICT DO NOTHING`; (2) the
//! delivery records and invalid records are produced and every ack awaited; only then (3) the
//! caller stores the offsets. A crash anywhere before (3) re-runs the batch: the inserts are
//! no-ops the second time, and the delivery records are produced again with the same
//! deterministic delivery ids, so receivers see the same `webhook-id`. Nothing is skipped, and
//! the only duplicates are records with identical ids. The same holds when the caller re-runs
//! parts of a batch to isolate a record the database refused (consume.rs).
//!
//! **Event ids belong to a tenant.** A direct producer chooses its event ids, and two tenants
//! may choose the same one: `events` is keyed by (id, tenant) (migration 0005), so each is its
//! own event with its own deliveries (delivery ids derive from event and endpoint, and an
//! endpoint has one tenant). Everything here that tells events apart uses the pair.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use deadpool_postgres::Pool;
use futures::future::try_join_all;
use rdkafka::Message as _;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::DeliveryStatus;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::kafka::{TopicCatalog, extract_trace_context, or_new_trace};
use shared::records::{
    DeliveryRecord, EventEnvelope, InvalidEventRecord, Outgoing, RecordLimits, SchemaVersion,
    SourcePosition,
};

use crate::cache::{Cache, Snapshot};
use crate::metrics::Metrics;

/// Header on `events.invalid` records repeating the reason.
pub const INVALID_REASON_HEADER: &str = "harborhook-invalid-reason";
/// Longest reason kept on an invalid record, in bytes.
const REASON_MAX: usize = 1024;
/// Most of the original key kept (as the record's key and in `key_base64`), in bytes: a key
/// may be as large as the broker allows, and the quarantine record must still fit.
const KEY_KEPT: usize = 1024;
/// Room an invalid record needs besides the original value, at worst: the reason JSON-escaped
/// (a control character becomes six bytes) and again in the header, the key raw and in base64,
/// and 2 KiB for the source position (a topic name is at most 249 bytes), the field names,
/// the timestamp and Kafka's framing.
const INVALID_OVERHEAD: usize =
    REASON_MAX * 6 + REASON_MAX + KEY_KEPT + KEY_KEPT.div_ceil(3) * 4 + 2048;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("producing to {topic}")]
    Produce {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("encoding a record")]
    Encode(#[from] serde_json::Error),
}

impl BatchError {
    /// Whether the error is about the batch's data (one of its records), so retrying the same
    /// batch can never succeed: the caller then isolates the record (consume.rs).
    pub fn permanent(&self) -> bool {
        match self {
            Self::Db(e) => shared::db::permanent(e),
            Self::Produce { source, .. } => shared::kafka::permanent(source),
            Self::Encode(_) => true,
            Self::Pool(_) => false,
        }
    }

    /// Whether the database or the broker failed the batch (away, overloaded, no leader), as
    /// opposed to something about the batch or a bug: liveness waits it out (shared::liveness).
    pub fn dependency(&self) -> bool {
        match self {
            Self::Db(e) => shared::db::unavailable(e),
            Self::Pool(e) => shared::db::pool_unavailable(e),
            Self::Produce { source, .. } => shared::kafka::unavailable(source),
            Self::Encode(_) => false,
        }
    }

    /// Whether a statement ran out of time (`database.statement_timeout`): the batch may be too
    /// large for the database as it is (a tenant with thousands of endpoints on `*`), so the
    /// caller retries it in halves rather than whole forever (consume.rs).
    pub fn too_slow(&self) -> bool {
        matches!(self, Self::Db(e) if e.as_db_error().is_some_and(|d| d.code().code() == "57014"))
    }
}

#[derive(Clone)]
pub struct Fanout {
    pub pool: Pool,
    pub producer: FutureProducer,
    pub catalog: TopicCatalog,
    pub cache: Cache,
    pub metrics: Metrics,
    pub idempotency_window: Duration,
    pub produce_timeout: Duration,
    pub limits: RecordLimits,
}

struct Valid<'a> {
    envelope: EventEnvelope,
    message: &'a OwnedMessage,
}

impl Valid<'_> {
    /// What tells this event apart from every other: its id is the tenant's choice.
    fn key(&self) -> (TenantId, EventId) {
        (self.envelope.tenant_id, self.envelope.event_id)
    }
}

struct Invalid<'a> {
    reason: String,
    message: &'a OwnedMessage,
}

fn source(m: &OwnedMessage) -> SourcePosition {
    SourcePosition {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
    }
}

/// The envelope, if the record is one the pipeline can store and deliver.
fn parse(m: &OwnedMessage, limits: &RecordLimits) -> Result<EventEnvelope, String> {
    let bytes = m.payload().ok_or_else(|| "empty record".to_owned())?;
    let envelope: EventEnvelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid event envelope: {e}"))?;
    envelope.check(limits)?;
    Ok(envelope)
}

/// What `persist` found out about the batch.
struct Persisted {
    /// Events, as (tenant, event id), whose (tenant, idempotency key) already belongs to an
    /// earlier event.
    duplicates: HashSet<(TenantId, EventId)>,
}

impl Fanout {
    pub async fn handle(&self, messages: &[OwnedMessage]) -> Result<(), BatchError> {
        let started = Instant::now();
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for m in messages {
            match parse(m, &self.limits) {
                Ok(envelope) => valid.push(Valid {
                    envelope,
                    message: m,
                }),
                Err(reason) => invalid.push(Invalid { reason, message: m }),
            }
        }
        self.check_tenants(&mut valid, &mut invalid).await?;
        // One view of the subscriptions for the whole batch: what is recorded is what is sent.
        let snapshot = self.cache.snapshot();
        let Persisted { duplicates } = self.persist(&valid, &snapshot).await?;

        let mut sends = Vec::new();
        for v in valid.iter().filter(|v| !duplicates.contains(&v.key())) {
            let e = &v.envelope;
            let targets = snapshot.targets(&e.tenant_id, &e.event_type);
            let outcome = if targets.is_empty() {
                "no_subscribers"
            } else {
                "fanned_out"
            };
            self.metrics.event(outcome);
            // One trace per event for all its deliveries, new when the event came without one.
            let cx = or_new_trace(&extract_trace_context(
                v.message
                    .headers()
                    .map(rdkafka::message::OwnedHeaders::as_borrowed),
            ));
            for (endpoint, enabled) in targets {
                if !enabled {
                    self.metrics.delivery(DeliveryStatus::Skipped.as_str());
                    continue;
                }
                let record = DeliveryRecord::first_attempt(e.into(), endpoint, None);
                sends.push(Outgoing::delivery(&record, &cx)?);
                self.metrics.delivery(DeliveryStatus::Pending.as_str());
            }
        }
        for _ in &duplicates {
            self.metrics.event("duplicate");
        }
        let deliveries = self.catalog.deliveries();
        let produced = sends
            .iter()
            .map(|o| self.send(o.to(deliveries), deliveries));
        try_join_all(produced).await?;
        try_join_all(
            invalid
                .iter()
                .map(|i| self.quarantine(i.message, &i.reason)),
        )
        .await?;
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Sends `m` to `events.invalid` with `reason` (what an operator sees, docs/fanout.md). A
    /// value too large to fit base64-encoded is cut; its source position finds the original.
    pub async fn quarantine(&self, m: &OwnedMessage, reason: &str) -> Result<(), BatchError> {
        self.metrics.event("invalid");
        let reason = shared::text::cut(reason, REASON_MAX);
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            reason,
            "invalid event record"
        );
        let value = m.payload().unwrap_or_default();
        let room = self
            .limits
            .message_max_bytes
            .saturating_sub(INVALID_OVERHEAD)
            / 4
            * 3;
        let kept = &value[..value.len().min(room)];
        let record = InvalidEventRecord {
            schema_version: SchemaVersion::CURRENT,
            reason: reason.to_owned(),
            received_at: Utc::now(),
            source: source(m),
            key_base64: m.key().map(|k| BASE64.encode(&k[..k.len().min(KEY_KEPT)])),
            key_truncated: m.key().is_some_and(|k| k.len() > KEY_KEPT),
            value_base64: BASE64.encode(kept),
            value_truncated: kept.len() < value.len(),
            value_bytes: value.len(),
        };
        let value = serde_json::to_vec(&record)?;
        // A header value must be one line of text; the record itself keeps the whole reason.
        let header: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let headers = OwnedHeaders::new().insert(Header {
            key: INVALID_REASON_HEADER,
            value: Some(&header),
        });
        let topic = self.catalog.events_invalid();
        let mut out = FutureRecord::to(topic).payload(&value).headers(headers);
        if let Some(key) = m.key() {
            out = out.key(&key[..key.len().min(KEY_KEPT)]);
        }
        self.send(out, topic).await
    }

    async fn send<K: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: FutureRecord<'_, K, Vec<u8>>,
        topic: &str,
    ) -> Result<(), BatchError> {
        self.producer
            .send(record, self.produce_timeout)
            .await
            .map(|_| ())
            .map_err(|(source, _)| BatchError::Produce {
                topic: topic.to_owned(),
                source,
            })
    }

    /// Events of tenants that do not exist are invalid. The cache may lag a tenant created a
    /// moment ago, so unknown tenants are checked in PostgreSQL before being refused.
    async fn check_tenants<'a>(
        &self,
        valid: &mut Vec<Valid<'a>>,
        invalid: &mut Vec<Invalid<'a>>,
    ) -> Result<(), BatchError> {
        let snapshot = self.cache.snapshot();
        let unknown: Vec<TenantId> = valid
            .iter()
            .map(|v| v.envelope.tenant_id)
            .filter(|t| !snapshot.has_tenant(t))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let found: HashSet<TenantId> = client
            .query("SELECT id FROM tenants WHERE id = ANY($1)", &[&unknown])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for tenant in &found {
            self.cache.reload_tenant(&**client, tenant).await?;
        }
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(valid).into_iter().partition(|v| {
            snapshot.has_tenant(&v.envelope.tenant_id) || found.contains(&v.envelope.tenant_id)
        });
        *valid = keep;
        invalid.extend(drop.into_iter().map(|v| Invalid {
            reason: format!("unknown tenant {}", v.envelope.tenant_id),
            message: v.message,
        }));
        Ok(())
    }

    /// Records idempotency keys, events and deliveries in one transaction (module docs).
    async fn persist(
        &self,
        valid: &[Valid<'_>],
        snapshot: &Snapshot,
    ) -> Result<Persisted, BatchError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let duplicates = self.record_keys(&tx, valid).await?;

        let mut ev = EventColumns::default();
        for v in valid.iter().filter(|v| !duplicates.contains(&v.key())) {
            ev.push(&v.envelope);
        }
        if !ev.ids.is_empty() {
            tx.execute(
                "INSERT INTO events (id, tenant_id, event_type, payload, idempotency_key, ordering_key, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
                 ON CONFLICT (id, tenant_id) DO NOTHING",
                &[&ev.ids, &ev.tenants, &ev.types, &ev.payloads, &ev.idempotency, &ev.ordering, &ev.created],
            )
            .await?;
        }
        let mut dl = DeliveryColumns::default();
        for v in valid.iter().filter(|v| !duplicates.contains(&v.key())) {
            let e = &v.envelope;
            for (endpoint, enabled) in snapshot.targets(&e.tenant_id, &e.event_type) {
                dl.push(e, endpoint, enabled);
            }
        }
        if !dl.ids.is_empty() {
            tx.execute(
                "INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, skip_reason)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[])
                 ON CONFLICT (id) DO NOTHING",
                &[&dl.ids, &dl.tenants, &dl.events, &dl.endpoints, &dl.types, &dl.statuses, &dl.reasons],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Persisted { duplicates })
    }

    /// Idempotency keys of direct producers (the gateway's are already recorded with the same
    /// event id). Within the batch only the first of a key is offered. Returns the events that
    /// are duplicates of an earlier event with the same (tenant, idempotency key).
    async fn record_keys(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        valid: &[Valid<'_>],
    ) -> Result<HashSet<(TenantId, EventId)>, BatchError> {
        let mut seen = HashSet::new();
        let (mut k_tenants, mut k_keys, mut k_events) = (Vec::new(), Vec::new(), Vec::new());
        for v in valid {
            if let Some(key) = &v.envelope.idempotency_key
                && seen.insert((v.envelope.tenant_id, key.clone()))
            {
                k_tenants.push(v.envelope.tenant_id);
                k_keys.push(key.clone());
                k_events.push(v.envelope.event_id);
            }
        }
        let mut duplicates = HashSet::new();
        if k_keys.is_empty() {
            return Ok(duplicates);
        }
        let window = format!("{} milliseconds", self.idempotency_window.as_millis());
        tx.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, event_id, request_hash, state, expires_at)
             SELECT t, k, e, 'direct', 'published', now() + $4::text::interval
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS x(t, k, e)
             ON CONFLICT (tenant_id, key) DO UPDATE SET
                event_id = EXCLUDED.event_id, request_hash = EXCLUDED.request_hash, state = 'published',
                created_at = now(), expires_at = EXCLUDED.expires_at
             WHERE idempotency_keys.expires_at <= now()",
            &[&k_tenants, &k_keys, &k_events, &window],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT i.tenant_id, i.key, i.event_id FROM idempotency_keys i
                 JOIN UNNEST($1::uuid[], $2::text[]) AS x(t, k) ON i.tenant_id = x.t AND i.key = x.k",
                &[&k_tenants, &k_keys],
            )
            .await?;
        let owner: HashMap<(TenantId, String), EventId> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        for v in valid {
            let e = &v.envelope;
            if let Some(key) = &e.idempotency_key
                && owner
                    .get(&(e.tenant_id, key.clone()))
                    .is_some_and(|first| *first != e.event_id)
            {
                duplicates.insert((e.tenant_id, e.event_id));
            }
        }
        Ok(duplicates)
    }
}

#[derive(Default)]
struct EventColumns<'a> {
    ids: Vec<EventId>,
    tenants: Vec<TenantId>,
    types: Vec<&'a str>,
    payloads: Vec<&'a str>,
    idempotency: Vec<Option<&'a str>>,
    ordering: Vec<Option<&'a str>>,
    created: Vec<chrono::DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, e: &'a EventEnvelope) {
        self.ids.push(e.event_id);
        self.tenants.push(e.tenant_id);
        self.types.push(e.event_type.as_str());
        self.payloads.push(e.payload.as_str());
        self.idempotency.push(e.idempotency_key.as_deref());
        self.ordering.push(e.ordering_key.as_deref());
        self.created.push(e.occurred_at);
    }
}

#[derive(Default)]
struct DeliveryColumns<'a> {
    ids: Vec<DeliveryId>,
    tenants: Vec<TenantId>,
    events: Vec<EventId>,
    endpoints: Vec<EndpointId>,
    types: Vec<&'a str>,
    statuses: Vec<&'static str>,
    reasons: Vec<Option<&'static str>>,
}

impl<'a> DeliveryColumns<'a> {
    fn push(&mut self, e: &'a EventEnvelope, endpoint: EndpointId, enabled: bool) {
        self.ids.push(DeliveryId::derive(&e.event_id, &endpoint));
        self.tenants.push(e.tenant_id);
        self.events.push(e.event_id);
        self.endpoints.push(endpoint);
        self.types.push(e.event_type.as_str());
        let status = if enabled {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Skipped
        };
        self.statuses.push(status.as_str());
        self.reasons.push(if enabled {
            None
        } else {
            Some("endpoint disabled")
        });
    }
}
