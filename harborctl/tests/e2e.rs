//! The platform end to end: the four services as separate processes (the binaries the
//! workspace builds) against the real PostgreSQL and broker, driven through the HTTP API, a
//! direct producer and harborctl, with receivers on loopback.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::World;
use reqwest::Method;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use shared::domain::SigningSecret;
use shared::ids::TenantId;
use shared::jwt::{Claims, DevKeys};

const SERVICES: [&str; 4] = [
    "ingest-gateway",
    "fanout-processor",
    "delivery-consumer",
    "retry-scheduler",
];

/// The workspace's binaries sit beside this test's directory (`target/<profile>/`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with --workspace",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a receiver path answers: `fail` first requests fail with 500, `delay` per request.
#[derive(Clone, Default)]
struct Behaviour {
    fail: usize,
    delay: Duration,
}

/// (when, path, headers, body) of each request.
type Log = Arc<Mutex<Vec<(Instant, String, HeaderMap, Bytes)>>>;

#[derive(Clone, Default)]
struct Receiver {
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
    async fn start() -> anyhow::Result<(Self, SocketAddr)> {
        let r = Self::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((r, addr))
    }

    fn set(&self, path: &str, b: Behaviour) {
        self.behaviour
            .lock()
            .expect("behaviour")
            .insert(path.to_owned(), b);
    }

    fn requests(&self, path: &str) -> Vec<(Instant, HeaderMap, Bytes)> {
        self.got
            .lock()
            .expect("log")
            .iter()
            .filter(|g| g.1 == path)
            .map(|g| (g.0, g.2.clone(), g.3.clone()))
            .collect()
    }

    async fn wait(
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

struct Platform {
    world: World,
    _procs: Vec<Proc>,
    api: String,
    keys: DevKeys,
    http: reqwest::Client,
}

impl Platform {
    async fn start() -> anyhow::Result<Self> {
        let world = World::new().await?;
        let keys_dir = std::env::temp_dir().join(format!("{}-keys", world.env.schema));
        let keys = DevKeys::load_or_create(&keys_dir)?;
        let jwks = shared::jwt::jwks_path(&keys_dir).display().to_string();
        let port = free_port();
        let c = &world.env.config;
        let mut procs = Vec::new();
        for svc in SERVICES {
            let mut cmd = Command::new(binary(svc));
            cmd.env_clear()
                .env("HARBORHOOK_DATABASE__URL", c.database.url.expose_secret())
                .env("HARBORHOOK_DATABASE__SCHEMA", &world.env.schema)
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
                .env("HARBORHOOK_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
                .env("HARBORHOOK_GATEWAY__AUTH__JWKS_FILE", &jwks)
                .env("HARBORHOOK_FANOUT__OPS_LISTEN", "127.0.0.1:0")
                .env("HARBORHOOK_DELIVERY__OPS_LISTEN", "127.0.0.1:0")
                .env("HARBORHOOK_SCHEDULER__OPS_LISTEN", "127.0.0.1:0")
                .env("HARBORHOOK_DELIVERY__SSRF_ALLOW", "127.0.0.0/8")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            procs.push(Proc(cmd.spawn()?));
        }
        let api = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{api}/readyz"))
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
        Ok(Self {
            world,
            _procs: procs,
            api,
            keys,
            http,
        })
    }

    fn token(&self, tenant: Option<TenantId>) -> String {
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

    async fn call(
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

    /// A tenant with its token.
    async fn tenant(&self) -> anyhow::Result<(TenantId, String)> {
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
    async fn endpoint(
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

    async fn publish(
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

    async fn delivery_status(&self, token: &str, event: &str) -> anyhow::Result<Vec<String>> {
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

fn verified(secret: &SigningSecret, h: &HeaderMap, body: &[u8]) -> bool {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_delivers_end_to_end() -> anyhow::Result<()> {
    let p = Platform::start().await?;
    let (receiver, addr) = Receiver::start().await?;
    let url = |path: &str| format!("http://{addr}/{path}");
    let (a, token_a) = p.tenant().await?;
    let (b, token_b) = p.tenant().await?;

    // Happy path with fan-out: `*` gets every event, `order.*` only orders; all signed.
    let (_, all_secret) = p.endpoint(&a, &token_a, url("all"), "*").await?;
    let (_, _) = p.endpoint(&a, &token_a, url("orders"), "order.*").await?;
    for n in 0..3 {
        p.publish(&a, &token_a, "order.created", json!({"n": n}), None)
            .await?;
    }
    let invoice = p
        .publish(&a, &token_a, "invoice.paid", json!({"n": 9}), None)
        .await?;
    let got = receiver.wait("all", 4, 60).await?;
    assert!(
        got.iter()
            .all(|(_, h, body)| verified(&all_secret, h, body)),
        "signed"
    );
    receiver.wait("orders", 3, 30).await?;

    // Idempotent publish: one event id, one delivery.
    receiver.set("idem", Behaviour::default());
    let (_, _) = p.endpoint(&b, &token_b, url("idem"), "*").await?;
    let first = p
        .publish(
            &b,
            &token_b,
            "order.created",
            json!({"k": 1}),
            Some("key-1"),
        )
        .await?;
    let second = p
        .publish(
            &b,
            &token_b,
            "order.created",
            json!({"k": 1}),
            Some("key-1"),
        )
        .await?;
    assert_eq!(first, second, "same event id");

    // Tenant isolation: B can neither read nor publish as A (404, ids do not leak).
    let (s, _) = p
        .call(
            Method::GET,
            &format!("/v1/events/{invoice}"),
            &token_b,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = p
        .call(
            Method::POST,
            &format!("/v1/tenants/{a}/events:publish"),
            &token_b,
            Some(json!({"event_type": "x.y", "payload": {}})),
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Retries then success: two 500s, then 200, one webhook-id throughout.
    receiver.set(
        "flaky",
        Behaviour {
            fail: 2,
            delay: Duration::ZERO,
        },
    );
    let (c, token_c) = p.tenant().await?;
    p.endpoint(&c, &token_c, url("flaky"), "*").await?;
    let flaky_event = p
        .publish(&c, &token_c, "order.created", json!({"f": 1}), None)
        .await?;
    let got = receiver.wait("flaky", 3, 60).await?;
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|(_, h, _)| h["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 1);

    // A slow endpoint beside a healthy one.
    receiver.set(
        "slow",
        Behaviour {
            fail: 0,
            delay: Duration::from_secs(2),
        },
    );
    let (d, token_d) = p.tenant().await?;
    p.endpoint(&d, &token_d, url("slow"), "*").await?;
    p.endpoint(&d, &token_d, url("healthy"), "*").await?;
    let mut sent = Vec::new();
    for n in 0..15 {
        sent.push(Instant::now());
        p.publish(&d, &token_d, "order.created", json!({"n": n}), None)
            .await?;
    }
    let healthy = receiver.wait("healthy", 15, 30).await?;
    let worst = healthy
        .iter()
        .zip(&sent)
        .map(|((at, _, _), s)| at.saturating_duration_since(*s))
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_millis(1500),
        "healthy endpoint waited {worst:?} beside a slow one"
    );

    // Direct producer: an envelope written straight to `events` is delivered.
    let envelope = json!({
        "schema_version": 1, "event_id": shared::ids::EventId::new(), "tenant_id": c,
        "event_type": "order.shipped", "payload": {"direct": true}, "occurred_at": chrono::Utc::now(),
    });
    let producer = shared::kafka::producer(&p.world.env.config.kafka, "e2e")?;
    let topic = p.world.env.catalog().events().to_owned();
    let value = serde_json::to_vec(&envelope)?;
    let key = envelope["event_id"].as_str().unwrap_or_default().to_owned();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let got = receiver.wait("flaky", 4, 30).await?;
    assert!(
        got.iter()
            .any(|(_, _, body)| body.as_ref() == br#"{"direct":true}"#)
    );

    // The idempotent pair was delivered once (checked last: it had all this time to repeat).
    assert_eq!(receiver.requests("idem").len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.delivery_status(&token_c, &flaky_event).await? != ["delivered"] {
        anyhow::ensure!(
            Instant::now() < deadline,
            "flaky delivery not recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.world.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_are_replayed_from_the_dlq_to_success() -> anyhow::Result<()> {
    let p = Platform::start().await?;
    let (receiver, addr) = Receiver::start().await?;
    receiver.set(
        "down",
        Behaviour {
            fail: usize::MAX,
            delay: Duration::ZERO,
        },
    );
    let (t, token) = p.tenant().await?;
    let (endpoint, _) = p
        .endpoint(&t, &token, format!("http://{addr}/down"), "*")
        .await?;
    let event = p
        .publish(&t, &token, "order.created", json!({"n": 1}), None)
        .await?;
    // 1 + 2 retries on the 1 s / 2 s test schedule, then the DLQ.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.delivery_status(&token, &event).await? != ["dead_lettered"] {
        anyhow::ensure!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(receiver.requests("down").len(), 3);
    let listed = p.world.json(&["dlq", "list", "--endpoint", &endpoint], &[]);
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    receiver.set("down", Behaviour::default()); // the receiver is fixed
    let replay = p.world.json(
        &[
            "dlq",
            "replay",
            "--endpoint",
            &endpoint,
            "--reason",
            "receiver fixed",
        ],
        &[],
    );
    assert_eq!(replay["replayed"], 1);
    let got = receiver.wait("down", 4, 30).await?;
    assert_eq!(
        got[3].1["webhook-id"], got[0].1["webhook-id"],
        "the replay keeps the webhook-id"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.delivery_status(&token, &event).await? != ["delivered"] {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replayed delivery not recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.world.cleanup().await
}
