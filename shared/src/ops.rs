//! The operations endpoints every service serves: `/healthz` (liveness: the process answers),
//! `/readyz` (the broker and the database answer, each within a deadline) and `/metrics`
//! (Prometheus text format from the service's prometheus-client registry).
//!
//! Liveness deliberately checks nothing external: restarting a pod because Kafka is down would
//! only add a restart storm to an outage. Readiness takes the pod out of load balancing instead.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_postgres::Pool;
use prometheus_client::registry::Registry;
use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, Producer as _};
use serde_json::json;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: Pool,
    pub producer: FutureProducer,
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The ops routes, to be merged into a service's own router (the gateway) or served alone.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let database =
        match tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&state.readiness.pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err("timed out".to_owned()),
        };
    let producer = state.readiness.producer.clone();
    let broker = tokio::task::spawn_blocking(move || broker_reachable(producer.client()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let ready = database.is_ok() && broker.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"database": show(&database), "broker": show(&broker)},
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

fn broker_reachable<C: ClientContext>(client: &rdkafka::client::Client<C>) -> Result<(), String> {
    // Metadata for no particular topic: a round trip to a broker, nothing more.
    let metadata = client
        .fetch_metadata(None, CHECK_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if metadata.brokers().is_empty() {
        return Err("no brokers in metadata".into());
    }
    Ok(())
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
