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

/// A collector on loopback behind TLS with a `localhost` certificate from a throwaway CA,
/// counting the exports it receives.
async fn tls_collector() -> anyhow::Result<(shared::testing::tls::TlsServer, Arc<Mutex<usize>>)> {
    let exports: Arc<Mutex<usize>> = Arc::default();
    let sink = exports.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                if !body.is_empty() {
                    *sink.lock().expect("lock") += 1;
                }
                ""
            }
        }),
    );
    Ok((shared::testing::tls::serve(app).await?, exports))
}

/// Emits one span and flushes the exporter (dropping the guard blocks until the export ends).
async fn export_one_span(guard: shared::telemetry::TelemetryGuard) -> anyhow::Result<()> {
    {
        let span = tracing::info_span!("exported-span", tenant_id = "ten_x");
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    tokio::task::spawn_blocking(move || drop(guard)).await?;
    Ok(())
}

fn temp_file(name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hh-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Each test below installs the process-global subscriber: nextest runs each in a process of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_https_to_a_collector_of_the_configured_ca() -> anyhow::Result<()> {
    let (collector, exports) = tls_collector().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(collector.url.clone()),
        otlp_ca_file: Some(temp_file("ca.pem", &collector.ca_pem)?),
        ..TelemetryConfig::default()
    };
    export_one_span(shared::telemetry::init("otlp-tls-test", &config)?).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *exports.lock().expect("lock") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *exports.lock().expect("lock") > 0,
        "no OTLP export reached the https collector"
    );
    assert_eq!(collector.refused(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outside_the_trusted_roots_gets_nothing() -> anyhow::Result<()> {
    // A CA file without a certificate stops start-up instead of failing every export.
    let junk = TelemetryConfig {
        otlp_endpoint: Some("https://localhost:1".into()),
        otlp_ca_file: Some(temp_file("junk.pem", "not a certificate\n")?),
        ..TelemetryConfig::default()
    };
    let err = shared::telemetry::init("otlp-tls-test", &junk)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("holds no PEM certificate"), "{err}");

    let (collector, exports) = tls_collector().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(collector.url.clone()),
        ..TelemetryConfig::default()
    };
    export_one_span(shared::telemetry::init("otlp-tls-test", &config)?).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while collector.refused() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        collector.refused() > 0,
        "the exporter tried the collector and refused its certificate"
    );
    assert_eq!(
        *exports.lock().expect("lock"),
        0,
        "nothing was sent in the clear or unverified"
    );
    Ok(())
}
