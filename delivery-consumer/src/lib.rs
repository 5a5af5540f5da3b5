//! Sends signed webhook POSTs and routes outcomes to retry tiers or the DLQ, without letting a
//! bad endpoint slow anyone else. The design is in docs/delivery.md; the parts: the dispatcher
//! (dispatch.rs), its scheduling and shared budgets (admission.rs) and lanes (lanes.rs), the
//! offset watermark (offsets.rs), one record's work (job.rs), making outcomes durable
//! (outcome.rs), signing (sign.rs), the HTTP client and SSRF guard (http.rs, ssrf.rs), the
//! endpoint cache (endpoints.rs) and the attempt writer (attempts.rs).
//!
//! `run(config, shutdown)` is the whole service; `main.rs` only loads the configuration.

mod admission;
mod attempts;
mod dispatch;
mod endpoints;
mod http;
mod job;
mod lanes;
mod metrics;
mod offsets;
mod outcome;
mod sign;
mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer as _;
use shared::Config;
use shared::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service's name in logs, traces, Kafka client ids and consumer groups.
pub const NAME: &str = shared::kafka::Principal::DeliveryConsumer.name();

/// Starts the service in the background and returns once it is listening and its endpoint
/// cache is loaded.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServiceError> {
    let mut registry = Registry::with_prefix("harborhook");
    let metrics = metrics::Metrics::register(&mut registry);
    let (foundation, ops) = shared::service::start_ops(
        NAME,
        config.delivery.ops_listen,
        &config,
        registry,
        shutdown.clone(),
    )
    .await?;
    let d = &config.delivery;
    let http = http::Http::new(d).map_err(|e| ServiceError::Start {
        what: "building the HTTP client",
        source: Box::new(e),
    })?;

    let endpoints = endpoints::EndpointCache::default();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let maintain = tokio::spawn(shared::config_watch::maintain(
        endpoints.clone(),
        foundation.pool.clone(),
        config.clone(),
        d.cache_reload_interval,
        ready_tx,
        foundation.liveness.register("config-listener"),
        shutdown.clone(),
    ));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = ready_rx.wait_for(|ready| *ready) => {}
    }

    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = attempts::Writer::spawn(
        foundation.pool.clone(),
        attempts::Settings {
            batch: d.attempt_batch,
            linger: d.attempt_linger,
            skipped: metrics.rows_skipped.clone(),
            heartbeat: foundation.liveness.register("attempt-writer"),
        },
        writer_stop.clone(),
    );
    let tiers = foundation.catalog.retry_tiers().to_vec();
    let max_pause = tiers.last().map_or(Duration::from_secs(3600), |t| t.delay);
    let total: Duration = config.retry.schedule.iter().sum();
    let abandon = CancellationToken::new();
    let deps = Arc::new(job::Deps {
        pool: foundation.pool.clone(),
        endpoints,
        http,
        outcomes: outcome::Outcomes {
            producer: foundation.producer.clone(),
            writer,
            tiers,
            jitter_max: config.retry.jitter_max,
            dlq_topic: foundation.catalog.dlq().to_owned(),
            deliveries_topic: foundation.catalog.deliveries().to_owned(),
            produce_timeout: Duration::from_millis(u64::from(config.kafka.message_timeout_ms)),
            metrics: metrics.clone(),
            shutdown: abandon.clone(),
        },
        schedule: config.retry.schedule.clone(),
        horizon: chrono::Duration::from_std(total * 2).unwrap_or(chrono::Duration::days(3)),
    });

    let access = shared::kafka::access(shared::kafka::Principal::DeliveryConsumer, &config);
    let group = access.group_id();
    let consumer: rdkafka::consumer::StreamConsumer<shared::kafka::Rebalancing> =
        shared::kafka::consumer_config(&config.kafka, NAME, group)
            // Reading pauses at max_pending; librdkafka's own prefetch is bounded too.
            .set("queued.max.messages.kbytes", "16384")
            // A crash repeats what finished since the last commit, and here a repeat is an
            // HTTP request a receiver sees: commit the stored watermark more often.
            .set("auto.commit.interval.ms", "250")
            .create_with_context(shared::kafka::Rebalancing::default())?;
    consumer.subscribe(&access.subscription())?;
    let consumer = Arc::new(consumer);

    let lag = tokio::spawn(shared::kafka::report_lag(
        consumer.clone(),
        shutdown.clone(),
        move |partition, lag| {
            metrics
                .lag
                .get_or_create(&metrics::Partition { partition })
                .set(lag);
        },
    ));
    let share = |total: usize, share: f64| admission::share(total, share);
    let dispatcher = dispatch::Dispatcher {
        consumer,
        topic: foundation.catalog.deliveries().to_owned(),
        deps,
        settings: dispatch::Settings {
            max_pending: d.max_pending,
            drain_timeout: d.drain_timeout,
            limits: admission::Limits {
                max_in_flight: d.max_in_flight,
                tenant_in_flight: share(d.max_in_flight, d.tenant_share),
                endpoint_in_flight: u32::try_from(share(d.max_in_flight, d.endpoint_share))
                    .unwrap_or(u32::MAX),
                tenant_pending: share(d.max_pending, d.tenant_share),
                endpoint_pending: share(d.max_pending, d.endpoint_share),
                endpoint_queue: d.endpoint_queue,
                max_queue_wait: d.max_queue_wait,
                max_pause,
                breaker: lanes::Breaker {
                    threshold: d.circuit_failure_threshold,
                    cooldown: d.circuit_cooldown,
                    max_cooldown: d.circuit_max_cooldown,
                },
            },
        },
        heartbeat: foundation.liveness.register("dispatcher"),
        abandon,
    };
    let worker = tokio::spawn(async move {
        dispatcher.run(shutdown).await;
        // The dispatcher has drained: let the writer finish what it holds.
        writer_stop.cancel();
    });
    Ok(ops.with_tasks(vec![
        ("config-listener".to_owned(), maintain),
        ("lag-reporter".to_owned(), lag),
        ("dispatcher".to_owned(), worker),
        ("attempt-writer".to_owned(), writer_task),
    ]))
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    start(config, shutdown).await?.wait().await
}
