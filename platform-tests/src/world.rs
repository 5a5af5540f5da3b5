//! A world of a test's own: a migrated schema and topics of their own, the harborctl binary run
//! as a process with the configuration in its environment, and the database to check rows in.

use std::process::{Command, Output};
use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::Value;
use shared::testing::TestEnv;

pub struct World {
    pub env: TestEnv,
    pub db: tokio_postgres::Client,
}

impl World {
    pub async fn new() -> anyhow::Result<Self> {
        Self::new_with(|_| {}).await
    }

    /// A world whose configuration `configure` adjusted first.
    pub async fn new_with(configure: impl FnOnce(&mut shared::Config)) -> anyhow::Result<Self> {
        let mut env = TestEnv::new();
        configure(&mut env.config);
        let pool = shared::db::pool(&env.config.database)?;
        shared::db::migrate(&pool, Some(&env.schema)).await?;
        let admin = shared::kafka::admin(&env.config.kafka, "test")?;
        shared::kafka::ensure_topics(&admin, &env.catalog(), Duration::from_secs(30)).await?;
        let db = env.db().await?;
        Ok(Self { env, db })
    }

    /// `harborctl args…` with this world's configuration (and `extra` variables).
    pub fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let c = &self.env.config;
        let mut cmd = Command::new(crate::binary("harborctl"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("USER", "test-operator")
            .env("HARBORHOOK_DATABASE__URL", c.database.url.expose_secret())
            .env("HARBORHOOK_DATABASE__SCHEMA", &self.env.schema)
            .env("HARBORHOOK_KAFKA__BOOTSTRAP", &c.kafka.bootstrap)
            .env("HARBORHOOK_KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
            .env("RUST_LOG", "warn")
            .args(args);
        let t = &c.topics;
        for (key, n) in [
            ("EVENTS", t.events_partitions),
            ("DELIVERIES", t.deliveries_partitions),
            ("RETRY", t.retry_partitions),
            ("DLQ", t.dlq_partitions),
            ("INVALID", t.invalid_partitions),
        ] {
            cmd.env(
                format!("HARBORHOOK_TOPICS__{key}_PARTITIONS"),
                n.to_string(),
            );
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run harborctl")
    }

    /// Runs with `--json` and parses standard output; panics with stderr on a failure.
    pub fn json(&self, args: &[&str], extra: &[(&str, &str)]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all, extra);
        assert!(
            out.status.success(),
            "harborctl {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub async fn cleanup(self) -> anyhow::Result<()> {
        self.env.cleanup().await
    }
}
