//! One record's work, run as its own task: the HTTP attempt, then making the outcome durable
//! (retry tier or DLQ record acknowledged by the broker, attempt row committed) before the
//! dispatcher may release the record's offset.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::Rng as _;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::{DeliveryStatus, Endpoint, ErrorClass};
use shared::ids::{EndpointId, TenantId};
use shared::kafka::RetryTier;
use shared::records::{
    AttemptSummary, DeadLetterReason, DeadLetterRecord, DeliveryRecord, RetryRecord, SchemaVersion,
    SourcePosition,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::attempts::{Row, Writer};
use crate::endpoints::EndpointCache;
use crate::http::{Exchange, Http};
use crate::metrics::{HttpResult, Metrics, Reason, Status, TenantStatus};

/// A record read from `deliveries`, waiting in its endpoint's lane or being worked on.
pub struct Job {
    pub record: DeliveryRecord,
    pub partition: i32,
    pub offset: i64,
    /// The rebalance generation it was read in; a stale job's offset is not stored.
    pub epoch: u64,
    pub headers: Option<OwnedHeaders>,
}

#[cfg(test)]
impl Job {
    /// A job whose contents do not matter (lane bookkeeping tests).
    pub fn placeholder() -> Self {
        use shared::ids::{EndpointId, EventId, TenantId};
        let (event, endpoint) = (EventId::new(), EndpointId::new());
        Self {
            record: DeliveryRecord {
                schema_version: SchemaVersion::CURRENT,
                delivery_id: shared::ids::DeliveryId::derive(&event, &endpoint),
                event_id: event,
                tenant_id: TenantId::new(),
                endpoint_id: endpoint,
                event_type: "test.event".parse().unwrap_or_else(|_| unreachable!()),
                payload: serde_json::Map::new(),
                occurred_at: Utc::now(),
                attempt: 1,
                attempts: Vec::new(),
                replay: None,
            },
            partition: 0,
            offset: 0,
            epoch: 0,
            headers: None,
        }
    }
}

/// What an attempt tells the endpoint's lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    Success,
    Failure,
    /// Pause the endpoint (429/503 with `Retry-After`).
    Pause(Duration),
    /// No request was made (endpoint gone or disabled).
    Nothing,
}

/// Why a record is put in a retry tier without an attempt.
#[derive(Debug, Clone, Copy)]
pub enum Deferral {
    /// The endpoint's lane was full.
    Overflow,
    /// The endpoint asked to be left alone (`Retry-After`).
    Paused,
    CircuitOpen,
}

impl Deferral {
    pub const ALL: [Self; 3] = [Self::Overflow, Self::Paused, Self::CircuitOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::Paused => "paused",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

pub enum Event {
    /// The HTTP part is over: the lane's slot is free. `took` is the request's duration
    /// (zero when none was made), for the lane's wait estimate.
    Sent {
        endpoint: EndpointId,
        signal: Signal,
        took: Duration,
    },
    /// The outcome is durable (`stored`) or was abandoned at shutdown (not stored).
    Done {
        partition: i32,
        offset: i64,
        epoch: u64,
        durable: bool,
    },
    /// A lane's rate-limit wait is over.
    Wake(EndpointId),
}

/// What every job task shares.
pub struct Deps {
    pub pool: Pool,
    pub endpoints: EndpointCache,
    pub http: Http,
    pub writer: Writer,
    pub producer: FutureProducer,
    /// Ascending delays.
    pub tiers: Vec<RetryTier>,
    pub schedule: Vec<Duration>,
    pub jitter_max: Duration,
    pub dlq_topic: String,
    pub deliveries_topic: String,
    pub produce_timeout: Duration,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// How long after its start a delivery may still be deferred; then it is dead-lettered.
    pub horizon: chrono::Duration,
}

/// Retries `f` with backoff until it succeeds or shutdown; `None` on shutdown.
async fn durably<T, E: std::fmt::Display, F, Fut>(deps: &Deps, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = deps.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Deps {
    /// The smallest tier whose delay is at least `wanted`, else the largest.
    fn tier_for(&self, wanted: Duration) -> &RetryTier {
        self.tiers
            .iter()
            .find(|t| t.delay >= wanted)
            .or(self.tiers.last())
            .unwrap_or_else(|| unreachable!("the schedule has at least one tier (config)"))
    }

    async fn produce(&self, topic: &str, job: &Job, payload: Vec<u8>) -> Option<()> {
        let key = job.record.endpoint_id.to_string();
        durably(self, "producing an outcome", || {
            let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
            if let Some(h) = &job.headers {
                record = record.headers(h.clone());
            }
            let producer = self.producer.clone();
            let timeout = self.produce_timeout;
            async move {
                producer
                    .send(record, timeout)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        })
        .await
    }

    /// Writes `delivery` to the tier covering `wanted`, due after that tier's delay plus a
    /// bounded jitter (at most `retry.jitter_max` and a tenth of the delay, docs/retry.md).
    async fn to_tier(&self, job: &Job, delivery: DeliveryRecord, wanted: Duration) -> Option<()> {
        let tier = self.tier_for(wanted);
        let cap = self.jitter_max.min(tier.delay / 10);
        let jitter = if cap.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=cap)
        };
        let due = Utc::now() + tier.delay + jitter;
        let record = RetryRecord {
            schema_version: SchemaVersion::CURRENT,
            due_at: due,
            tier: tier.name.clone(),
            delivery,
        };
        let payload = serde_json::to_vec(&record).ok()?;
        self.produce(&tier.topic, job, payload).await
    }

    async fn dead_letter(
        &self,
        job: &Job,
        delivery: DeliveryRecord,
        reason: DeadLetterReason,
        exchange: Option<&Exchange>,
    ) -> Option<()> {
        let tenant = delivery.tenant_id;
        let record = DeadLetterRecord {
            schema_version: SchemaVersion::CURRENT,
            reason,
            dead_lettered_at: Utc::now(),
            delivery,
            last_status: exchange.and_then(|x| x.status),
            error_class: exchange.and_then(|x| x.error_class),
            response_body: exchange.and_then(|x| x.excerpt.clone()),
            source: self.source(job),
        };
        let payload = serde_json::to_vec(&record).ok()?;
        self.produce(&self.dlq_topic, job, payload).await?;
        self.metrics
            .dlq
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
        self.count(DeliveryStatus::DeadLettered, &tenant);
        Some(())
    }

    /// Dead-letters a delivery no request was made for (its endpoint is gone, or it was
    /// deferred past the horizon): the DLQ record and the row, concurrently.
    async fn dead_letter_unattempted(
        &self,
        job: &Job,
        reason: DeadLetterReason,
        error: Option<(ErrorClass, String)>,
    ) -> Option<()> {
        let r = &job.record;
        let (error_class, error) = error.unzip();
        let row = Row {
            delivery_id: r.delivery_id,
            tenant_id: r.tenant_id,
            endpoint_id: r.endpoint_id,
            status: DeliveryStatus::DeadLettered,
            attempt: None,
            started_at: Utc::now(),
            duration_ms: 0,
            status_code: None,
            error_class,
            error,
            excerpt: None,
            dead_letter: Some((reason, self.source(job))),
        };
        let (a, b) = tokio::join!(
            self.dead_letter(job, r.clone(), reason, None),
            self.record(row)
        );
        a.and(b)
    }

    fn source(&self, job: &Job) -> SourcePosition {
        SourcePosition {
            topic: self.deliveries_topic.clone(),
            partition: job.partition,
            offset: job.offset,
        }
    }

    fn count(&self, status: DeliveryStatus, tenant: &TenantId) {
        self.metrics
            .deliveries
            .get_or_create(&Status {
                status: status.as_str(),
            })
            .inc();
        self.metrics
            .tenant_deliveries
            .get_or_create(&TenantStatus {
                tenant_id: tenant.to_string(),
                status: status.as_str(),
            })
            .inc();
    }

    async fn record(&self, row: Row) -> Option<()> {
        let writer: &Writer = &self.writer;
        tokio::select! {
            r = writer.record(row) => r.ok(),
            _ = self.shutdown.cancelled() => None,
        }
    }
}

/// Puts a record in a retry tier without an attempt (its lane is full, paused or open). A
/// delivery deferred past the horizon is dead-lettered instead, so a permanently dead endpoint
/// does not keep its records circling forever.
pub async fn defer(
    deps: Arc<Deps>,
    job: Job,
    why: Deferral,
    wanted: Duration,
    tx: mpsc::Sender<Event>,
) {
    let started = job
        .record
        .replay
        .as_ref()
        .map_or(job.record.occurred_at, |r| r.replayed_at);
    let durable = if Utc::now() - started > deps.horizon {
        let error = format!("deferred past the retry horizon ({})", why.as_str());
        deps.dead_letter_unattempted(
            &job,
            DeadLetterReason::Exhausted,
            Some((ErrorClass::CircuitOpen, error)),
        )
        .await
        .is_some()
    } else {
        let ok = deps
            .to_tier(&job, job.record.clone(), wanted)
            .await
            .is_some();
        if ok {
            deps.metrics
                .retries
                .get_or_create(&Reason {
                    reason: why.as_str(),
                })
                .inc();
            deps.metrics
                .deliveries
                .get_or_create(&Status { status: "deferred" })
                .inc();
        }
        ok
    };
    done(&tx, &job, durable).await;
}

async fn done(tx: &mpsc::Sender<Event>, job: &Job, durable: bool) {
    let _ = tx
        .send(Event::Done {
            partition: job.partition,
            offset: job.offset,
            epoch: job.epoch,
            durable,
        })
        .await;
}

/// Attempts the delivery and settles its outcome.
pub async fn deliver(deps: Arc<Deps>, job: Job, tx: mpsc::Sender<Event>) {
    let r = &job.record;
    let span = tracing::info_span!(
        "deliver",
        delivery_id = %r.delivery_id,
        endpoint_id = %r.endpoint_id,
        tenant_id = %r.tenant_id,
        event_id = %r.event_id,
        attempt = r.attempt,
    );
    let parent =
        shared::kafka::extract_trace_context(job.headers.as_ref().map(OwnedHeaders::as_borrowed));
    shared::telemetry::set_parent(&span, parent.clone());
    let endpoint_id = r.endpoint_id;
    async move {
        let endpoint = durably(&deps, "loading the endpoint", || {
            deps.endpoints.get_or_load(&deps.pool, &endpoint_id)
        })
        .await;
        let Some(endpoint) = endpoint else {
            let _ = tx
                .send(Event::Sent {
                    endpoint: endpoint_id,
                    signal: Signal::Nothing,
                    took: Duration::ZERO,
                })
                .await;
            return done(&tx, &job, false).await;
        };
        let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
            let _ = tx
                .send(Event::Sent {
                    endpoint: endpoint_id,
                    signal: Signal::Nothing,
                    took: Duration::ZERO,
                })
                .await;
            let durable = unavailable(&deps, &job).await.is_some();
            return done(&tx, &job, durable).await;
        };
        let started_at = Utc::now();
        let trace = shared::telemetry::onward_context(parent);
        let exchange = attempt(&deps, &job.record, &endpoint, started_at, &trace).await;
        let signal = match (exchange.error_class, pause(&exchange)) {
            (None, _) => Signal::Success,
            (Some(ErrorClass::Gone), _) => Signal::Nothing,
            (Some(_), Some(d)) => Signal::Pause(d),
            (Some(_), None) => Signal::Failure,
        };
        let _ = tx
            .send(Event::Sent {
                endpoint: endpoint_id,
                signal,
                took: exchange.duration,
            })
            .await;
        let durable = settle(&deps, &job, &endpoint, &exchange, started_at)
            .await
            .is_some();
        done(&tx, &job, durable).await;
    }
    .instrument(span)
    .await;
}

/// The pause a 429 or 503 asked for with `Retry-After`.
pub fn pause(x: &Exchange) -> Option<Duration> {
    matches!(x.status, Some(429 | 503))
        .then_some(x.retry_after)
        .flatten()
}

async fn unavailable(deps: &Deps, job: &Job) -> Option<()> {
    tracing::warn!("endpoint deleted or disabled; dead-lettering");
    deps.dead_letter_unattempted(job, DeadLetterReason::EndpointUnavailable, None)
        .await
}

async fn attempt(
    deps: &Deps,
    r: &DeliveryRecord,
    endpoint: &Endpoint,
    started_at: DateTime<Utc>,
    trace: &opentelemetry::Context,
) -> Exchange {
    let body = serde_json::to_vec(&r.payload).unwrap_or_else(|_| b"{}".to_vec());
    let secrets: Vec<_> = endpoint.active_secrets(started_at).collect();
    let mut headers = crate::sign::headers(
        endpoint.signature_scheme,
        &secrets,
        &endpoint.headers,
        &r.delivery_id.to_string(),
        started_at.timestamp(),
        &body,
    );
    shared::telemetry::inject_http(trace, &mut headers);
    deps.metrics.in_flight.inc();
    let exchange = deps
        .http
        .post(
            &endpoint.url,
            headers,
            body,
            endpoint.connect_timeout_ms,
            endpoint.timeout_ms,
        )
        .await;
    deps.metrics.in_flight.dec();
    let result = match exchange.status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "error",
    };
    deps.metrics
        .http
        .get_or_create(&HttpResult { result })
        .observe(exchange.duration.as_secs_f64());
    match exchange.error_class {
        None => tracing::debug!(
            status = exchange.status,
            ms = exchange.duration.as_millis() as u64,
            "delivered"
        ),
        Some(class) => tracing::info!(
            status = exchange.status,
            class = class.as_str(),
            error = exchange.error.as_deref(),
            "attempt failed"
        ),
    }
    exchange
}

/// Makes the outcome of an attempt durable: retry tier or DLQ record acked, row committed.
async fn settle(
    deps: &Deps,
    job: &Job,
    endpoint: &Endpoint,
    x: &Exchange,
    started_at: DateTime<Utc>,
) -> Option<()> {
    let r = &job.record;
    let duration_ms = u32::try_from(x.duration.as_millis()).unwrap_or(u32::MAX);
    let mut delivery = r.clone();
    delivery.attempts.push(AttemptSummary {
        attempt: r.attempt,
        at: started_at,
        duration_ms,
        status_code: x.status,
        error_class: x.error_class,
    });
    let status;
    let outcome = match x.error_class {
        None => {
            status = DeliveryStatus::Delivered;
            let latency = (Utc::now() - r.occurred_at).to_std().unwrap_or_default();
            deps.metrics.latency.observe(latency.as_secs_f64());
            None
        }
        Some(ErrorClass::Gone) => {
            status = DeliveryStatus::DeadLettered;
            let reason = format!("410 Gone received at {}", started_at.to_rfc3339());
            durably(deps, "disabling the endpoint", || {
                deps.endpoints.disable(&deps.pool, &endpoint.id, &reason)
            })
            .await?;
            deps.metrics.disabled.inc();
            tracing::warn!("endpoint answered 410 Gone; disabled");
            Some((delivery, DeadLetterReason::Gone))
        }
        Some(class) => {
            let next = usize::try_from(r.attempt)
                .ok()
                .and_then(|a| deps.schedule.get(a.wrapping_sub(1)));
            match next {
                Some(delay) => {
                    status = DeliveryStatus::Retrying;
                    let wanted = (*delay).max(pause(x).unwrap_or_default());
                    delivery.attempt = r.attempt + 1;
                    deps.to_tier(job, delivery, wanted).await?;
                    deps.metrics
                        .retries
                        .get_or_create(&Reason {
                            reason: class.as_str(),
                        })
                        .inc();
                    None
                }
                None => {
                    status = DeliveryStatus::DeadLettered;
                    Some((delivery, DeadLetterReason::Exhausted))
                }
            }
        }
    };
    let row = Row {
        delivery_id: r.delivery_id,
        tenant_id: r.tenant_id,
        endpoint_id: r.endpoint_id,
        status,
        attempt: Some(r.attempt),
        started_at,
        duration_ms,
        status_code: x.status,
        error_class: x.error_class,
        error: x.error.clone(),
        excerpt: x.excerpt.clone(),
        dead_letter: outcome
            .as_ref()
            .map(|(_, reason)| (*reason, deps.source(job))),
    };
    let dead = async {
        match outcome {
            Some((delivery, reason)) => deps.dead_letter(job, delivery, reason, Some(x)).await,
            None => Some(()),
        }
    };
    let (a, b) = tokio::join!(dead, deps.record(row));
    a.and(b)?;
    if status != DeliveryStatus::DeadLettered {
        deps.count(status, &r.tenant_id);
    }
    Some(())
}
