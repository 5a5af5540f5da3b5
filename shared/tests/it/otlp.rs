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

/// A collector on loopback behind TLS with a `localhost` certificate from a throwaway CA;
/// counts the exports it receives and the handshakes that failed (a client that refused its
/// certificate).
struct TlsCollector {
    exports: Arc<Mutex<usize>>,
    refused: Arc<Mutex<usize>>,
    url: String,
    ca_pem: String,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: Arc<Mutex<usize>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, peer),
                _ => *self.refused.lock().expect("lock") += 1,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn tls_collector() -> anyhow::Result<TlsCollector> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
    let chain = vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;

    let exports: Arc<Mutex<usize>> = Arc::default();
    let refused: Arc<Mutex<usize>> = Arc::default();
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
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}", tcp.local_addr()?.port());
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        refused: refused.clone(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(TlsCollector {
        exports,
        refused,
        url,
        ca_pem: ca.pem(),
    })
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
    let collector = tls_collector().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(collector.url.clone()),
        otlp_ca_file: Some(temp_file("ca.pem", &collector.ca_pem)?),
        ..TelemetryConfig::default()
    };
    export_one_span(shared::telemetry::init("otlp-tls-test", &config)?).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *collector.exports.lock().expect("lock") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *collector.exports.lock().expect("lock") > 0,
        "no OTLP export reached the https collector"
    );
    assert_eq!(*collector.refused.lock().expect("lock"), 0);
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

    let collector = tls_collector().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(collector.url.clone()),
        ..TelemetryConfig::default()
    };
    export_one_span(shared::telemetry::init("otlp-tls-test", &config)?).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *collector.refused.lock().expect("lock") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *collector.refused.lock().expect("lock") > 0,
        "the exporter tried the collector and refused its certificate"
    );
    assert_eq!(
        *collector.exports.lock().expect("lock"),
        0,
        "nothing was sent in the clear or unverified"
    );
    Ok(())
}
