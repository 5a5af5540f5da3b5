//! The fanout-processor's metrics (prefixed `harborhook_` by the registry):
//! `fanout_events_total{outcome}` (fanned_out, no_subscribers, duplicate, invalid, dropped:
//! a record that could not even be quarantined),
//! `fanout_deliveries_total{status}` (pending, skipped), `fanout_batch_duration_seconds`,
//! `fanout_consumer_lag{partition}` (records not yet read from this instance's `events`
//! partitions).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Partition {
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    events: Family<Outcome, Counter>,
    deliveries: Family<Status, Counter>,
    pub batch_seconds: Histogram,
    pub lag: Family<Partition, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events: Family::default(),
            deliveries: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            lag: Family::default(),
        };
        registry.register(
            "fanout_events",
            "Events handled, by outcome",
            m.events.clone(),
        );
        registry.register(
            "fanout_deliveries",
            "Delivery records, by status",
            m.deliveries.clone(),
        );
        registry.register(
            "fanout_batch_duration_seconds",
            "Time to persist and emit one batch",
            m.batch_seconds.clone(),
        );
        registry.register(
            "fanout_consumer_lag",
            "Records not yet read from this instance's events partitions",
            m.lag.clone(),
        );
        // Every outcome and status exists from the start, at zero (rate() and ratios work
        // before the first occurrence).
        for outcome in [
            "fanned_out",
            "no_subscribers",
            "duplicate",
            "invalid",
            "dropped",
        ] {
            drop(m.events.get_or_create(&Outcome { outcome }));
        }
        for status in ["pending", "skipped"] {
            drop(m.deliveries.get_or_create(&Status { status }));
        }
        m
    }

    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn delivery(&self, status: &'static str) {
        self.deliveries.get_or_create(&Status { status }).inc();
    }
}
