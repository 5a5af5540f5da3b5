//! What every handler shares: connections, configuration, the token verifier, rate limits and
//! metrics.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::producer::{FutureProducer, Producer as _};
use shared::config::{GatewayConfig, KafkaConfig};
use shared::kafka::TopicCatalog;

use crate::auth::{Principal, Verifier};
use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: Pool,
    producer: RwLock<FutureProducer>,
    kafka: KafkaConfig,
    pub catalog: TopicCatalog,
    pub config: GatewayConfig,
    pub verifier: Verifier,
    pub metrics: Metrics,
    /// The largest payload the pipeline carries (shared::records::limits).
    pub limits: shared::records::RecordLimits,
    /// How long a (tenant, idempotency key) maps to its first event (`idempotency.window`).
    pub idempotency_window: std::time::Duration,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        pool: Pool,
        kafka: KafkaConfig,
        producer: FutureProducer,
        catalog: TopicCatalog,
        config: &shared::Config,
        verifier: Verifier,
        metrics: Metrics,
    ) -> Self {
        let limits = config.record_limits();
        let idempotency_window = config.idempotency.window;
        let config = config.gateway.clone();
        let rate = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst));
        Self(Arc::new(Inner {
            pool,
            producer: RwLock::new(producer),
            kafka,
            catalog,
            config,
            verifier,
            metrics,
            limits,
            idempotency_window,
            limiter,
        }))
    }

    /// The current producer (a cheap handle).
    pub fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a failed send: an idempotent producer that hit a fatal error (e.g. the broker
    /// lost its producer state) refuses every later send, so replace it with a new one.
    pub fn replace_producer_if_fatal(&self) {
        let mut slot = self
            .producer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((code, reason)) = slot.client().fatal_error() {
            tracing::error!(
                ?code,
                reason,
                "producer hit a fatal error; creating a new one"
            );
            match shared::kafka::producer(&self.kafka, crate::NAME) {
                Ok(fresh) => *slot = fresh,
                Err(e) => tracing::error!(error = %e, "creating a new producer failed"),
            }
        }
    }

    /// Takes one token from the caller's bucket, or answers 429 with when to come back.
    pub fn check_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        self.limiter
            .check_key(&principal.rate_key())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil() as u64,
                }
            })
    }

    /// Forgets buckets that are full again, so the map does not grow with every tenant ever seen.
    pub fn prune_rate_limits(&self) {
        self.limiter.retain_recent();
    }
}
