//! Sends signed webhook POSTs and routes outcomes to retry tiers or the DLQ.
//!
//! `run(config, shutdown)` is the whole service; `main.rs` only loads the configuration. Today
//! the service connects to PostgreSQL (applying migrations), ensures the topics and serves
//! `/healthz`, `/readyz` and `/metrics` on `delivery.ops_listen`; its pipeline is built on this in its own
//! issue (see docs/architecture.md).

use prometheus_client::registry::Registry;
use shared::Config;
use shared::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service's name in logs, traces, Kafka client ids and consumer groups.
pub const NAME: &str = "delivery-consumer";

/// Starts the service in the background and returns once it is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServiceError> {
    let registry = Registry::with_prefix("harborhook");
    let (_foundation, running) = shared::service::start_ops(
        NAME,
        config.delivery.ops_listen,
        &config,
        registry,
        shutdown,
    )
    .await?;
    Ok(running)
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    start(config, shutdown).await?.wait().await
}
