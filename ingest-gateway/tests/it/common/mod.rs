//! Test harness: the real gateway in-process on port 0, against the real PostgreSQL and broker,
//! with its own schema, topic prefix and signing key.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use reqwest::{Method, Response};
use serde_json::{Value, json};
use shared::Config;
use shared::ids::TenantId;
use shared::jwt::{Claims, DevKeys};
use shared::service::Running;
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

pub struct App {
    pub env: TestEnv,
    pub addr: SocketAddr,
    pub keys: DevKeys,
    pub http: reqwest::Client,
    pub operator: String,
    shutdown: CancellationToken,
    running: Option<Running>,
    keys_dir: PathBuf,
}

impl App {
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a gateway after `adjust` has changed its configuration.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        // Spans (and so trace context in Kafka headers) need the tracing layers installed.
        let telemetry =
            shared::telemetry::init("test", &shared::config::TelemetryConfig::default())?;
        std::mem::forget(telemetry);
        let mut env = TestEnv::new();
        let keys_dir = std::env::temp_dir().join(format!("{}-keys", env.schema));
        let keys = DevKeys::load_or_create(&keys_dir)?;
        env.config.gateway.auth.jwks_file =
            Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
        env.config.gateway.publish_timeout = Duration::from_secs(3);
        adjust(&mut env.config);
        let shutdown = CancellationToken::new();
        let running = ingest_gateway::start(env.config.clone(), shutdown.clone()).await?;
        let addr = running.local_addr;
        let mut app = Self {
            env,
            addr,
            keys,
            http: shared::tls::http_client()
                .timeout(Duration::from_secs(30))
                .build()?,
            operator: String::new(),
            shutdown,
            running: Some(running),
            keys_dir,
        };
        app.operator = app.token(None, true);
        Ok(app)
    }

    pub fn config(&self) -> &Config {
        &self.env.config
    }

    pub fn claims(&self, tenant: Option<TenantId>, operator: bool) -> Claims {
        let auth = &self.env.config.gateway.auth;
        Claims::new(
            &auth.issuer,
            &auth.audience,
            "test",
            tenant,
            operator,
            Duration::from_secs(600),
        )
    }

    pub fn token(&self, tenant: Option<TenantId>, operator: bool) -> String {
        self.keys
            .issue(&self.claims(tenant, operator))
            .expect("issue token")
    }

    pub fn tenant_token(&self, tenant: &TenantId) -> String {
        self.token(Some(*tenant), false)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A JSON request with a bearer token (or none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Response> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Ok(req.send().await?)
    }

    /// Calls and returns (status, JSON body or Null).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let resp = self.call(method, path, token, body).await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| text.clone())?
        };
        Ok((status, value))
    }

    pub async fn create_tenant(&self) -> anyhow::Result<TenantId> {
        let (status, body) = self
            .json(
                Method::POST,
                "/v1/tenants",
                Some(&self.operator),
                Some(json!({"name": "acme"})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create tenant: {status} {body}");
        Ok(body["id"].as_str().context("id")?.parse()?)
    }

    /// Creates an endpoint for `tenant`; returns its JSON (with the secret).
    pub async fn create_endpoint(&self, tenant: &TenantId, url: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .json(
                Method::POST,
                &format!("/v1/tenants/{tenant}/endpoints"),
                Some(&self.tenant_token(tenant)),
                Some(json!({"url": url})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create endpoint: {status} {body}");
        Ok(body)
    }

    /// A consumer of `topic` from the beginning, in a group of its own.
    pub fn consumer(&self, topic: &str) -> anyhow::Result<StreamConsumer> {
        self.env.reader(topic)
    }

    /// Stops the gateway and removes the schema, topics and keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await?;
        }
        let _ = std::fs::remove_dir_all(&self.keys_dir);
        self.env.cleanup().await
    }
}

/// Reads until `want` records arrived or `quiet` passed without one.
pub async fn drain(consumer: &StreamConsumer, want: usize, quiet: Duration) -> Vec<OwnedMessage> {
    shared::testing::drain(consumer, want, quiet)
        .await
        .expect("consume")
}

pub fn payload_json(m: &OwnedMessage) -> Value {
    serde_json::from_slice(m.payload().expect("payload")).expect("JSON record")
}
