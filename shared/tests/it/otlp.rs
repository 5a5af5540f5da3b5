//! With an OTLP endpoint configured, spans are exported over OTLP/HTTP. A loopback server plays
//! the collector. (One test in its own binary: telemetry installs a process-global subscriber.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use shared::config::TelemetryConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_collector() -> anyhow::Result<()> {
    let received: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().expect("lock").push((content_type, body.len()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TelemetryConfig::default()
    };
    let guard = shared::telemetry::init("otlp-test", &config)?;
    {
        let span = tracing::info_span!("exported-span", tenant_id = "ten_x");
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    // Dropping the guard flushes the batch exporter; it blocks, so keep it off the runtime.
    tokio::task::spawn_blocking(move || drop(guard)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("lock").is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().expect("lock").clone();
    assert!(!got.is_empty(), "no OTLP export reached the collector");
    assert_eq!(got[0].0, "application/x-protobuf");
    assert!(got[0].1 > 0, "empty export");
    Ok(())
}
