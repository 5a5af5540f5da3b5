//! Moves due records from the retry tier topics back to `deliveries`, never early and, in
//! steady state, within a second of their due time. The design is in schedule.rs and
//! docs/retry.md.
//!
//! `run(config, shutdown)` is the whole service; `main.rs` only loads the configuration.

mod metrics;
mod schedule;

use std::collections::HashMap;

use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer as _;
use shared::Config;
use shared::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service's name in logs, traces, Kafka client ids and consumer groups.
pub const NAME: &str = shared::kafka::Principal::RetryScheduler.name();

/// Starts the service in the background and returns once it is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServiceError> {
    let mut registry = Registry::with_prefix("harborhook");
    let metrics = metrics::Metrics::register(&mut registry);
    let (foundation, ops) = shared::service::start_ops(
        NAME,
        config.scheduler.ops_listen,
        &config,
        registry,
        shutdown.clone(),
    )
    .await?;
    let access = shared::kafka::access(shared::kafka::Principal::RetryScheduler, &config);
    let group = access.group_id();
    // A resumed partition's head record should arrive at once, not after a long-poll wait.
    let consumer: rdkafka::consumer::StreamConsumer<shared::kafka::Rebalancing> =
        shared::kafka::consumer_config(&config.kafka, NAME, group)
            .set("fetch.wait.max.ms", "100")
            // Only each partition's head matters; a small prefetch keeps memory flat however
            // many retries are pending (docs/performance.md).
            .set("queued.min.messages", "1000")
            .set("queued.max.messages.kbytes", "4096")
            .create_with_context(shared::kafka::Rebalancing::resuming())?;
    let tiers: HashMap<String, String> = foundation
        .catalog
        .retry_tiers()
        .iter()
        .map(|t| (t.topic.clone(), t.name.clone()))
        .collect();
    metrics.init_tiers(tiers.values());
    consumer.subscribe(&access.subscription())?;
    let scheduler = schedule::Scheduler {
        consumer,
        producer: foundation.producer.clone(),
        pool: foundation.pool.clone(),
        deliveries_topic: foundation.catalog.deliveries().to_owned(),
        dlq_topic: foundation.catalog.dlq().to_owned(),
        tiers,
        metrics,
        produce_timeout: std::time::Duration::from_millis(u64::from(
            config.kafka.message_timeout_ms,
        )),
        heartbeat: foundation.liveness.register("scheduler"),
    };
    let worker = tokio::spawn(scheduler.run(shutdown));
    Ok(ops.with_task("scheduler", worker))
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    start(config, shutdown).await?.wait().await
}
