//! Test support: a configuration isolated to one test (its own PostgreSQL schema, topic prefix
//! and consumer groups) against the real database and broker named by `DATABASE_URL` and
//! `KAFKA_BOOTSTRAP`, and its cleanup. Enabled by the `test-support` feature.

mod broker;
pub mod tls;

pub use broker::{BrokerDb, BrokerGuard, PrivatePostgres, TestDb, free_port, start_broker};

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use rdkafka::admin::AdminOptions;
use secrecy::SecretString;
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::kafka::{self, TopicCatalog};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/harborhook";
pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| DEFAULT_KAFKA_BOOTSTRAP.to_owned())
}

/// One test's slice of the shared infrastructure.
pub struct TestEnv {
    pub config: Config,
    /// `hh_test_<random>`: the PostgreSQL schema.
    pub schema: String,
}

impl TestEnv {
    /// A configuration with a fresh schema name and topic prefix, small partition counts, and
    /// every listener on port 0. Nothing is created until a service or test uses it.
    pub fn new() -> Self {
        let suffix: u64 = rand::rng().random();
        let suffix = format!("{suffix:016x}");
        let mut config = Config::default();
        config.database.url = SecretString::from(database_url());
        config.database.pool_size = 4;
        let schema = format!("hh_test_{suffix}");
        config.database.schema = Some(schema.clone());
        config.kafka.bootstrap = kafka_bootstrap();
        config.kafka.topic_prefix = format!("hh-test-{suffix}.");
        config.kafka.linger_ms = 1;
        config.topics.events_partitions = 2;
        config.topics.deliveries_partitions = 3;
        config.topics.retry_partitions = 2;
        config.topics.dlq_partitions = 1;
        config.topics.invalid_partitions = 1;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        config.gateway.listen = any_port;
        config.fanout.ops_listen = any_port;
        config.delivery.ops_listen = any_port;
        // Test receivers listen on loopback, which the SSRF guard refuses unless allow-listed.
        config.delivery.ssrf_allow = vec!["127.0.0.0/8".into()];
        config.scheduler.ops_listen = any_port;
        Self { config, schema }
    }

    pub fn catalog(&self) -> TopicCatalog {
        TopicCatalog::new(&self.config)
    }

    /// A consumer of `topic` from the beginning, in a consumer group of its own.
    pub fn reader(&self, topic: &str) -> anyhow::Result<rdkafka::consumer::StreamConsumer> {
        use rdkafka::consumer::Consumer as _;
        let group = format!(
            "{}reader-{}",
            self.config.kafka.topic_prefix,
            uuid::Uuid::now_v7().simple()
        );
        let consumer = kafka::consumer(
            &self.config.kafka,
            "test",
            &group,
            rdkafka::consumer::DefaultConsumerContext,
        )?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    /// A direct connection to the test's schema (for assertions on rows).
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        use secrecy::ExposeSecret as _;
        let base = self.config.database.url.expose_secret();
        let url = format!(
            "{base}{}options=-csearch_path%3D{}",
            if base.contains('?') { "&" } else { "?" },
            self.schema
        );
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .context("connect")?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Drops the test's schema (for tests that use only PostgreSQL).
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        use secrecy::ExposeSecret as _;
        let url = self.config.database.url.expose_secret();
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .context("connect")?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .context("drop schema")
    }

    /// Drops the schema and deletes the test's topics. Call at the end of each test; the test
    /// script also removes leftovers of crashed runs.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        self.drop_schema().await?;
        let admin = kafka::admin(&self.config.kafka, "test-cleanup")?;
        let catalog = self.catalog();
        let names: Vec<&str> = catalog.specs().iter().map(|s| s.name.as_str()).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // Topics a test never created come back as "unknown topic": nothing to do for those.
        admin
            .delete_topics(&names, &opts)
            .await
            .context("delete topics")?;
        Ok(())
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Asserts that `/healthz`, `/readyz` and `/metrics` answer as the ops contract says.
pub async fn check_ops_endpoints(addr: SocketAddr) -> anyhow::Result<()> {
    let http = crate::tls::http_client()
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = format!("http://{addr}");
    let health = http.get(format!("{base}/healthz")).send().await?;
    anyhow::ensure!(
        health.status() == 200,
        "healthz answered {}",
        health.status()
    );
    let ready = http.get(format!("{base}/readyz")).send().await?;
    let status = ready.status();
    let body: serde_json::Value = ready.json().await?;
    anyhow::ensure!(status == 200, "readyz answered {status}: {body}");
    anyhow::ensure!(body["status"] == "ready", "readyz body {body}");
    anyhow::ensure!(
        body["checks"]["database"]["ok"] == true && body["checks"]["broker"]["ok"] == true
    );
    let metrics = http.get(format!("{base}/metrics")).send().await?;
    anyhow::ensure!(
        metrics.status() == 200,
        "metrics answered {}",
        metrics.status()
    );
    let content_type = metrics.headers().get("content-type").cloned();
    anyhow::ensure!(
        content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/openmetrics-text")),
        "metrics content type"
    );
    let text = metrics.text().await?;
    anyhow::ensure!(
        text.trim_end().ends_with("# EOF"),
        "metrics body is not OpenMetrics: {text}"
    );
    Ok(())
}

/// Reads records until `want` arrived, or until `quiet` passes without a new one.
pub async fn drain(
    consumer: &rdkafka::consumer::StreamConsumer,
    want: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let mut out = Vec::new();
    while out.len() < want {
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => return Err(e).context("consume"),
            Err(_) => break,
        }
    }
    Ok(out)
}
