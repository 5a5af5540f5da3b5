//! Test harness: the real fan-out, delivery and retry services in-process against the real
//! PostgreSQL and broker, tenants, endpoints, secrets and subscriptions created through the real
//! gateway's API (started in-process on first use, so the rows are the API's own), and
//! programmable HTTP receivers on loopback that record every request.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use shared::domain::SigningSecret;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{EventEnvelope, SchemaVersion};
use shared::service::Running;
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How a receiver answers the `n`th request (0-based) to a path.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
}

type Behaviour = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

/// Requests in flight per path, and the most seen at once.
type Concurrency = Arc<Mutex<HashMap<String, (usize, usize)>>>;

#[derive(Clone)]
struct ReceiverState {
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    concurrency: Concurrency,
}

pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    concurrency: Concurrency,
}

async fn receive(
    State(state): State<ReceiverState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let n = {
        let mut log = state.log.lock().expect("log");
        let n = log.iter().filter(|r| r.path == path).count();
        log.push(Received {
            at,
            path: path.clone(),
            headers,
            body,
        });
        n
    };
    let behaviour = state.behaviour.lock().expect("behaviour").clone();
    let reply = behaviour(&path, n);
    {
        let mut c = state.concurrency.lock().expect("concurrency");
        let slot = c.entry(path.clone()).or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(slot.0);
    }
    tokio::time::sleep(reply.delay).await;
    if let Some(slot) = state
        .concurrency
        .lock()
        .expect("concurrency")
        .get_mut(&path)
    {
        slot.0 -= 1;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).expect("status"),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

/// TCP accept plus a TLS handshake; a connection whose handshake fails (a client that refuses
/// the certificate) is dropped and the next one accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(stream);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Receiver {
    /// A receiver answering 200 to everything until told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (receiver, app) = Self::parts(addr);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    /// The same receiver behind TLS with `config`'s certificate; its URLs are
    /// `https://localhost:{port}/...`.
    pub async fn start_tls(config: rustls::ServerConfig) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let (receiver, app) = Self::parts(addr);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    fn parts(addr: SocketAddr) -> (Self, axum::Router) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let behaviour: Arc<Mutex<Behaviour>> =
            Arc::new(Mutex::new(Arc::new(|_: &str, _: usize| Reply::ok())));
        let concurrency = Concurrency::default();
        let state = ReceiverState {
            log: log.clone(),
            behaviour: behaviour.clone(),
            concurrency: concurrency.clone(),
        };
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(state);
        let receiver = Self {
            addr,
            log,
            behaviour,
            concurrency,
        };
        (receiver, app)
    }

    /// `https://localhost:{port}/{path}` (the name the test certificates carry).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.addr.port())
    }

    pub fn behave(&self, f: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().expect("behaviour") = Arc::new(f);
    }

    /// The most requests to `path` that were in flight at once.
    pub fn max_concurrency(&self, path: &str) -> usize {
        self.concurrency
            .lock()
            .expect("concurrency")
            .get(path)
            .map_or(0, |c| c.1)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; fails after `timeout`.
    pub async fn wait_for(
        &self,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return Ok(got);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{path}: {} of {n} requests within {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An endpoint as a tenant would create it through the API.
pub struct EndpointSpec {
    pub url: String,
    pub scheme: &'static str,
    pub max_in_flight: i32,
    pub rate_limit: Option<f64>,
    pub headers: serde_json::Value,
    /// A rotated-out secret still inside its overlap, besides the current one.
    pub rotated: bool,
}

impl EndpointSpec {
    pub fn new(url: String) -> Self {
        Self {
            url,
            scheme: "standard_webhooks",
            max_in_flight: 10,
            rate_limit: None,
            headers: json!({}),
            rotated: false,
        }
    }
}

/// The trace every test event starts (as a client's traceparent would).
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

pub struct World {
    pub env: TestEnv,
    _telemetry: shared::telemetry::TelemetryGuard,
    pub db: tokio_postgres::Client,
    pub producer: FutureProducer,
    pub shutdown: CancellationToken,
    services: Vec<Running>,
    api: tokio::sync::OnceCell<Api>,
}

/// The real gateway, in-process on port 0, with an operator token of its own signing key.
struct Api {
    running: Running,
    http: reqwest::Client,
    operator: String,
    keys_dir: std::path::PathBuf,
}

impl Api {
    async fn start(
        config: &shared::Config,
        schema: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let keys_dir = std::env::temp_dir().join(format!("{schema}-keys"));
        let keys = shared::jwt::DevKeys::load_or_create(&keys_dir)?;
        let mut config = config.clone();
        config.gateway.auth.jwks_file =
            Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
        let auth = &config.gateway.auth;
        let operator = keys.issue(&shared::jwt::Claims::new(
            &auth.issuer,
            &auth.audience,
            "test",
            None,
            true,
            Duration::from_secs(3600),
        ))?;
        let running = ingest_gateway::start(config, shutdown.clone()).await?;
        Ok(Self {
            running,
            http: shared::tls::http_client()
                .timeout(Duration::from_secs(30))
                .build()?,
            operator,
            keys_dir,
        })
    }

    /// A POST as the operator that must answer 2xx; returns the JSON body.
    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://{}{path}", self.running.local_addr);
        let resp = self
            .http
            .post(url)
            .bearer_auth(&self.operator)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).with_context(|| text.clone())
    }
}

impl World {
    /// A migrated schema and the topics; `configure` adjusts the configuration first.
    pub async fn new(configure: impl FnOnce(&mut shared::Config)) -> anyhow::Result<Self> {
        let mut env = TestEnv::new();
        env.config.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
        env.config.kafka.session_timeout_ms = 6000;
        configure(&mut env.config);
        let pool = shared::db::pool(&env.config.database)?;
        shared::db::migrate(&pool, Some(&env.schema)).await?;
        let admin = shared::kafka::admin(&env.config.kafka, "test")?;
        shared::kafka::ensure_topics(&admin, &env.catalog(), Duration::from_secs(30)).await?;
        let db = env.db().await?;
        let producer = shared::kafka::producer(&env.config.kafka, "test-producer")?;
        let telemetry =
            shared::telemetry::init("test", &shared::config::TelemetryConfig::default())?;
        Ok(Self {
            env,
            _telemetry: telemetry,
            db,
            producer,
            shutdown: CancellationToken::new(),
            services: Vec::new(),
            api: tokio::sync::OnceCell::new(),
        })
    }

    /// Starts fan-out, the retry-scheduler and (unless it runs as a process) the delivery
    /// consumer in-process.
    pub async fn start(&mut self, delivery: bool) -> anyhow::Result<Option<SocketAddr>> {
        let c = &self.env.config;
        self.services
            .push(fanout_processor::start(c.clone(), self.shutdown.clone()).await?);
        self.services
            .push(retry_scheduler::start(c.clone(), self.shutdown.clone()).await?);
        if !delivery {
            return Ok(None);
        }
        let running = delivery_consumer::start(c.clone(), self.shutdown.clone()).await?;
        let addr = running.local_addr;
        self.services.push(running);
        Ok(Some(addr))
    }

    /// The in-process gateway the configuration rows are created through.
    async fn api(&self) -> anyhow::Result<&Api> {
        self.api
            .get_or_try_init(|| Api::start(&self.env.config, &self.env.schema, &self.shutdown))
            .await
    }

    pub async fn tenant(&self) -> anyhow::Result<TenantId> {
        let body = self
            .api()
            .await?
            .post("/v1/tenants", json!({"name": "acme"}))
            .await?;
        Ok(body["id"].as_str().context("tenant id")?.parse()?)
    }

    /// Creates the endpoint through the API (rotating its secret once when `spec.rotated`) and
    /// subscribes it to `*`; returns its id and secrets (newest first).
    pub async fn endpoint(
        &self,
        tenant: &TenantId,
        spec: EndpointSpec,
    ) -> anyhow::Result<(EndpointId, Vec<SigningSecret>)> {
        let api = self.api().await?;
        let created = api
            .post(
                &format!("/v1/tenants/{tenant}/endpoints"),
                json!({
                    "url": spec.url, "signature_scheme": spec.scheme,
                    "max_in_flight": spec.max_in_flight, "rate_limit_per_sec": spec.rate_limit,
                    "headers": spec.headers,
                }),
            )
            .await?;
        let id: EndpointId = created["id"].as_str().context("endpoint id")?.parse()?;
        let secret = |v: &serde_json::Value| -> anyhow::Result<SigningSecret> {
            Ok(v["secret"].as_str().context("secret")?.parse()?)
        };
        let mut secrets = vec![secret(&created)?];
        if spec.rotated {
            let rotated = api
                .post(
                    &format!("/v1/tenants/{tenant}/endpoints/{id}:rotate-secret"),
                    json!({}),
                )
                .await?;
            secrets.insert(0, secret(&rotated)?);
        }
        api.post(
            &format!("/v1/tenants/{tenant}/subscriptions"),
            json!({"event_type": "*", "endpoint_id": id}),
        )
        .await?;
        Ok((id, secrets))
    }

    /// Publishes an event with payload `{"n": n}` straight to `events`; returns its id.
    pub async fn publish(&self, tenant: &TenantId, n: usize) -> anyhow::Result<EventId> {
        self.publish_at(tenant, n, Utc::now()).await
    }

    /// [`Self::publish`] with the producer's `occurred_at`.
    pub async fn publish_at(
        &self,
        tenant: &TenantId,
        n: usize,
        occurred_at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<EventId> {
        let envelope = EventEnvelope {
            schema_version: SchemaVersion::CURRENT,
            event_id: EventId::new(),
            tenant_id: *tenant,
            event_type: "order.created".parse()?,
            payload: shared::payload::Payload::from_value(&json!({"n": n})),
            occurred_at,
            idempotency_key: None,
            ordering_key: None,
        };
        let value = serde_json::to_vec(&envelope)?;
        let key = envelope.kafka_key();
        let catalog = self.env.catalog();
        self.producer
            .send(
                FutureRecord::to(catalog.events())
                    .key(&key)
                    .payload(&value)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "traceparent",
                        value: Some(&format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
                    })),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(envelope.event_id)
    }

    /// The `deliveries` row of (event, endpoint): status and attempts.
    pub async fn delivery_row(
        &self,
        event: &EventId,
        endpoint: &EndpointId,
    ) -> anyhow::Result<Option<(String, i32)>> {
        let id = DeliveryId::derive(event, endpoint);
        let row = self
            .db
            .query_opt(
                "SELECT status, attempts FROM deliveries WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Waits until the row of (event, endpoint) has `status`.
    pub async fn wait_status(
        &self,
        event: &EventId,
        endpoint: &EndpointId,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.delivery_row(event, endpoint).await?;
            if let Some((s, attempts)) = &row
                && s == status
            {
                return Ok(*attempts);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "delivery still {row:?}, not {status}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for s in self.services.drain(..) {
            s.wait().await?;
        }
        if let Some(api) = self.api.take() {
            api.running.wait().await?;
            let _ = std::fs::remove_dir_all(&api.keys_dir);
        }
        self.env.cleanup().await
    }
}

/// Reads the metrics text of a service.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    Ok(shared::tls::http_client()
        .build()?
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of one metric sample line (`name{labels}`), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Which delivery id each payload number's event should carry to `endpoint`.
pub fn expected_ids(
    events: &HashMap<usize, EventId>,
    endpoint: &EndpointId,
) -> HashMap<String, usize> {
    events
        .iter()
        .map(|(n, e)| (DeliveryId::derive(e, endpoint).to_string(), *n))
        .collect()
}
