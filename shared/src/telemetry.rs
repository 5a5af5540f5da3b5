//! Logs, traces and the metrics registry.
//!
//! Logs are JSON lines on stdout (level from `RUST_LOG`, default `info`), with the fields of the
//! enclosing spans, so a line inside a delivery's span carries its tenant, event, delivery and
//! endpoint ids. Every span also gets an OpenTelemetry span (tracing-opentelemetry), whether or
//! not an exporter is configured: that is what gives a span a trace id to put in Kafka headers.
//! With an OTLP endpoint (`telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`) spans are
//! also exported over OTLP/HTTP in batches, over TLS (rustls with ring, as outbound webhooks)
//! for an `https://` endpoint, trusting the system's roots and `telemetry.otlp_ca_file`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error(transparent)]
    CaFile(#[from] crate::tls::CaFileError),
    #[error("building the OTLP HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The exporter's HTTP client: rustls, the system's roots plus `ca_file`. Built on a thread of
/// its own: a blocking reqwest client owns a runtime, which may not be created (or dropped)
/// inside the async runtime the services call `init` from.
fn otlp_client(
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::blocking::Client, TelemetryError> {
    let roots = crate::tls::extra_roots("telemetry.otlp_ca_file", ca_file)?;
    std::thread::spawn(move || {
        roots
            .into_iter()
            .fold(
                crate::tls::blocking_http_client().timeout(std::time::Duration::from_secs(10)),
                reqwest::blocking::ClientBuilder::add_root_certificate,
            )
            .build()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    .map_err(TelemetryError::Client)
}

/// Flushes and stops trace export when dropped; keep it alive for the life of the process.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "trace provider shutdown");
        }
    }
}

/// Installs the global subscriber. A second call (tests start several services in one process)
/// keeps the first subscriber and still returns a working guard.
pub fn init(
    service: &'static str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(otlp_client(config.otlp_ca_file.as_deref())?)
            .with_endpoint(url)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    // RUST_LOG filters the logs only: traces keep their info-level spans (and so the trace
    // context that rides to receivers) even when an operator turns logging down to `warn`.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a global subscriber was already installed; keeping it");
    }
    Ok(TelemetryGuard { provider })
}

/// The OpenTelemetry context of the current tracing span, to inject into Kafka headers.
pub fn current_context() -> opentelemetry::Context {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    tracing::Span::current().context()
}

/// Makes `span` a child of the trace carried by `cx` (from a Kafka record's headers).
pub fn set_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "could not set span parent");
    }
}

struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// The W3C trace context a caller sent in its HTTP headers (empty when none), so a client's
/// trace continues through the gateway into Kafka.
pub fn extract_http(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator as _;
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&HttpHeaders(headers))
}

struct HttpHeadersMut<'a>(&'a mut axum::http::HeaderMap);

impl opentelemetry::propagation::Injector for HttpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Writes `cx` as W3C `traceparent` (and `tracestate`) into outgoing HTTP headers, so a
/// receiver's own tracing continues the event's trace.
pub fn inject_http(cx: &opentelemetry::Context, headers: &mut axum::http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator as _;
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(cx, &mut HttpHeadersMut(headers));
}

/// The context to send onwards: the current span's when tracing is on, else `parent` itself,
/// so the trace id still travels when no OpenTelemetry layer is installed.
pub fn onward_context(parent: opentelemetry::Context) -> opentelemetry::Context {
    use opentelemetry::trace::TraceContextExt as _;
    let current = current_context();
    if current.span().span_context().is_valid() {
        current
    } else {
        parent
    }
}
