//! With the broker down, publishing answers 503 with Retry-After (never 2xx), and works again
//! once the broker is back. The test runs its own nisshi broker on a free port, so stopping it
//! does not disturb other tests.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::App;
use reqwest::Method;
use serde_json::json;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nisshi_binary() -> String {
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let candidate = format!("{home}/bin/nisshi");
    if std::path::Path::new(&candidate).exists() {
        candidate
    } else {
        "nisshi".into()
    }
}

/// A broker on `port` keeping its data in PostgreSQL database `db`, so that, like Kafka, it
/// comes back from a restart with its topics, records and producer state.
fn start_broker(port: u16, storage: &str) -> anyhow::Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(nisshi_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args([
            "--storage-engine",
            storage,
            "--group-initial-rebalance-delay",
            "0s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nisshi did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_means_503_then_recovery() -> anyhow::Result<()> {
    let port = free_port()?;
    let storage = BrokerDb::create().await?;
    let mut broker = BrokerGuard(start_broker(port, &storage.url)?);
    let app = App::spawn_with(|c| {
        c.kafka.bootstrap = format!("127.0.0.1:{port}");
        c.gateway.publish_timeout = Duration::from_secs(2);
    })
    .await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let body = json!({"event_type": "a.b", "payload": {"x": 1}});
    assert_eq!(
        app.json(Method::POST, &path, Some(&token), Some(body.clone()))
            .await?
            .0,
        202
    );

    broker.0.kill()?;
    broker.0.wait()?;
    let started = Instant::now();
    let resp = app
        .call(Method::POST, &path, Some(&token), Some(body.clone()))
        .await?;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the answer respects the publish deadline"
    );
    let err: serde_json::Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "unavailable");
    // With an idempotency key, the failed attempt does not block a retry with the same key.
    let keyed =
        json!({"event_type": "a.b", "payload": {"x": 2}, "idempotency_key": "during-outage"});
    assert_eq!(
        app.json(Method::POST, &path, Some(&token), Some(keyed.clone()))
            .await?
            .0,
        503
    );

    let restarted = BrokerGuard(start_broker(port, &storage.url)?);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, first) = loop {
        let (status, body) = app
            .json(Method::POST, &path, Some(&token), Some(keyed.clone()))
            .await?;
        if status == 202 || Instant::now() > deadline {
            break (status, body);
        }
        assert_eq!(status, 503, "while recovering, only 503: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        status, 202,
        "publishing works again after the broker returns: {first}"
    );
    let (status, again) = app
        .json(Method::POST, &path, Some(&token), Some(keyed))
        .await?;
    assert_eq!(
        (status, &again["event_id"]),
        (202, &first["event_id"]),
        "and the key still deduplicates"
    );
    app.stop().await?;
    drop(restarted);
    storage.drop_db().await
}

/// A PostgreSQL database of the test's own for the broker's storage.
struct BrokerDb {
    name: String,
    url: String,
}

impl BrokerDb {
    fn admin_url() -> String {
        let url = shared::testing::database_url();
        let base = url.split('?').next().unwrap_or(&url);
        let (server, _db) = base.rsplit_once('/').unwrap_or((base, ""));
        format!("{server}/postgres")
    }

    async fn create() -> anyhow::Result<Self> {
        let name = format!("hh_test_broker_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) =
            tokio_postgres::connect(&Self::admin_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let server = Self::admin_url().trim_end_matches("/postgres").to_owned();
        Ok(Self {
            url: format!("{server}/{name}?sslmode=disable"),
            name,
        })
    }

    async fn drop_db(self) -> anyhow::Result<()> {
        let (client, conn) =
            tokio_postgres::connect(&Self::admin_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

/// Kills the test's broker when the test ends, pass or fail.
struct BrokerGuard(Child);

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
