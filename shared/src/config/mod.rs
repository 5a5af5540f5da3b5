//! Configuration: built-in defaults, then an optional TOML file named by `HARBORHOOK_CONFIG`, then
//! `HARBORHOOK_*` environment variables (`__` separates sections: `HARBORHOOK_KAFKA__BOOTSTRAP`).
//!
//! Layering is figment's job; this module adds what figment does not know: the meaning of values.
//! [`Config::validate`] runs on every load, so a service never starts with, say, an empty
//! bootstrap list or a retry schedule out of order, and the error names the key. Secrets
//! (database URL, SASL password) are `SecretString`s: their `Debug` is redacted and they have no
//! `Serialize`, so they cannot reach a log line or a config dump by accident.
//!
//! Every key, its default and its meaning are listed in docs/configuration.md.

mod auth;
pub use auth::AuthConfig;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Environment variable that names the optional configuration file.
pub const CONFIG_FILE_ENV: &str = "HARBORHOOK_CONFIG";
const ENV_PREFIX: &str = "HARBORHOOK_";
/// `HARBORHOOK_*` variables that belong to harborctl or to loading itself, not to `Config`.
const ENV_NOT_CONFIG: &[&str] = &["config", "url", "token", "tenant", "cli_config"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub database: DatabaseConfig,
    pub retry: RetryConfig,
    pub telemetry: TelemetryConfig,
    pub gateway: GatewayConfig,
    pub fanout: FanoutConfig,
    pub delivery: DeliveryConfig,
    pub scheduler: OpsConfig,
    pub liveness: LivenessConfig,
    pub idempotency: IdempotencyConfig,
}

/// Idempotency keys, honoured alike by the gateway (API publishes) and the fan-out (direct
/// producers' envelopes), so the setting belongs to neither.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a (tenant, idempotency key) maps to its first event.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap: String,
    /// Prepended to every topic and consumer-group name, so several installations (or tests)
    /// share one cluster without touching each other's data.
    pub topic_prefix: String,
    pub security_protocol: String,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<SecretString>,
    pub ssl_ca_location: Option<String>,
    pub compression: String,
    pub linger_ms: u32,
    pub batch_size_bytes: u32,
    /// How long the producer retries one record before reporting failure.
    pub message_timeout_ms: u32,
    /// The producer's `message.max.bytes`: the largest record (key, value and headers) it
    /// sends. The payload limit of the API and of direct producers is derived from it
    /// (docs/api.md); topics must accept records this large (`max.message.bytes`).
    pub message_max_bytes: u32,
    pub session_timeout_ms: u32,
    /// librdkafka's `partition.assignment.strategy`; see docs/kafka.md for why the default.
    pub partition_assignment_strategy: String,
    /// Create missing topics at start. Off in production, where Strimzi owns the topics.
    pub ensure_topics_on_start: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            topic_prefix: "harborhook.".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            compression: "lz4".into(),
            linger_ms: 5,
            batch_size_bytes: 1_000_000,
            message_timeout_ms: 30_000,
            message_max_bytes: 1_000_000,
            session_timeout_ms: 30_000,
            partition_assignment_strategy: "roundrobin".into(),
            ensure_topics_on_start: true,
        }
    }
}

/// Partition counts, replication and retention of the topics in the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub events_partitions: i32,
    pub deliveries_partitions: i32,
    pub retry_partitions: i32,
    pub dlq_partitions: i32,
    pub invalid_partitions: i32,
    pub replication_factor: i32,
    #[serde(deserialize_with = "duration")]
    pub events_retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub deliveries_retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub dlq_retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            events_partitions: 6,
            deliveries_partitions: 12,
            retry_partitions: 6,
            dlq_partitions: 3,
            invalid_partitions: 3,
            replication_factor: 1,
            events_retention: Duration::from_secs(7 * DAY),
            deliveries_retention: Duration::from_secs(7 * DAY),
            dlq_retention: Duration::from_secs(30 * DAY),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`; secret because it may hold a password.
    pub url: SecretString,
    /// A PEM bundle trusted for the PostgreSQL server's certificate besides the system's roots,
    /// used when `url` says `sslmode=require` (or `verify-ca`/`verify-full`); unset or empty:
    /// the system's roots only.
    #[serde(default, deserialize_with = "optional_path")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Schema for every table (sets `search_path`); tests use one each.
    pub schema: Option<String>,
    pub pool_size: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest a statement may run (`statement_timeout`): a query stuck on a lock fails and is
    /// retried instead of hanging a loop. Migrations run without it.
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/harborhook"),
            ca_file: None,
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delays after each failed attempt; each distinct delay is a tier topic. After the last,
    /// the delivery is dead-lettered.
    #[serde(deserialize_with = "durations")]
    pub schedule: Vec<Duration>,
    /// The most random delay added to a retry's due time, to spread a burst of failures; the
    /// jitter actually used is also at most a tenth of the tier's delay. Bounded, so a record
    /// can wait behind a later-jittered head of its tier partition by at most this much.
    #[serde(deserialize_with = "duration")]
    pub jitter_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
            ],
            jitter_max: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint for traces; `OTEL_EXPORTER_OTLP_ENDPOINT` is used when this is unset.
    pub otlp_endpoint: Option<String>,
    /// A PEM bundle trusted for an `https://` collector besides the system's roots (a collector
    /// behind a private CA); unset or empty: the system's roots only.
    #[serde(default, deserialize_with = "optional_path")]
    pub otlp_ca_file: Option<std::path::PathBuf>,
    /// `json` (default) or `text` for people reading a terminal.
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The API, `/healthz`, `/readyz` and `/metrics` share this address.
    pub listen: SocketAddr,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Deprecated alias of `idempotency.window` (read when set; `from_figment` moves it there).
    #[serde(deserialize_with = "optional_duration")]
    pub idempotency_window: Option<Duration>,
    /// How long a publish waits for the broker's acknowledgement before answering 503.
    #[serde(deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// Refuse `http://` endpoint URLs.
    pub https_only: bool,
    /// How long a rotated-out secret keeps signing beside the new one.
    #[serde(deserialize_with = "duration")]
    pub secret_rotation_overlap: Duration,
    /// Requests per second per tenant (token bucket refill rate).
    pub rate_limit_per_sec: u32,
    /// Token bucket size per tenant.
    pub rate_limit_burst: u32,
    pub auth: AuthConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            idempotency_window: None,
            publish_timeout: Duration::from_secs(5),
            https_only: false,
            secret_rotation_overlap: Duration::from_secs(24 * 3600),
            rate_limit_per_sec: 200,
            rate_limit_burst: 400,
            auth: AuthConfig::default(),
        }
    }
}

/// The fanout-processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    pub ops_listen: SocketAddr,
    /// Most `events` records handled as one batch (one transaction, one round of produces).
    pub max_batch: usize,
    /// Consumer loops in this process; each is a member of the group with its own partitions
    /// and its own database connection, so batches of different partitions proceed at once.
    pub workers: usize,
    /// How long a batch waits to fill after its first record.
    #[serde(deserialize_with = "duration")]
    pub batch_linger: Duration,
    /// Full reload of the subscription cache, besides the change notifications.
    #[serde(deserialize_with = "duration")]
    pub cache_reload_interval: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            max_batch: 500,
            workers: 2,
            batch_linger: Duration::from_millis(20),
            cache_reload_interval: Duration::from_secs(60),
        }
    }
}

/// The delivery-consumer (docs/delivery.md explains each knob).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub ops_listen: SocketAddr,
    /// Records read from `deliveries` whose outcome is not yet durable; reading pauses at this.
    pub max_pending: usize,
    /// HTTP requests in flight across all endpoints.
    pub max_in_flight: usize,
    /// The share of `max_in_flight` and of `max_pending` one tenant may hold (0 < share <= 1).
    pub tenant_share: f64,
    /// The share of `max_in_flight` and of `max_pending` one endpoint may hold; an endpoint's
    /// own `max_in_flight` is capped by it too.
    pub endpoint_share: f64,
    /// Records waiting for a saturated endpoint; beyond this they are deferred to the first
    /// retry tier without counting an attempt.
    pub endpoint_queue: usize,
    /// A record that would wait longer than this in a slow endpoint's queue (at its recent
    /// pace) is deferred the same way.
    #[serde(deserialize_with = "duration")]
    pub max_queue_wait: Duration,
    /// Consecutive failed attempts that open an endpoint's circuit.
    pub circuit_failure_threshold: u32,
    #[serde(deserialize_with = "duration")]
    pub circuit_cooldown: Duration,
    /// The cool-down doubles after each failed probe, up to this.
    #[serde(deserialize_with = "duration")]
    pub circuit_max_cooldown: Duration,
    /// CIDRs that outbound requests may reach even though they are private, loopback, etc.
    #[serde(deserialize_with = "strings")]
    pub ssrf_allow: Vec<String>,
    /// A PEM bundle of CA certificates trusted for endpoints besides the system's roots (for
    /// receivers behind a private CA); unset or empty: the system's roots only.
    #[serde(default, deserialize_with = "optional_path")]
    pub extra_ca_file: Option<std::path::PathBuf>,
    pub user_agent: String,
    /// The most of a response body read before the connection is dropped.
    pub max_response_bytes: usize,
    /// Attempt rows written to PostgreSQL per statement, and how long a batch waits to fill.
    pub attempt_batch: usize,
    #[serde(deserialize_with = "duration")]
    pub attempt_linger: Duration,
    /// How long shutdown waits for requests in flight before handing them back.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub cache_reload_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            max_pending: 10_000,
            max_in_flight: 1_000,
            tenant_share: 0.25,
            endpoint_share: 0.1,
            endpoint_queue: 10_000,
            max_queue_wait: Duration::from_secs(5),
            circuit_failure_threshold: 10,
            circuit_cooldown: Duration::from_secs(30),
            circuit_max_cooldown: Duration::from_secs(600),
            ssrf_allow: Vec::new(),
            extra_ca_file: None,
            user_agent: "Harborhook-Webhooks/1".into(),
            max_response_bytes: 64 * 1024,
            attempt_batch: 500,
            attempt_linger: Duration::from_millis(5),
            drain_timeout: Duration::from_secs(20),
            cache_reload_interval: Duration::from_secs(60),
        }
    }
}

/// When a service's own loops count as stuck (`/healthz` fails, Kubernetes restarts the pod).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// A loop with work to do that has not completed any for this long, while the broker and
    /// the database answer, fails liveness; one that has not even run for this long fails it
    /// regardless (docs/operations/service-down.md).
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(120),
        }
    }
}

/// A worker service's operations listener (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub ops_listen: SocketAddr,
}

impl OpsConfig {
    fn on_port(port: u16) -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            database: DatabaseConfig::default(),
            retry: RetryConfig::default(),
            telemetry: TelemetryConfig::default(),
            gateway: GatewayConfig::default(),
            fanout: FanoutConfig::default(),
            delivery: DeliveryConfig::default(),
            scheduler: OpsConfig::on_port(9103),
            liveness: LivenessConfig::default(),
            idempotency: IdempotencyConfig::default(),
        }
    }
}

impl Config {
    /// Loads from the process environment and `HARBORHOOK_CONFIG`, then validates.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment()?)
    }

    /// The layered sources, before extraction; callers may merge more on top (tests, harborctl).
    pub fn figment() -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = std::env::var_os(CONFIG_FILE_ENV) {
            let path = Path::new(&path);
            // figment skips a missing file silently; a named file that is absent is a mistake.
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    reason: format!("not found (named by {CONFIG_FILE_ENV})"),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // HARBORHOOK_STACK_* and HARBORHOOK_DEV_* belong to the local stack scripts.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                !key.starts_with("stack_") && !key.starts_with("dev_")
            })
            .split("__")
            .ignore(ENV_NOT_CONFIG);
        Ok(figment.merge(env))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Self = figment.extract().map_err(|e| {
            let key = if e.path.is_empty() {
                "<root>".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            let reason = match source {
                Some(source) => format!("{} (from {source})", e.kind),
                None => e.kind.to_string(),
            };
            invalid(&key, reason)
        })?;
        // The old key still works where the new one is not set; both set to different values
        // is a mistake to report, not to resolve silently.
        if let Some(old) = config.gateway.idempotency_window.take() {
            if figment.find_value("idempotency.window").is_err() {
                config.idempotency.window = old;
            } else if config.idempotency.window != old {
                return Err(invalid(
                    "gateway.idempotency_window",
                    "deprecated alias of idempotency.window, and both are set to different values: keep only idempotency.window",
                ));
            }
        }
        if config.telemetry.otlp_endpoint.is_none() {
            config.telemetry.otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|s| !s.is_empty());
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks meaning, not just types; the first problem is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.bootstrap.split(',').any(|h| {
            h.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(invalid(
                "kafka.bootstrap",
                "must be a comma-separated list of host:port",
            ));
        }
        let prefix_ok = k.topic_prefix.len() <= 100
            && k.topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            return Err(invalid(
                "kafka.topic_prefix",
                "at most 100 characters of letters, digits, `.`, `_` and `-`",
            ));
        }
        one_of(
            "kafka.security_protocol",
            &k.security_protocol,
            &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
        )?;
        one_of(
            "kafka.compression",
            &k.compression,
            &["none", "gzip", "snappy", "lz4", "zstd"],
        )?;
        if k.security_protocol.starts_with("sasl") {
            if k.sasl_mechanism.is_none() {
                return Err(invalid("kafka.sasl_mechanism", "required when SASL is on"));
            }
            if k.sasl_username.is_none() || k.sasl_password.is_none() {
                return Err(invalid(
                    "kafka.sasl_username",
                    "username and password required",
                ));
            }
        }
        if k.message_timeout_ms < 1_000 {
            return Err(invalid("kafka.message_timeout_ms", "must be at least 1000"));
        }
        if k.message_timeout_ms > MESSAGE_TIMEOUT_MAX_MS {
            return Err(invalid(
                "kafka.message_timeout_ms",
                format!("at most {MESSAGE_TIMEOUT_MAX_MS} (15 minutes)"),
            ));
        }
        // The brokers' group.min/max.session.timeout.ms (6 s and 30 min by default): outside
        // them a consumer is refused its group forever while looking healthy.
        if !(6_000..=1_800_000).contains(&k.session_timeout_ms) {
            return Err(invalid(
                "kafka.session_timeout_ms",
                "between 6000 and 1800000 (the brokers' group session bounds)",
            ));
        }
        // librdkafka refuses a linger at or above the message timeout, and a batch of 0 bytes.
        if u64::from(k.linger_ms) * 2 > u64::from(k.message_timeout_ms) {
            return Err(invalid(
                "kafka.linger_ms",
                "at most half of kafka.message_timeout_ms",
            ));
        }
        if k.batch_size_bytes == 0 || k.batch_size_bytes > k.message_max_bytes.max(1_000_000) {
            return Err(invalid(
                "kafka.batch_size_bytes",
                "between 1 and the larger of 1000000 and kafka.message_max_bytes",
            ));
        }
        // A consumer refuses a fetch response above its receive.message.max.bytes (100 MB by
        // default): a record near that size would stall its partition for every reader.
        if k.message_max_bytes > MESSAGE_MAX_BYTES_MAX {
            return Err(invalid(
                "kafka.message_max_bytes",
                format!(
                    "at most {MESSAGE_MAX_BYTES_MAX} (64 MiB; consumers must be able to fetch every record)"
                ),
            ));
        }
        let limits = self.record_limits();
        if limits.max_payload_bytes() < crate::records::MIN_PAYLOAD_BYTES {
            return Err(invalid(
                "kafka.message_max_bytes",
                format!(
                    "must leave at least {} bytes for a payload after the largest record envelope ({} bytes)",
                    crate::records::MIN_PAYLOAD_BYTES,
                    limits.envelope_bytes
                ),
            ));
        }
        check_strategy(&k.partition_assignment_strategy)?;
        let t = &self.topics;
        for (key, n) in [
            ("topics.events_partitions", t.events_partitions),
            ("topics.deliveries_partitions", t.deliveries_partitions),
            ("topics.retry_partitions", t.retry_partitions),
            ("topics.dlq_partitions", t.dlq_partitions),
            ("topics.invalid_partitions", t.invalid_partitions),
            ("topics.replication_factor", t.replication_factor),
        ] {
            if !(1..=10_000).contains(&n) {
                return Err(invalid(key, "must be between 1 and 10000"));
            }
        }
        let db = &self.database;
        db.url
            .expose_secret()
            .parse::<tokio_postgres::Config>()
            // The parser's message may quote the URL, password included: do not pass it on.
            .map_err(|_| invalid("database.url", "not a valid PostgreSQL connection URL"))?;
        if let Some(schema) = &db.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(invalid("database.schema", "a lowercase SQL identifier"));
            }
        }
        if !(1..=1000).contains(&db.pool_size) {
            return Err(invalid("database.pool_size", "must be between 1 and 1000"));
        }
        if db.statement_timeout < Duration::from_secs(1) {
            return Err(invalid("database.statement_timeout", "must be at least 1s"));
        }
        let g = &self.gateway;
        if g.max_body_bytes < 1024 {
            return Err(invalid("gateway.max_body_bytes", "must be at least 1024"));
        }
        if g.rate_limit_per_sec == 0 || g.rate_limit_burst == 0 {
            return Err(invalid(
                "gateway.rate_limit_per_sec",
                "rate and burst must be above zero",
            ));
        }
        if g.publish_timeout < Duration::from_millis(100) {
            return Err(invalid("gateway.publish_timeout", "must be at least 100ms"));
        }
        g.auth.validate()?;
        if !(1..=64).contains(&self.fanout.workers) {
            return Err(invalid("fanout.workers", "must be between 1 and 64"));
        }
        if !(1..=10_000).contains(&self.fanout.max_batch) {
            return Err(invalid("fanout.max_batch", "must be between 1 and 10000"));
        }
        let schedule = &self.retry.schedule;
        if schedule.is_empty() {
            return Err(invalid("retry.schedule", "needs at least one delay"));
        }
        if schedule
            .iter()
            .any(|d| d.is_zero() || !d.subsec_nanos().is_multiple_of(1_000_000))
        {
            return Err(invalid(
                "retry.schedule",
                "delays are whole milliseconds above zero",
            ));
        }
        if schedule.windows(2).any(|w| w[0] > w[1]) {
            return Err(invalid("retry.schedule", "delays must not decrease"));
        }
        let d = &self.delivery;
        for (key, n, max) in [
            ("delivery.max_pending", d.max_pending, 1_000_000),
            ("delivery.max_in_flight", d.max_in_flight, 100_000),
            ("delivery.endpoint_queue", d.endpoint_queue, 1_000_000),
            ("delivery.attempt_batch", d.attempt_batch, 10_000),
        ] {
            if !(1..=max).contains(&n) {
                return Err(invalid(key, format!("must be between 1 and {max}")));
            }
        }
        for (key, share) in [
            ("delivery.tenant_share", d.tenant_share),
            ("delivery.endpoint_share", d.endpoint_share),
        ] {
            if !(share > 0.0 && share <= 1.0) {
                return Err(invalid(key, "a fraction above 0 and at most 1"));
            }
        }
        if d.circuit_failure_threshold == 0 {
            return Err(invalid(
                "delivery.circuit_failure_threshold",
                "must be at least 1",
            ));
        }
        if d.circuit_cooldown.is_zero() || d.circuit_max_cooldown < d.circuit_cooldown {
            return Err(invalid(
                "delivery.circuit_cooldown",
                "must be above zero and at most delivery.circuit_max_cooldown",
            ));
        }
        if d.max_response_bytes < crate::records::RESPONSE_EXCERPT_MAX {
            return Err(invalid(
                "delivery.max_response_bytes",
                "must be at least 1024",
            ));
        }
        self.check_durations()?;
        for cidr in &d.ssrf_allow {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                return Err(invalid(
                    "delivery.ssrf_allow",
                    format!("`{cidr}` is not a CIDR such as 127.0.0.0/8 or fd00::/8"),
                ));
            }
        }
        Ok(())
    }
}

/// The longest `kafka.message_timeout_ms` accepted.
const MESSAGE_TIMEOUT_MAX_MS: u32 = 900_000;
/// The largest `kafka.message_max_bytes` accepted.
const MESSAGE_MAX_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// How much longer than the longest single wait `liveness.stall_timeout` must be.
const STALL_MARGIN: Duration = Duration::from_secs(10);

impl Config {
    /// The payload limit and record envelope this configuration implies (records/limits.rs).
    pub fn record_limits(&self) -> crate::records::RecordLimits {
        crate::records::RecordLimits::new(
            usize::try_from(self.kafka.message_max_bytes).unwrap_or(usize::MAX),
            self.retry.schedule.len(),
        )
    }

    /// Every duration has an upper bound: the services add them to clock readings, and an
    /// instant beyond the clock's range would panic rather than wait.
    fn check_durations(&self) -> Result<(), ConfigError> {
        const DAY: u64 = 24 * 3600;
        let (g, f, d) = (&self.gateway, &self.fanout, &self.delivery);
        let mut all = vec![
            (
                "database.connect_timeout",
                self.database.connect_timeout,
                3600,
            ),
            (
                "database.statement_timeout",
                self.database.statement_timeout,
                DAY,
            ),
            ("retry.jitter_max", self.retry.jitter_max, DAY),
            ("idempotency.window", self.idempotency.window, 30 * DAY),
            ("gateway.publish_timeout", g.publish_timeout, 3600),
            (
                "gateway.secret_rotation_overlap",
                g.secret_rotation_overlap,
                365 * DAY,
            ),
            ("gateway.auth.leeway", g.auth.leeway, DAY),
            (
                "gateway.auth.jwks_cache_ttl",
                g.auth.jwks_cache_ttl,
                30 * DAY,
            ),
            ("fanout.batch_linger", f.batch_linger, 60),
            ("fanout.cache_reload_interval", f.cache_reload_interval, DAY),
            ("delivery.max_queue_wait", d.max_queue_wait, DAY),
            ("delivery.circuit_cooldown", d.circuit_cooldown, 30 * DAY),
            (
                "delivery.circuit_max_cooldown",
                d.circuit_max_cooldown,
                30 * DAY,
            ),
            ("delivery.attempt_linger", d.attempt_linger, 60),
            ("delivery.drain_timeout", d.drain_timeout, 3600),
            (
                "delivery.cache_reload_interval",
                d.cache_reload_interval,
                DAY,
            ),
            ("liveness.stall_timeout", self.liveness.stall_timeout, DAY),
        ];
        all.extend(
            self.retry
                .schedule
                .iter()
                .map(|delay| ("retry.schedule", *delay, 365 * DAY)),
        );
        for (key, value, max_secs) in all {
            if value > Duration::from_secs(max_secs) {
                return Err(invalid(
                    key,
                    format!(
                        "at most {}",
                        humantime::format_duration(Duration::from_secs(max_secs))
                    ),
                ));
            }
        }
        if self.liveness.stall_timeout < Duration::from_secs(5) {
            return Err(invalid("liveness.stall_timeout", "must be at least 5s"));
        }
        // A zero interval would panic the timer of the loop that reloads.
        for (key, value) in [
            ("fanout.cache_reload_interval", f.cache_reload_interval),
            ("delivery.cache_reload_interval", d.cache_reload_interval),
        ] {
            if value < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least 1s"));
            }
        }
        // One iteration of a loop may wait this long for one produce or statement without a
        // heartbeat; a stall timeout below it would restart healthy services under load.
        let longest = [
            Duration::from_millis(u64::from(self.kafka.message_timeout_ms)),
            self.database.statement_timeout,
            self.database.connect_timeout,
            g.publish_timeout,
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        if self.liveness.stall_timeout < longest + STALL_MARGIN {
            return Err(invalid(
                "liveness.stall_timeout",
                format!(
                    "must be at least {} ({} more than the longest single wait: kafka.message_timeout_ms, database.statement_timeout, database.connect_timeout, gateway.publish_timeout)",
                    humantime::format_duration(longest + STALL_MARGIN),
                    humantime::format_duration(STALL_MARGIN)
                ),
            ));
        }
        Ok(())
    }
}

/// librdkafka's assignors: eager ones may be combined with each other, cooperative-sticky
/// stands alone (mixing the two protocols is refused by librdkafka at the first rebalance).
fn check_strategy(value: &str) -> Result<(), ConfigError> {
    let key = "kafka.partition_assignment_strategy";
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    for name in &names {
        if !["range", "roundrobin", "cooperative-sticky"].contains(name) {
            return Err(invalid(
                key,
                format!("`{name}` is not one of range, roundrobin, cooperative-sticky"),
            ));
        }
    }
    if names.len() > 1 && names.contains(&"cooperative-sticky") {
        return Err(invalid(
            key,
            "cooperative-sticky cannot be combined with the eager assignors",
        ));
    }
    Ok(())
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not one of {}", allowed.join(", ")),
        ))
    }
}

/// `"90s"`, `"5m"`, `"24h"`, `"250ms"`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A path where an empty value means unset, so a manifest can list the key (every documented
/// key is set in every pod) without naming a file: `HARBORHOOK_DELIVERY__EXTRA_CA_FILE=`.
pub(crate) fn optional_path<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.into()))
}

/// A list of strings, as a TOML/figment array or a comma-separated string (one environment
/// variable: `HARBORHOOK_DELIVERY__SSRF_ALLOW=127.0.0.0/8,::1/128`).
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(items) => items,
        Raw::Text(text) => text
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

/// A list of durations, as a TOML/figment array or a comma-separated string (`"5s,5m,30m"`),
/// which is what fits in one environment variable.
fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    let items = match Raw::deserialize(d)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|s| humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom))
        .collect()
}
