//! The platform as separate processes, and a programmable receiver, for the end-to-end and
//! chaos tests.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use shared::domain::SigningSecret;
use shared::ids::TenantId;
use shared::jwt::{Claims, DevKeys};

use crate::{World, binary};

pub const SERVICES: [&str; 4] = [
    "ingest-gateway",
    "fanout-processor",
    "delivery-consumer",
    "retry-scheduler",
];

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a receiver path answers: `fail` first requests fail with 500, `delay` per request.
#[derive(Clone, Default)]
pub struct Behaviour {
    pub fail: usize,
    pub delay: Duration,
}

/// (when, path, headers, body) of each request.
type Log = Arc<Mutex<Vec<(Instant, String, HeaderMap, Bytes)>>>;

#[derive(Clone, Default)]
pub struct Receiver {
    got: Log,
    behaviour: Arc<Mutex<HashMap<String, Behaviour>>>,
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = {
        let mut got = r.got.lock().expect("log");
        let n = got.iter().filter(|g| g.1 == path).count();
        got.push((Instant::now(), path.clone(), headers, body));
        n
    };
    let b = r
        .behaviour
        .lock()
        .expect("behaviour")
        .get(&path)
        .cloned()
        .unwrap_or_default();
    tokio::time::sleep(b.delay).await;
    if n < b.fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    pub async fn start() -> anyhow::Result<(Self, SocketAddr)> {
        let r = Self::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((r, addr))
    }

    pub fn set(&self, path: &str, b: Behaviour) {
        self.behaviour
            .lock()
            .expect("behaviour")
            .insert(path.to_owned(), b);
    }

    pub fn requests(&self, path: &str) -> Vec<(Instant, HeaderMap, Bytes)> {
        self.got
            .lock()
            .expect("log")
            .iter()
            .filter(|g| g.1 == path)
            .map(|g| (g.0, g.2.clone(), g.3.clone()))
            .collect()
    }

    pub async fn wait(
        &self,
        path: &str,
        n: usize,
        secs: u64,
    ) -> anyhow::Result<Vec<(Instant, HeaderMap, Bytes)>> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return Ok(got);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{path}: {} of {n} requests in {secs} s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct Platform {
    pub world: World,
    procs: Vec<Option<Proc>>,
    port: u16,
    /// The ops listener of each service (the gateway's is `port`).
    pub ops: Vec<u16>,
    /// More `HARBORHOOK_*` settings for every service.
    extra: Vec<(String, String)>,
    jwks: String,
    pub api: String,
    keys: DevKeys,
    http: reqwest::Client,
}

impl Platform {
    /// Starts the four services against `world`'s configuration.
    pub async fn start(world: World) -> anyhow::Result<Self> {
        Self::start_with(world, &[]).await
    }

    /// As [`Platform::start`], with more settings (`HARBORHOOK_…`, value) for every service.
    pub async fn start_with(world: World, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let keys_dir = std::env::temp_dir().join(format!("{}-keys", world.env.schema));
        let keys = DevKeys::load_or_create(&keys_dir)?;
        let jwks = shared::jwt::jwks_path(&keys_dir).display().to_string();
        let port = free_port();
        let http = shared::tls::http_client()
            .timeout(Duration::from_secs(30))
            .build()?;
        let ops = vec![port, free_port(), free_port(), free_port()];
        let mut p = Self {
            world,
            procs: Vec::new(),
            port,
            ops,
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            jwks,
            api: format!("http://127.0.0.1:{port}"),
            keys,
            http,
        };
        for i in 0..SERVICES.len() {
            let child = p.spawn(i)?;
            p.procs.push(Some(child));
        }
        p.wait_ready().await?;
        Ok(p)
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Proc> {
        let c = &self.world.env.config;
        let mut cmd = Command::new(binary(SERVICES[i]));
        cmd.env_clear()
            .env("HARBORHOOK_DATABASE__URL", c.database.url.expose_secret())
            .env("HARBORHOOK_DATABASE__SCHEMA", &self.world.env.schema)
            .env("HARBORHOOK_DATABASE__POOL_SIZE", "4")
            .env("HARBORHOOK_KAFKA__BOOTSTRAP", &c.kafka.bootstrap)
            .env("HARBORHOOK_KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
            .env("HARBORHOOK_KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env(
                "HARBORHOOK_TOPICS__EVENTS_PARTITIONS",
                c.topics.events_partitions.to_string(),
            )
            .env(
                "HARBORHOOK_TOPICS__DELIVERIES_PARTITIONS",
                c.topics.deliveries_partitions.to_string(),
            )
            .env(
                "HARBORHOOK_TOPICS__RETRY_PARTITIONS",
                c.topics.retry_partitions.to_string(),
            )
            .env(
                "HARBORHOOK_TOPICS__DLQ_PARTITIONS",
                c.topics.dlq_partitions.to_string(),
            )
            .env(
                "HARBORHOOK_TOPICS__INVALID_PARTITIONS",
                c.topics.invalid_partitions.to_string(),
            )
            .env("HARBORHOOK_RETRY__SCHEDULE", "1s,2s")
            .env(
                "HARBORHOOK_GATEWAY__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .env("HARBORHOOK_GATEWAY__AUTH__JWKS_FILE", &self.jwks)
            .env("HARBORHOOK_GATEWAY__PUBLISH_TIMEOUT", "3s")
            .env(
                "HARBORHOOK_FANOUT__OPS_LISTEN",
                format!("127.0.0.1:{}", self.ops[1]),
            )
            .env(
                "HARBORHOOK_DELIVERY__OPS_LISTEN",
                format!("127.0.0.1:{}", self.ops[2]),
            )
            .env(
                "HARBORHOOK_SCHEDULER__OPS_LISTEN",
                format!("127.0.0.1:{}", self.ops[3]),
            )
            .env("HARBORHOOK_DELIVERY__SSRF_ALLOW", "127.0.0.0/8")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        Ok(Proc(cmd.spawn()?))
    }

    /// The services that have exited, with their exit status.
    pub fn exited(&mut self) -> Vec<(&'static str, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(Proc(child)) = p
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((SERVICES[i], status));
            }
        }
        out
    }

    /// GET `path` on service `i`'s ops listener: (status, body).
    pub async fn ops_get(&self, i: usize, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.ops[i]))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// The pid of service `i`, while this harness runs it.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|p| p.0.id())
    }

    /// SIGKILL service `i` (index in [`SERVICES`]), as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.procs[i] = None;
    }

    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.spawn(i)?;
        self.procs[i] = Some(child);
        if i == 0 {
            self.wait_ready().await?;
        }
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .http
            .get(format!("{}/readyz", self.api))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    pub fn token(&self, tenant: Option<TenantId>) -> String {
        let auth = &self.world.env.config.gateway.auth;
        let claims = Claims::new(
            &auth.issuer,
            &auth.audience,
            "e2e",
            tenant,
            tenant.is_none(),
            Duration::from_secs(600),
        );
        self.keys.issue(&claims).expect("token")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let resp = req.send().await?;
        let status = StatusCode::from_u16(resp.status().as_u16())?;
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A request with a body sent exactly as given (`content-type: application/json`).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = StatusCode::from_u16(resp.status().as_u16())?;
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A tenant with its token.
    pub async fn tenant(&self) -> anyhow::Result<(TenantId, String)> {
        let (_, t) = self
            .call(
                Method::POST,
                "/v1/tenants",
                &self.token(None),
                Some(json!({"name": "e2e"})),
                None,
            )
            .await?;
        let id: TenantId = t["id"].as_str().expect("tenant id").parse()?;
        Ok((id, self.token(Some(id))))
    }

    /// An endpoint at `url` subscribed to `pattern`; returns (id, secret).
    pub async fn endpoint(
        &self,
        tenant: &TenantId,
        token: &str,
        url: String,
        pattern: &str,
    ) -> anyhow::Result<(String, SigningSecret)> {
        let (s, e) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/endpoints"),
                token,
                Some(json!({"url": url})),
                None,
            )
            .await?;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let id = e["id"].as_str().expect("id").to_owned();
        let secret: SigningSecret = e["secret"].as_str().expect("secret").parse()?;
        let body = json!({"endpoint_id": id, "event_type": pattern});
        let (s, b) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/subscriptions"),
                token,
                Some(body),
                None,
            )
            .await?;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        Ok((id, secret))
    }

    pub async fn publish(
        &self,
        tenant: &TenantId,
        token: &str,
        event_type: &str,
        payload: Value,
        key: Option<&str>,
    ) -> anyhow::Result<String> {
        let body = json!({"event_type": event_type, "payload": payload});
        let (s, r) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/events:publish"),
                token,
                Some(body),
                key,
            )
            .await?;
        assert_eq!(s, StatusCode::ACCEPTED, "{r}");
        Ok(r["event_id"].as_str().expect("event id").to_owned())
    }

    pub async fn delivery_status(&self, token: &str, event: &str) -> anyhow::Result<Vec<String>> {
        let (_, page) = self
            .call(
                Method::GET,
                &format!("/v1/events/{event}/deliveries"),
                token,
                None,
                None,
            )
            .await?;
        Ok(page["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| x["status"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default())
    }
}

pub fn verified(secret: &SigningSecret, h: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let expected = shared::signing::standard_signature(
        &[secret],
        &get("webhook-id"),
        get("webhook-timestamp").parse().unwrap_or(0),
        body,
    );
    get("webhook-signature").split(' ').any(|s| s == expected)
}
