//! Joins events with subscriptions and emits one delivery record per (event, endpoint).
//!
//! `run(config, shutdown)` is the whole service; `main.rs` only loads the configuration. The
//! design is in docs/fanout.md: the subscription cache (cache.rs), one batch's effects and why
//! repeating them is safe (batch.rs), and the offset discipline (consume.rs).

mod batch;
mod cache;
mod consume;
mod metrics;

use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer as _;
use shared::Config;
use shared::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

pub use batch::INVALID_REASON_HEADER;

/// The service's name in logs, traces, Kafka client ids and consumer groups.
pub const NAME: &str = shared::kafka::Principal::FanoutProcessor.name();

/// Starts the service in the background and returns once it is listening and its cache is
/// loaded.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServiceError> {
    let mut registry = Registry::with_prefix("harborhook");
    let metrics = metrics::Metrics::register(&mut registry);
    let (foundation, ops) = shared::service::start_ops(
        NAME,
        config.fanout.ops_listen,
        &config,
        registry,
        shutdown.clone(),
    )
    .await?;

    let cache = cache::Cache::default();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let maintain = tokio::spawn(shared::config_watch::maintain(
        cache.clone(),
        foundation.pool.clone(),
        config.clone(),
        config.fanout.cache_reload_interval,
        ready_tx,
        foundation.liveness.register("config-listener"),
        shutdown.clone(),
    ));
    // Fan-out against an empty cache would drop every event's deliveries: wait for the load.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = ready_rx.wait_for(|ready| *ready) => {}
    }

    let access = shared::kafka::access(shared::kafka::Principal::FanoutProcessor, &config);
    let group = access.group_id().to_owned();
    let fanout = batch::Fanout {
        pool: foundation.pool.clone(),
        producer: foundation.producer.clone(),
        catalog: foundation.catalog.clone(),
        cache,
        metrics,
        idempotency_window: config.idempotency.window,
        produce_timeout: std::time::Duration::from_millis(u64::from(
            config.kafka.message_timeout_ms,
        )),
        limits: config.record_limits(),
    };
    let mut tasks = vec![("config-listener".to_owned(), maintain)];
    for n in 0..config.fanout.workers {
        let client_id = format!("{NAME}-{n}");
        let consumer = shared::kafka::consumer(
            &config.kafka,
            &client_id,
            &group,
            shared::kafka::Rebalancing::default(),
        )?;
        consumer.subscribe(&access.subscription())?;
        let consumer = std::sync::Arc::new(consumer);
        let gauges = fanout.metrics.clone();
        // The events backlog an operator alerts on (KEDA reads the same from the broker).
        tasks.push((
            format!("lag-reporter-{n}"),
            tokio::spawn(shared::kafka::report_lag(
                consumer.clone(),
                shutdown.clone(),
                move |partition, lag| {
                    gauges
                        .lag
                        .get_or_create(&metrics::Partition { partition })
                        .set(lag);
                },
            )),
        ));
        let settings = consume::BatchSettings {
            max: config.fanout.max_batch,
            linger: config.fanout.batch_linger,
        };
        let name = format!("fanout-worker-{n}");
        let heartbeat = foundation.liveness.register(name.clone());
        tasks.push((
            name,
            tokio::spawn(consume::run(
                consumer,
                fanout.clone(),
                settings,
                heartbeat,
                shutdown.clone(),
            )),
        ));
    }
    Ok(ops.with_tasks(tasks))
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    start(config, shutdown).await?.wait().await
}
