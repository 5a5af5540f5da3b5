//! The operations endpoints every service serves: `/healthz` (liveness: the service's own loops
//! run and progress, liveness.rs), `/readyz` (the broker and the database answer, each within
//! a deadline) and `/metrics` (Prometheus text format from the service's prometheus-client
//! registry).
//!
//! Liveness never fails because a dependency is down: restarting a pod because Kafka is down
//! would only add a restart storm to an outage, and readiness takes the pod out of load
//! balancing instead. It fails when a loop hangs, or when a busy loop makes no progress although
//! the dependencies answer: then a restart is what helps.

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

/// What `/healthz` checks: the service's loops, and how long they may stall.
#[derive(Clone)]
pub struct Health {
    pub liveness: crate::liveness::Liveness,
    pub stall_timeout: Duration,
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    readiness: Readiness,
    health: Health,
}

/// The ops routes, to be merged into a service's own router (the gateway) or served alone.
pub fn router(registry: Arc<Registry>, readiness: Readiness, health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            readiness,
            health,
        })
}

async fn healthz(State(state): State<OpsState>) -> Response {
    let stalls = state.health.liveness.stalls(state.health.stall_timeout);
    if stalls.is_empty() {
        return "ok\n".into_response();
    }
    // Loops that only wait on a dependency their work fails on: an outage, not a stall.
    if stalls.iter().all(|s| s.kind == "waiting") {
        return (
            StatusCode::OK,
            axum::Json(json!({"status": "waiting_on_dependency", "loops": stalls})),
        )
            .into_response();
    }
    let hung = stalls.iter().any(|s| s.kind == "hung");
    // A busy loop without progress is stuck only if what it waits on is there: otherwise it
    // is an outage, and a restart would not help (module docs).
    let (database, broker) = checks(&state.readiness).await;
    let dependencies_up = database.is_ok() && broker.is_ok();
    if !hung && !dependencies_up {
        return (
            StatusCode::OK,
            axum::Json(json!({"status": "waiting_on_dependency", "loops": stalls})),
        )
            .into_response();
    }
    tracing::error!(loops = ?stalls, "liveness failed: a loop is not making progress");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "stalled", "loops": stalls})),
    )
        .into_response()
}

/// Both dependency checks, at once: each has its own 2 s deadline, so the answer comes within
/// ~2 s, inside the probes' timeout (3 s in deploy/).
async fn checks(readiness: &Readiness) -> (Result<(), String>, Result<(), String>) {
    let database = async {
        match tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&readiness.pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let producer = readiness.producer.clone();
    let broker = async move {
        tokio::task::spawn_blocking(move || broker_reachable(producer.client()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    tokio::join!(database, broker)
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (database, broker) = checks(&state.readiness).await;
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
