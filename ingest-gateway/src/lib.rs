//! The tenant HTTP API: authenticates (JWT, in the service), validates, and publishes events
//! to the `events` topic; manages tenants, endpoints and subscriptions; reads events,
//! deliveries and the DLQ; replays deliveries.
//!
//! `run(config, shutdown)` is the whole service; `main.rs` only loads the configuration.

mod auth;
mod error;
mod extract;
pub mod grammar;
mod metrics;
mod openapi;
mod pagination;
mod publish;
mod routes;
mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use prometheus_client::registry::Registry;
use shared::Config;
use shared::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

pub use auth::JwksError;
pub use routes::ROUTES;

/// The service's name in logs, traces, Kafka client ids and consumer groups.
pub const NAME: &str = shared::kafka::Principal::IngestGateway.name();

/// The OpenAPI document this build serves at `/openapi.json`.
pub fn openapi_document() -> &'static serde_json::Value {
    openapi::document()
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("loading the token keys")]
    Jwks(#[from] JwksError),
}

impl From<GatewayError> for ServiceError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Service(s) => s,
            GatewayError::Jwks(j) => ServiceError::Dependency(Box::new(j)),
        }
    }
}

/// Starts the gateway in the background and returns once it is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServiceError> {
    start_gateway(config, shutdown).await.map_err(Into::into)
}

async fn start_gateway(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Running, GatewayError> {
    let foundation = shared::service::prepare(NAME, &config).await?;
    // Publishing has its own producer whose message timeout is the publish deadline: when we
    // answer 503, librdkafka has given up on the record (see publish.rs).
    let mut kafka = config.kafka.clone();
    kafka.message_timeout_ms = u32::try_from(config.gateway.publish_timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1000);
    let producer = shared::kafka::producer(&kafka, NAME).map_err(ServiceError::from)?;

    let mut registry = Registry::with_prefix("harborhook");
    let metrics = metrics::Metrics::register(&mut registry);
    let verifier = auth::Verifier::new(config.gateway.auth.clone(), metrics.clone()).await?;
    let keys = verifier.keys();
    let state = state::AppState::new(
        foundation.pool.clone(),
        kafka,
        producer,
        foundation.catalog.clone(),
        &config,
        verifier,
        metrics.clone(),
    );
    let ops = shared::ops::router(
        Arc::new(registry),
        foundation.readiness(),
        foundation.health(),
    );
    let limit = config.gateway.max_body_bytes;
    let app = Router::new()
        .merge(routes::api())
        .route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(openapi::document().clone()) }),
        )
        .fallback(|| async { error::ApiError::NotFound("route") })
        .method_not_allowed_fallback(|uri: axum::http::Uri| async move {
            error::ApiError::MethodNotAllowed(
                routes::documented_methods(uri.path()).unwrap_or_default(),
            )
        })
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(routes::check_method))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(extract::BodyLimit(limit)))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .merge(ops);

    let prune = state.clone();
    let stop = shutdown.clone();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => prune.prune_rate_limits(),
            }
        }
    });

    let listener = shared::service::bind(config.gateway.listen).await?;
    let serving = shared::service::serve(listener, app, shutdown.clone())?;
    // Spawned once serving started, so a failed start leaves no task behind.
    let refresher = tokio::spawn(keys.refresh_periodically(shutdown));
    let running = serving
        .with_task("rate-limit-pruner", pruner)
        .with_task("jwks-refresher", refresher);
    tracing::info!(addr = %running.local_addr, "gateway listening");
    Ok(running)
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    start(config, shutdown).await?.wait().await
}
