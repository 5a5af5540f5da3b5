//! One record's work, run as its own task: the HTTP attempt (or a deferral), then making the
//! outcome durable (outcome.rs) before the dispatcher may release the record's offset.
//!
//! **A task that panics costs one record, not a partition.** The dispatcher learns that a
//! request is over and that a record is done only from the task's events; a task that died
//! without sending them would hold an in-flight slot and its partition's watermark forever, and
//! crashing the process instead would read the same record again and panic again. So every task
//! runs [`guarded`]: a panic is caught, logged and counted (it is a bug), the slot is freed,
//! and the record is dead-lettered as `undeliverable` with the panic's message — replayable once
//! the bug is fixed — before its offset is released.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::FutureExt as _;
use shared::domain::{DeliveryStatus, Endpoint, ErrorClass};
use shared::ids::{EndpointId, TenantId};
use shared::records::{AttemptSummary, DeadLetterReason, DeliveryRecord};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::attempts::Row;
use crate::endpoints::EndpointCache;
use crate::http::{Exchange, Http};
use crate::metrics::{HttpResult, Reason};
use crate::outcome::{Failure, Outcomes};

/// A record read from `deliveries`, waiting in its endpoint's lane or being worked on.
#[derive(Debug, Clone)]
pub struct Job {
    pub record: Arc<DeliveryRecord>,
    pub partition: i32,
    pub offset: i64,
    /// Its partition's generation when it was read; a stale job's offset is not stored.
    pub generation: u64,
    /// The trace the record came with, or a new one when it had none: its attempts and its
    /// retry and dead-letter records are all of this trace.
    pub trace: shared::kafka::TraceContext,
    /// When its request was started (set by the admission core).
    pub sent_at: Instant,
}

#[cfg(test)]
impl Job {
    /// A job whose contents do not matter (lane bookkeeping tests).
    pub fn placeholder() -> Self {
        Self::for_endpoint(TenantId::new(), EndpointId::new(), 0)
    }

    /// A job of `tenant` for `endpoint` on `partition` (admission tests).
    pub fn for_endpoint(tenant: TenantId, endpoint: EndpointId, partition: i32) -> Self {
        use shared::records::{EventRef, ReplayInfo};
        let event_type = "test.event".parse().unwrap_or_else(|_| unreachable!());
        let payload = shared::payload::Payload::empty();
        let event = EventRef {
            event_id: shared::ids::EventId::new(),
            tenant_id: tenant,
            event_type: &event_type,
            payload: &payload,
            occurred_at: Utc::now(),
        };
        Self {
            record: Arc::new(DeliveryRecord::first_attempt(
                event,
                endpoint,
                None::<ReplayInfo>,
            )),
            partition,
            offset: 0,
            generation: 0,
            trace: shared::kafka::TraceContext::new(),
            sent_at: Instant::now(),
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
    /// No request was made (endpoint gone or disabled), or it says nothing about the endpoint.
    Nothing,
}

/// Why a record is put in a retry tier without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The endpoint's lane was full, or its share of the budgets used up.
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

    /// The error class a deferral past the horizon is dead-lettered with.
    fn class(self) -> Option<ErrorClass> {
        match self {
            Self::Overflow => None,
            Self::Paused => Some(ErrorClass::RateLimited),
            Self::CircuitOpen => Some(ErrorClass::CircuitOpen),
        }
    }
}

pub enum Event {
    /// The HTTP part is over: the lane's slot is free. `took` is the request's duration
    /// (zero when none was made), for the lane's wait estimate; `started` names the request.
    Sent {
        endpoint: EndpointId,
        tenant: TenantId,
        signal: Signal,
        started: Instant,
        took: Duration,
    },
    /// The outcome is durable (`durable`) or was abandoned at shutdown (not stored).
    Done {
        partition: i32,
        offset: i64,
        generation: u64,
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
    pub outcomes: Outcomes,
    pub schedule: Vec<Duration>,
    /// How long after its start a delivery may still be deferred; then it is dead-lettered.
    pub horizon: chrono::Duration,
}

/// What a task does.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    Deliver,
    Defer(Deferral, Duration),
}

/// Tells the dispatcher, once each, that the slot is free and that the record is done.
struct Report {
    tx: mpsc::Sender<Event>,
    job: Job,
    sent: AtomicBool,
    done: AtomicBool,
}

impl Report {
    async fn sent(&self, signal: Signal, took: Duration) {
        if !self.sent.swap(true, Ordering::SeqCst) {
            let r = &self.job.record;
            let _ = self
                .tx
                .send(Event::Sent {
                    endpoint: r.endpoint_id,
                    tenant: r.tenant_id,
                    signal,
                    started: self.job.sent_at,
                    took,
                })
                .await;
        }
    }

    async fn done(&self, durable: bool) {
        if !self.done.swap(true, Ordering::SeqCst) {
            let _ = self
                .tx
                .send(Event::Done {
                    partition: self.job.partition,
                    offset: self.job.offset,
                    generation: self.job.generation,
                    durable,
                })
                .await;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs one record's work (module docs).
pub async fn guarded(deps: Arc<Deps>, job: Job, tx: mpsc::Sender<Event>, work: Work) {
    let report = Report {
        tx,
        job: job.clone(),
        sent: AtomicBool::new(matches!(work, Work::Defer(..))),
        done: AtomicBool::new(false),
    };
    let run = async {
        match work {
            Work::Deliver => deliver(&deps, &job, &report).await,
            Work::Defer(why, wanted) => defer(&deps, &job, why, wanted, &report).await,
        }
    };
    let Err(panic) = AssertUnwindSafe(run).catch_unwind().await else {
        return;
    };
    let message = panic_message(&*panic);
    deps.outcomes.metrics.panics.inc();
    let r = &job.record;
    tracing::error!(delivery_id = %r.delivery_id, endpoint_id = %r.endpoint_id, panic = %message,
        "delivery task panicked (a bug); dead-lettering the record as undeliverable");
    report.sent(Signal::Nothing, Duration::ZERO).await;
    let error = format!("internal error: {message}");
    let quarantined = AssertUnwindSafe(deps.outcomes.dead_letter_unattempted(
        &job,
        DeadLetterReason::Undeliverable,
        None,
        Some(error),
    ))
    .catch_unwind()
    .await;
    // Not even the dead letter could be written without panicking: release the record anyway
    // (logged and counted above) rather than hold its partition for ever.
    let durable = !matches!(quarantined, Ok(Err(Failure::Shutdown)));
    report.done(durable).await;
}

/// Puts a record in a retry tier without an attempt (its lane is full, paused or open). A
/// delivery deferred past the horizon is dead-lettered instead, so a permanently dead endpoint
/// does not keep its records circling forever.
async fn defer(deps: &Deps, job: &Job, why: Deferral, wanted: Duration, report: &Report) {
    let r = &job.record;
    // The horizon counts from the first deferral, a platform stamp carried on the record
    // (a replay starts a fresh record, so a fresh clock). Never from the producer's
    // `occurred_at`: a date in year 1 would dead-letter at the first deferral, one in 9999
    // would circle for ever. A stamp in the future (a clock step) counts as now.
    let now = Utc::now();
    let since = r.deferred_since.map_or(now, |t| t.min(now));
    let o = &deps.outcomes;
    let result = if now - since > deps.horizon {
        let error = format!("deferred past the retry horizon ({})", why.as_str());
        o.dead_letter_unattempted(job, DeadLetterReason::Exhausted, why.class(), Some(error))
            .await
    } else {
        let mut next = DeliveryRecord::clone(r);
        next.deferred_since = Some(since);
        match o.to_tier(job, next, wanted).await {
            Ok(()) => {
                o.metrics
                    .retries
                    .get_or_create(&Reason {
                        reason: why.as_str(),
                    })
                    .inc();
                o.metrics
                    .deliveries
                    .get_or_create(&crate::metrics::Status { status: "deferred" })
                    .inc();
                Ok(())
            }
            Err(Failure::Permanent(e)) => {
                o.dead_letter_unattempted(job, DeadLetterReason::Undeliverable, None, Some(e))
                    .await
            }
            Err(shutdown) => Err(shutdown),
        }
    };
    report.done(result.is_ok()).await;
}

/// Attempts the delivery and settles its outcome.
async fn deliver(deps: &Deps, job: &Job, report: &Report) {
    let r = &job.record;
    let span = tracing::info_span!(
        "deliver",
        delivery_id = %r.delivery_id,
        endpoint_id = %r.endpoint_id,
        tenant_id = %r.tenant_id,
        event_id = %r.event_id,
        attempt = r.attempt,
    );
    let parent = job.trace.clone();
    shared::telemetry::set_parent(&span, parent.clone());
    async move {
        let Some(endpoint) = load(deps, &r.endpoint_id).await else {
            report.sent(Signal::Nothing, Duration::ZERO).await;
            return report.done(false).await;
        };
        let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
            report.sent(Signal::Nothing, Duration::ZERO).await;
            tracing::warn!("endpoint deleted or disabled; dead-lettering");
            let result = deps
                .outcomes
                .dead_letter_unattempted(job, DeadLetterReason::EndpointUnavailable, None, None)
                .await;
            return report.done(result.is_ok()).await;
        };
        let started_at = Utc::now();
        let trace = shared::telemetry::onward_context(parent);
        let exchange = attempt(deps, r, &endpoint, started_at, &trace).await;
        let signal = match (exchange.error_class, pause(&exchange)) {
            (None, _) => Signal::Success,
            (Some(ErrorClass::Gone), _) => Signal::Nothing,
            (Some(_), Some(d)) => Signal::Pause(d),
            (Some(_), None) => Signal::Failure,
        };
        report.sent(signal, exchange.duration).await;
        let durable = settle(deps, job, &endpoint, &exchange, started_at).await;
        report.done(durable).await;
    }
    .instrument(span)
    .await;
}

/// Runs `op` until it succeeds, retrying with backoff: the endpoint reads and updates of a job
/// carry nothing from outside, so every error they meet is the database being away. `None` at
/// shutdown.
async fn retrying<T, E, F, Fut>(deps: &Deps, what: &str, mut op: F) -> Option<T>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %shared::error_chain(&e), "{what} failed; retrying"),
        }
        tokio::select! {
            _ = deps.outcomes.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The endpoint from the cache or PostgreSQL; `None` at shutdown.
async fn load(deps: &Deps, id: &EndpointId) -> Option<Option<Arc<Endpoint>>> {
    retrying(deps, "loading the endpoint", || {
        deps.endpoints.get_or_load(&deps.pool, id)
    })
    .await
}

/// The pause a 429 or 503 asked for with `Retry-After`.
pub fn pause(x: &Exchange) -> Option<Duration> {
    matches!(x.status, Some(429 | 503))
        .then_some(x.retry_after)
        .flatten()
}

async fn attempt(
    deps: &Deps,
    r: &DeliveryRecord,
    endpoint: &Endpoint,
    started_at: DateTime<Utc>,
    trace: &opentelemetry::Context,
) -> Exchange {
    // The payload is carried as the publisher's JSON text: that text is the body.
    let body = r.payload.as_bytes().to_vec();
    let secrets: Vec<_> = endpoint.active_secrets(started_at).collect();
    let keys: Vec<_> = endpoint.active_signing_keys(started_at).collect();
    let mut headers = crate::sign::headers(
        endpoint.signature_scheme,
        &secrets,
        &keys,
        &endpoint.headers,
        &r.delivery_id.to_string(),
        started_at.timestamp(),
        &body,
    );
    shared::telemetry::inject_http(trace, &mut headers);
    let metrics = &deps.outcomes.metrics;
    metrics.in_flight.inc();
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
    metrics.in_flight.dec();
    let result = match exchange.status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "error",
    };
    metrics
        .http
        .get_or_create(&HttpResult { result })
        .observe(exchange.duration.as_secs_f64());
    match exchange.error_class {
        None => tracing::debug!(
            status = exchange.status,
            ms = u64::try_from(exchange.duration.as_millis()).unwrap_or(u64::MAX),
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

/// What an attempt leads to.
enum Next {
    Delivered,
    Retry(Duration),
    DeadLetter(DeadLetterReason, Option<String>),
}

/// Makes the outcome of an attempt durable: retry tier or DLQ record acked, row committed.
/// Returns whether it is durable (false only at shutdown).
async fn settle(
    deps: &Deps,
    job: &Job,
    endpoint: &Endpoint,
    x: &Exchange,
    started_at: DateTime<Utc>,
) -> bool {
    let r = &job.record;
    let o = &deps.outcomes;
    let duration_ms = u32::try_from(x.duration.as_millis()).unwrap_or(u32::MAX);
    let mut delivery = DeliveryRecord::clone(r);
    delivery.attempts.push(AttemptSummary {
        attempt: r.attempt,
        at: started_at,
        duration_ms,
        status_code: x.status,
        error_class: x.error_class,
    });
    let mut next = match x.error_class {
        None => Next::Delivered,
        Some(ErrorClass::Gone) => {
            let reason = format!("410 Gone received at {}", started_at.to_rfc3339());
            if !disable(deps, endpoint, &reason).await {
                return false;
            }
            Next::DeadLetter(DeadLetterReason::Gone, None)
        }
        Some(_) => {
            let step = usize::try_from(r.attempt)
                .ok()
                .and_then(|a| deps.schedule.get(a.wrapping_sub(1)));
            match step {
                Some(delay) => Next::Retry((*delay).max(pause(x).unwrap_or_default())),
                None => Next::DeadLetter(DeadLetterReason::Exhausted, None),
            }
        }
    };
    if let Next::Retry(wanted) = next {
        let mut retry = delivery.clone();
        retry.attempt = r.attempt + 1;
        match o.to_tier(job, retry, wanted).await {
            Ok(()) => {
                if let Some(class) = x.error_class {
                    o.metrics
                        .retries
                        .get_or_create(&Reason {
                            reason: class.as_str(),
                        })
                        .inc();
                }
            }
            Err(Failure::Permanent(e)) => {
                next = Next::DeadLetter(DeadLetterReason::Undeliverable, Some(e));
            }
            Err(Failure::Shutdown) => return false,
        }
    }
    let status = match &next {
        Next::Delivered => {
            let latency = (Utc::now() - r.occurred_at).to_std().unwrap_or_default();
            o.metrics.latency.observe(latency.as_secs_f64());
            DeliveryStatus::Delivered
        }
        Next::Retry(_) => DeliveryStatus::Retrying,
        Next::DeadLetter(..) => DeliveryStatus::DeadLettered,
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
        error: match &next {
            Next::DeadLetter(_, Some(e)) => Some(e.clone()),
            _ => x.error.clone(),
        },
        excerpt: x.excerpt.clone(),
        dead_letter: match &next {
            Next::DeadLetter(reason, _) => Some((*reason, o.source(job))),
            _ => None,
        },
    };
    let dead = async {
        match &next {
            Next::DeadLetter(reason, error) => o
                .dead_letter(job, delivery, *reason, Some(x), error.as_deref())
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    };
    let (a, b) = tokio::join!(dead, o.record(row));
    if a.and(b).is_err() {
        return false;
    }
    if status != DeliveryStatus::DeadLettered {
        o.count(status, &r.tenant_id);
    }
    true
}

/// Disables an endpoint that answered 410; false at shutdown.
async fn disable(deps: &Deps, endpoint: &Endpoint, reason: &str) -> bool {
    let disabled = retrying(deps, "disabling the endpoint", || {
        deps.endpoints.disable(&deps.pool, &endpoint.id, reason)
    })
    .await;
    if disabled.is_none() {
        return false;
    }
    deps.outcomes.metrics.disabled.inc();
    tracing::warn!("endpoint answered 410 Gone; disabled");
    true
}
