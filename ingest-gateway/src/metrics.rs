//! The gateway's metrics (all prefixed `harborhook_` by the registry):
//! `events_published_total{tenant_id}`, `http_request_duration_seconds{route,status_class}`,
//! `broker_produce_duration_seconds`, and the token keys' freshness:
//! `jwks_loaded_timestamp_seconds`, `jwks_keys`, `jwks_refresh_failures_total`.

use std::time::Instant;

use tracing::Instrument as _;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status_class: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone)]
pub struct Metrics {
    pub published: Family<TenantLabel, Counter>,
    pub requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub produce: Histogram,
    jwks_loaded_at: Gauge,
    jwks_keys: Gauge,
    jwks_failures: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            published: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            produce: latency_histogram(),
            jwks_loaded_at: Gauge::default(),
            jwks_keys: Gauge::default(),
            jwks_failures: Counter::default(),
        };
        registry.register(
            "jwks_loaded_timestamp_seconds",
            "When the token keys were last loaded (Unix time); far behind jwks_cache_ttl means refreshes fail",
            metrics.jwks_loaded_at.clone(),
        );
        registry.register(
            "jwks_keys",
            "Usable signing keys in the loaded JWKS",
            metrics.jwks_keys.clone(),
        );
        registry.register(
            "jwks_refresh_failures",
            "JWKS fetches that failed (the keys already loaded stay in use)",
            metrics.jwks_failures.clone(),
        );
        registry.register(
            "events_published",
            "Events accepted and acknowledged by the broker",
            metrics.published.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request duration by route and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "broker_produce_duration_seconds",
            "Time from produce to broker acknowledgement",
            metrics.produce.clone(),
        );
        metrics
    }

    pub fn jwks_loaded(&self, keys: usize) {
        self.jwks_loaded_at.set(chrono::Utc::now().timestamp());
        self.jwks_keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    pub fn jwks_refresh_failed(&self) {
        self.jwks_failures.inc();
    }
}

tokio::task_local! {
    /// The trace context the caller sent (`traceparent`), for the request's whole handling.
    static CALLER: shared::kafka::TraceContext;
}

/// The context a record produced for this request carries: the request span's when tracing is
/// installed, else the caller's own (so its trace id still travels when no OpenTelemetry layer
/// is, or the span was filtered out); a new trace when there is neither (`Outgoing`).
pub fn onward_context() -> shared::kafka::TraceContext {
    shared::telemetry::onward_context(CALLER.try_with(Clone::clone).unwrap_or_default())
}

/// Runs every request in a span (child of the caller's `traceparent`, if any, so its trace id
/// reaches the Kafka headers) and times it, labelled by its route template (not the raw path:
/// ids would explode the label set).
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", method = %request.method(), route = %route);
    let caller = shared::telemetry::extract_http(request.headers());
    shared::telemetry::set_parent(&span, caller.clone());
    let start = Instant::now();
    let response = CALLER
        .scope(caller, next.run(request).instrument(span))
        .await;
    let status_class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics
        .requests
        .get_or_create(&RouteLabels {
            route,
            status_class,
        })
        .observe(start.elapsed().as_secs_f64());
    response
}
