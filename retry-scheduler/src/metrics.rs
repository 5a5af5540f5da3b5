//! The retry-scheduler's metrics (prefixed `harborhook_` by the registry):
//! `retry_reenqueued_total{tier}`, `retry_lateness_seconds{tier}` (re-enqueue time minus due
//! time), `retry_paused_partitions`, `retry_malformed_total{tier}`, `retry_lag{tier}` (records
//! waiting in the tier partitions this instance owns: pending retries, due or not).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tier {
    pub tier: String,
}

fn lateness() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone)]
pub struct Metrics {
    pub reenqueued: Family<Tier, Counter>,
    pub lateness: Family<Tier, Histogram, fn() -> Histogram>,
    pub paused: Gauge,
    pub malformed: Family<Tier, Counter>,
    pub lag: Family<Tier, Gauge>,
    pub undeliverable: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reenqueued: Family::default(),
            lateness: Family::new_with_constructor(lateness),
            paused: Gauge::default(),
            malformed: Family::default(),
            lag: Family::default(),
            undeliverable: Counter::default(),
        };
        registry.register(
            "retry_reenqueued",
            "Retry records re-enqueued to deliveries, by tier",
            m.reenqueued.clone(),
        );
        registry.register(
            "retry_lateness_seconds",
            "Re-enqueue time minus due time, by tier",
            m.lateness.clone(),
        );
        registry.register(
            "retry_paused_partitions",
            "Tier partitions paused until their head record is due",
            m.paused.clone(),
        );
        registry.register(
            "retry_malformed",
            "Malformed retry records skipped, by tier",
            m.malformed.clone(),
        );
        registry.register(
            "retry_lag",
            "Records waiting in this instance's tier partitions, by tier",
            m.lag.clone(),
        );
        registry.register(
            "retry_undeliverable",
            "Due deliveries the broker refused to take back (too large, invalid); dead-lettered",
            m.undeliverable.clone(),
        );
        m
    }

    /// Every tier's series exist from the start, at zero: alerts and dashboards see each tier
    /// before its first retry.
    pub fn init_tiers<'a>(&self, tiers: impl IntoIterator<Item = &'a String>) {
        for tier in tiers {
            let t = Tier { tier: tier.clone() };
            drop(self.reenqueued.get_or_create(&t));
            drop(self.lateness.get_or_create(&t));
            drop(self.malformed.get_or_create(&t));
        }
    }
}
