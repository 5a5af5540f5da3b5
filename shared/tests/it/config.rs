//! Configuration precedence (defaults < file < environment) and validation errors that name the
//! key. figment's `Jail` gives each test its own environment and working directory.

// figment::Jail closures must return figment::Error, which is large; nothing to do about it here.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::Jail;
use secrecy::ExposeSecret as _;
use shared::config::{Config, ConfigError, LogFormat};

fn load() -> figment::error::Result<Config> {
    Config::load().map_err(|e| e.to_string().into())
}

fn load_error() -> ConfigError {
    Config::load().expect_err("configuration should be rejected")
}

#[test]
fn defaults_apply_without_file_or_environment() {
    Jail::expect_with(|jail| {
        // The test runner's own HARBORHOOK_* variables must not leak in.
        jail.clear_env();
        let config = load()?;
        assert_eq!(config.kafka.bootstrap, "127.0.0.1:9092");
        assert_eq!(config.kafka.topic_prefix, "harborhook.");
        assert_eq!(config.retry.schedule.len(), 6);
        assert_eq!(config.retry.schedule[1], Duration::from_secs(300));
        assert_eq!(config.gateway.listen.port(), 8080);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        Ok(())
    });
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    Jail::expect_with(|jail| {
        // The test runner's own HARBORHOOK_* variables must not leak in.
        jail.clear_env();
        jail.create_file(
            "harborhook.toml",
            r#"
            [kafka]
            bootstrap = "file-broker:9092"
            topic_prefix = "fromfile."

            [retry]
            schedule = ["1s", "10s"]

            [database]
            pool_size = 3
            "#,
        )?;
        jail.set_env("HARBORHOOK_CONFIG", "harborhook.toml");
        let from_file = load()?;
        assert_eq!(from_file.kafka.bootstrap, "file-broker:9092");
        assert_eq!(from_file.kafka.topic_prefix, "fromfile.");
        assert_eq!(
            from_file.retry.schedule,
            [Duration::from_secs(1), Duration::from_secs(10)]
        );
        assert_eq!(from_file.database.pool_size, 3);

        jail.set_env("HARBORHOOK_KAFKA__BOOTSTRAP", "env-broker:9093");
        jail.set_env("HARBORHOOK_RETRY__SCHEDULE", "2s, 20s, 2m");
        jail.set_env("HARBORHOOK_TELEMETRY__LOG_FORMAT", "text");
        let from_env = load()?;
        assert_eq!(from_env.kafka.bootstrap, "env-broker:9093");
        // Not overridden by the environment: still from the file.
        assert_eq!(from_env.kafka.topic_prefix, "fromfile.");
        assert_eq!(from_env.database.pool_size, 3);
        assert_eq!(
            from_env.retry.schedule,
            [
                Duration::from_secs(2),
                Duration::from_secs(20),
                Duration::from_secs(120)
            ]
        );
        assert_eq!(from_env.telemetry.log_format, LogFormat::Text);
        Ok(())
    });
}

#[test]
fn variables_of_harborctl_are_not_configuration_keys() {
    Jail::expect_with(|jail| {
        // The test runner's own HARBORHOOK_* variables must not leak in.
        jail.clear_env();
        jail.set_env("HARBORHOOK_URL", "http://127.0.0.1:8080");
        jail.set_env("HARBORHOOK_TOKEN", "abc");
        jail.set_env("HARBORHOOK_STACK_DB", "harborhook_test");
        jail.set_env("HARBORHOOK_TENANT", "ten_x");
        jail.set_env("HARBORHOOK_CLI_CONFIG", "/dev/null");
        jail.set_env("HARBORHOOK_DEV_PROFILE", "release");
        jail.set_env("HARBORHOOK_DEV_NO_DEMO", "1");
        load()?;
        Ok(())
    });
}

#[test]
fn a_named_but_missing_file_fails_with_its_path() {
    Jail::expect_with(|jail| {
        // The test runner's own HARBORHOOK_* variables must not leak in.
        jail.clear_env();
        jail.set_env("HARBORHOOK_CONFIG", "nope.toml");
        match load_error() {
            ConfigError::File { path, .. } => assert_eq!(path, "nope.toml"),
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    });
}

#[test]
fn invalid_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("HARBORHOOK_KAFKA__BOOTSTRAP", "no-port", "kafka.bootstrap"),
        (
            "HARBORHOOK_KAFKA__TOPIC_PREFIX",
            "bad/prefix",
            "kafka.topic_prefix",
        ),
        (
            "HARBORHOOK_KAFKA__COMPRESSION",
            "brotli",
            "kafka.compression",
        ),
        (
            "HARBORHOOK_KAFKA__SECURITY_PROTOCOL",
            "sasl_ssl",
            "kafka.sasl_mechanism",
        ),
        (
            "HARBORHOOK_TOPICS__EVENTS_PARTITIONS",
            "0",
            "topics.events_partitions",
        ),
        (
            "HARBORHOOK_TOPICS__DELIVERIES_PARTITIONS",
            "many",
            "topics.deliveries_partitions",
        ),
        ("HARBORHOOK_DATABASE__POOL_SIZE", "0", "database.pool_size"),
        (
            "HARBORHOOK_DATABASE__SCHEMA",
            "Robert'); DROP TABLE",
            "database.schema",
        ),
        ("HARBORHOOK_RETRY__SCHEDULE", "5m,5s", "retry.schedule"),
        ("HARBORHOOK_RETRY__SCHEDULE", "soon", "retry.schedule"),
        ("HARBORHOOK_GATEWAY__LISTEN", "localhost", "gateway.listen"),
        (
            "HARBORHOOK_TELEMETRY__LOG_FORMAT",
            "xml",
            "telemetry.log_format",
        ),
        (
            "HARBORHOOK_KAFKA__BOOTSTRAPS",
            "typo:9092",
            "kafka.bootstraps",
        ),
        // Assignors librdkafka does not have, or eager and cooperative mixed.
        (
            "HARBORHOOK_KAFKA__PARTITION_ASSIGNMENT_STRATEGY",
            "sticky",
            "kafka.partition_assignment_strategy",
        ),
        (
            "HARBORHOOK_KAFKA__PARTITION_ASSIGNMENT_STRATEGY",
            "range,cooperative-sticky",
            "kafka.partition_assignment_strategy",
        ),
        // A producer limit that leaves no room for a payload after the record envelope.
        (
            "HARBORHOOK_KAFKA__MESSAGE_MAX_BYTES",
            "50000",
            "kafka.message_max_bytes",
        ),
        // Durations beyond what a clock can add without overflowing.
        (
            "HARBORHOOK_DELIVERY__DRAIN_TIMEOUT",
            "100000000years",
            "delivery.drain_timeout",
        ),
        (
            "HARBORHOOK_RETRY__SCHEDULE",
            "5s,500years",
            "retry.schedule",
        ),
        (
            "HARBORHOOK_DELIVERY__TENANT_SHARE",
            "0",
            "delivery.tenant_share",
        ),
        (
            "HARBORHOOK_DELIVERY__ENDPOINT_SHARE",
            "1.5",
            "delivery.endpoint_share",
        ),
        (
            "HARBORHOOK_LIVENESS__STALL_TIMEOUT",
            "1s",
            "liveness.stall_timeout",
        ),
        (
            "HARBORHOOK_DATABASE__STATEMENT_TIMEOUT",
            "10ms",
            "database.statement_timeout",
        ),
        // A stall timeout a single slow statement would trip (30 s by default).
        (
            "HARBORHOOK_LIVENESS__STALL_TIMEOUT",
            "20s",
            "liveness.stall_timeout",
        ),
        (
            "HARBORHOOK_DATABASE__STATEMENT_TIMEOUT",
            "10m",
            "liveness.stall_timeout",
        ),
        (
            "HARBORHOOK_FANOUT__CACHE_RELOAD_INTERVAL",
            "0s",
            "fanout.cache_reload_interval",
        ),
        (
            "HARBORHOOK_DELIVERY__CACHE_RELOAD_INTERVAL",
            "10ms",
            "delivery.cache_reload_interval",
        ),
        (
            "HARBORHOOK_KAFKA__MESSAGE_MAX_BYTES",
            "200000000",
            "kafka.message_max_bytes",
        ),
        (
            "HARBORHOOK_KAFKA__MESSAGE_TIMEOUT_MS",
            "4000000000",
            "kafka.message_timeout_ms",
        ),
        (
            "HARBORHOOK_KAFKA__SESSION_TIMEOUT_MS",
            "100",
            "kafka.session_timeout_ms",
        ),
        ("HARBORHOOK_KAFKA__LINGER_MS", "30000", "kafka.linger_ms"),
        (
            "HARBORHOOK_KAFKA__BATCH_SIZE_BYTES",
            "0",
            "kafka.batch_size_bytes",
        ),
        (
            "HARBORHOOK_DATABASE__POOL_SIZE",
            "100000000000",
            "database.pool_size",
        ),
    ];
    for &(var, value, key) in cases {
        Jail::expect_with(|jail| {
            // The test runner's own HARBORHOOK_* variables must not leak in.
            jail.clear_env();
            jail.set_env(var, value);
            let err = load_error();
            let text = err.to_string();
            assert!(
                text.contains(&format!("`{key}`")),
                "{var}={value}: `{text}` does not name {key}"
            );
            Ok(())
        });
    }
}

#[test]
fn every_accepted_assignor_loads() {
    for strategy in [
        "roundrobin",
        "range",
        "range,roundrobin",
        "cooperative-sticky",
    ] {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("HARBORHOOK_KAFKA__PARTITION_ASSIGNMENT_STRATEGY", strategy);
            let config = load()?;
            assert_eq!(config.kafka.partition_assignment_strategy, strategy);
            Ok(())
        });
    }
}

#[test]
fn secrets_are_never_printed() {
    Jail::expect_with(|jail| {
        // The test runner's own HARBORHOOK_* variables must not leak in.
        jail.clear_env();
        jail.set_env(
            "HARBORHOOK_DATABASE__URL",
            "postgres://app:hunter2-secret@db:5432/hh",
        );
        jail.set_env("HARBORHOOK_KAFKA__SASL_PASSWORD", "kafka-pass-123");
        let config = load()?;
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2-secret"),
            "database password leaked: {debug}"
        );
        assert!(!debug.contains("kafka-pass-123"), "SASL password leaked");
        assert_eq!(
            config.database.url.expose_secret(),
            "postgres://app:hunter2-secret@db:5432/hh"
        );

        // A malformed URL's error must not echo the URL (and so the password) either.
        jail.set_env(
            "HARBORHOOK_DATABASE__URL",
            "postgres://app:hunter2-secret@db:notaport/hh",
        );
        let text = load_error().to_string();
        assert!(text.contains("`database.url`"), "{text}");
        assert!(
            !text.contains("hunter2-secret"),
            "password leaked in error: {text}"
        );
        Ok(())
    });
}

/// The idempotency window is shared by the gateway and the fan-out: `idempotency.window`, with
/// the old `gateway.idempotency_window` still read, and the two set differently refused.
#[test]
fn the_idempotency_window_has_a_neutral_key_and_the_old_one_still_works() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        assert_eq!(load()?.idempotency.window, Duration::from_secs(24 * 3600));
        jail.set_env("HARBORHOOK_IDEMPOTENCY__WINDOW", "2h");
        assert_eq!(load()?.idempotency.window, Duration::from_secs(7200));
        jail.clear_env();
        jail.set_env("HARBORHOOK_GATEWAY__IDEMPOTENCY_WINDOW", "3h");
        let config = load()?;
        assert_eq!(config.idempotency.window, Duration::from_secs(3 * 3600));
        assert_eq!(config.gateway.idempotency_window, None);
        jail.set_env("HARBORHOOK_IDEMPOTENCY__WINDOW", "3h");
        assert_eq!(load()?.idempotency.window, Duration::from_secs(3 * 3600));
        jail.set_env("HARBORHOOK_IDEMPOTENCY__WINDOW", "2h");
        let err = load_error().to_string();
        assert!(
            err.contains("`gateway.idempotency_window`: deprecated"),
            "{err}"
        );
        // Set explicitly to the default value, the new key still wins over a different old one
        // (a conflict, not a silent override).
        jail.set_env("HARBORHOOK_IDEMPOTENCY__WINDOW", "24h");
        let err = load_error().to_string();
        assert!(
            err.contains("`gateway.idempotency_window`: deprecated"),
            "{err}"
        );
        jail.set_env("HARBORHOOK_IDEMPOTENCY__WINDOW", "90d");
        jail.set_env("HARBORHOOK_GATEWAY__IDEMPOTENCY_WINDOW", "90d");
        let err = load_error().to_string();
        assert!(err.contains("`idempotency.window`"), "{err}");
        assert!(!err.contains("deprecated"), "{err}");
        Ok(())
    });
}

/// The manifests list every documented key, so an optional file is set to an empty value there:
/// that must mean "unset", not a path "" that fails to open at start.
#[test]
fn an_empty_optional_path_is_unset() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("HARBORHOOK_DELIVERY__EXTRA_CA_FILE", "");
        assert_eq!(load()?.delivery.extra_ca_file, None);
        jail.set_env(
            "HARBORHOOK_DELIVERY__EXTRA_CA_FILE",
            "/etc/harborhook/ca.pem",
        );
        assert_eq!(
            load()?.delivery.extra_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/harborhook/ca.pem"))
        );
        Ok(())
    });
}

/// Keys fetched over plain HTTP can be swapped by anyone on the path: an `http://` JWKS URL is
/// refused unless the development switch says otherwise; claim settings come from one
/// environment variable each.
#[test]
fn an_http_jwks_url_needs_the_dev_switch_and_claim_settings_load() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env(
            "HARBORHOOK_GATEWAY__AUTH__JWKS_URL",
            "http://idp.internal/jwks.json",
        );
        let err = load_error().to_string();
        assert!(
            err.contains("gateway.auth.jwks_url") && err.contains("allow_insecure_jwks_url"),
            "{err}"
        );
        jail.set_env("HARBORHOOK_GATEWAY__AUTH__ALLOW_INSECURE_JWKS_URL", "true");
        jail.set_env(
            "HARBORHOOK_GATEWAY__AUTH__TENANT_CLAIM",
            "harborhook.tenant_id",
        );
        jail.set_env(
            "HARBORHOOK_GATEWAY__AUTH__OPERATOR_CLAIMS",
            "realm_access.roles, scope",
        );
        jail.set_env(
            "HARBORHOOK_GATEWAY__AUTH__OPERATOR_SCOPE",
            "harborhook-operator",
        );
        let auth = load()?.gateway.auth;
        assert_eq!(auth.tenant_claim, "harborhook.tenant_id");
        assert_eq!(auth.operator_claims, ["realm_access.roles", "scope"]);
        assert_eq!(auth.operator_scope, "harborhook-operator");
        jail.set_env("HARBORHOOK_GATEWAY__AUTH__OPERATOR_SCOPE", "two words");
        assert!(
            load_error()
                .to_string()
                .contains("gateway.auth.operator_scope")
        );
        jail.set_env(
            "HARBORHOOK_GATEWAY__AUTH__OPERATOR_SCOPE",
            "harborhook-operator",
        );
        jail.set_env("HARBORHOOK_GATEWAY__AUTH__JWKS_MAX_BYTES", "10");
        assert!(
            load_error()
                .to_string()
                .contains("gateway.auth.jwks_max_bytes")
        );
        Ok(())
    });
}
