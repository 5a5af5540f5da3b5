//! The delivery-consumer's metrics, named after the replaced system's so its dashboards keep
//! working (the registry prefixes `harborhook_`): `deliveries_total{status}`,
//! `delivery_latency_seconds` (event time to delivered, end to end),
//! `http_delivery_duration_seconds{result}`, `retries_total{reason}`, `dlq_total{reason}`;
//! plus `delivery_in_flight`, `delivery_pending`, `endpoint_circuits_open`,
//! `endpoints_paused`, `endpoints_disabled_total`, `delivery_consumer_lag{partition}`,
//! `delivery_malformed_total`, `delivery_task_panics_total` (a bug: the record was
//! dead-lettered as undeliverable), `outcome_records_refused_total{record}` (a retry or
//! dead-letter record the broker refused for good), `attempt_rows_skipped_total` (rows
//! PostgreSQL refused even stripped), and `tenant_deliveries_total{tenant_id,status}` for the per-tenant
//! dashboard. No label names an endpoint: cardinality is bounded by the number of tenants
//! (as the gateway's `events_published_total{tenant_id}`), whatever the tenants' endpoints do.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordKind {
    pub record: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpResult {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Partition {
    pub partition: i32,
}

fn latency() -> Histogram {
    // 5 ms … ~11 h: end to end includes retries.
    Histogram::new(exponential_buckets(0.005, 2.0, 24))
}

fn http_duration() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// A tenant's delivery outcomes: open-ended (one label set per tenant and status), bounded by
/// the number of tenants, like the gateway's `events_published_total{tenant_id}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantStatus {
    pub tenant_id: String,
    pub status: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub deliveries: Family<Status, Counter>,
    pub tenant_deliveries: Family<TenantStatus, Counter>,
    pub latency: Histogram,
    pub http: Family<HttpResult, Histogram, fn() -> Histogram>,
    pub retries: Family<Reason, Counter>,
    pub dlq: Family<Reason, Counter>,
    pub in_flight: Gauge,
    pub pending: Gauge,
    pub circuits_open: Gauge,
    pub paused: Gauge,
    pub disabled: Counter,
    pub lag: Family<Partition, Gauge>,
    pub malformed: Counter,
    pub panics: Counter,
    pub refused: Family<RecordKind, Counter>,
    pub rows_skipped: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            deliveries: Family::default(),
            tenant_deliveries: Family::default(),
            latency: latency(),
            http: Family::new_with_constructor(http_duration),
            retries: Family::default(),
            dlq: Family::default(),
            in_flight: Gauge::default(),
            pending: Gauge::default(),
            circuits_open: Gauge::default(),
            paused: Gauge::default(),
            disabled: Counter::default(),
            lag: Family::default(),
            malformed: Counter::default(),
            panics: Counter::default(),
            refused: Family::default(),
            rows_skipped: Counter::default(),
        };
        registry.register(
            "deliveries",
            "Delivery outcomes: delivered, retrying, dead_lettered, deferred",
            m.deliveries.clone(),
        );
        registry.register(
            "tenant_deliveries",
            "Delivery outcomes per tenant: delivered, retrying (a failed attempt), dead_lettered",
            m.tenant_deliveries.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Event time to successful delivery, end to end",
            m.latency.clone(),
        );
        registry.register(
            "http_delivery_duration_seconds",
            "Duration of one HTTP attempt, by result (2xx, 3xx, 4xx, 5xx, error)",
            m.http.clone(),
        );
        registry.register(
            "retries",
            "Deliveries sent to a retry tier, by reason (error class or deferral)",
            m.retries.clone(),
        );
        registry.register("dlq", "Deliveries dead-lettered, by reason", m.dlq.clone());
        registry.register(
            "delivery_in_flight",
            "HTTP requests in flight",
            m.in_flight.clone(),
        );
        registry.register(
            "delivery_pending",
            "Records read whose outcome is not yet durable",
            m.pending.clone(),
        );
        registry.register(
            "endpoint_circuits_open",
            "Endpoints whose circuit breaker is open or probing",
            m.circuits_open.clone(),
        );
        registry.register(
            "endpoints_paused",
            "Endpoints paused by Retry-After",
            m.paused.clone(),
        );
        registry.register(
            "endpoints_disabled",
            "Endpoints disabled because they answered 410 Gone",
            m.disabled.clone(),
        );
        registry.register(
            "delivery_consumer_lag",
            "Records not yet read from this instance's deliveries partitions",
            m.lag.clone(),
        );
        registry.register(
            "delivery_malformed",
            "Malformed records on deliveries, logged and skipped",
            m.malformed.clone(),
        );
        registry.register(
            "delivery_task_panics",
            "Delivery tasks that panicked (a bug); their records were dead-lettered as undeliverable",
            m.panics.clone(),
        );
        registry.register(
            "outcome_records_refused",
            "Retry or dead-letter records the broker refused for good (too large, invalid), by record",
            m.refused.clone(),
        );
        registry.register(
            "attempt_rows_skipped",
            "Attempt rows PostgreSQL refused even with their texts stripped; logged and skipped",
            m.rows_skipped.clone(),
        );
        m.init_label_sets();
        m
    }

    /// Every series of a closed label set exists from the start, at zero: a ratio such as the
    /// delivery SLO (dead-lettered ÷ delivered) and `rate()` over the first increment work
    /// without waiting for the first failure, and the scrape lists every metric the alerts use.
    fn init_label_sets(&self) {
        use shared::domain::{DeliveryStatus, ErrorClass};
        use shared::records::DeadLetterReason;
        let statuses = [
            DeliveryStatus::Delivered,
            DeliveryStatus::Retrying,
            DeliveryStatus::DeadLettered,
        ];
        for status in statuses
            .map(DeliveryStatus::as_str)
            .into_iter()
            .chain(["deferred"])
        {
            drop(self.deliveries.get_or_create(&Status { status }));
        }
        for record in ["retry", "dead_letter"] {
            drop(self.refused.get_or_create(&RecordKind { record }));
        }
        for reason in DeadLetterReason::ALL {
            drop(self.dlq.get_or_create(&Reason {
                reason: reason.as_str(),
            }));
        }
        let classes = [
            ErrorClass::Timeout,
            ErrorClass::Connect,
            ErrorClass::Forbidden,
            ErrorClass::Http5xx,
            ErrorClass::Http4xx,
            ErrorClass::RateLimited,
            ErrorClass::Redirect,
            ErrorClass::CircuitOpen,
        ];
        for reason in classes
            .map(ErrorClass::as_str)
            .into_iter()
            .chain(crate::job::Deferral::ALL.map(crate::job::Deferral::as_str))
        {
            drop(self.retries.get_or_create(&Reason { reason }));
        }
        for result in ["2xx", "3xx", "4xx", "5xx", "error"] {
            drop(self.http.get_or_create(&HttpResult { result }));
        }
    }
}
