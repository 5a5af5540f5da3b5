//! Commands that act on the infrastructure directly: migrations, topics, configuration.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use shared::Config;
use shared::kafka::{self, TopicCatalog};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn migrate(config: &Config, json: bool) -> anyhow::Result<()> {
    let pool = shared::db::pool(&config.database)?;
    let report = shared::db::migrate(&pool, config.database.schema.as_deref())
        .await
        .context("applying migrations (is PostgreSQL running? see `scripts/stack.sh status`)")?;
    if json {
        return print_json(&json!(report));
    }
    if report.applied.is_empty() {
        println!(
            "database is up to date ({} migrations)",
            report.already.len()
        );
    } else {
        println!(
            "applied migrations {:?}; {} were already applied",
            report.applied,
            report.already.len()
        );
    }
    Ok(())
}

pub async fn ensure(config: &Config, json: bool) -> anyhow::Result<()> {
    let admin = kafka::admin(&config.kafka, "harborctl")?;
    let catalog = TopicCatalog::new(config);
    let report = kafka::ensure_topics(&admin, &catalog, ADMIN_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "ensuring topics on {} (is the broker running?)",
                config.kafka.bootstrap
            )
        })?;
    if json {
        print_json(&json!(report))?;
    } else {
        for name in &report.created {
            println!("created   {name}");
        }
        for name in &report.existing {
            println!("exists    {name}");
        }
        for m in &report.mismatched {
            println!(
                "MISMATCH  {}: {} partitions, configuration says {}",
                m.topic, m.actual, m.expected
            );
        }
    }
    anyhow::ensure!(
        report.mismatched.is_empty(),
        "{} topic(s) differ from the configured partition count; see docs/kafka.md",
        report.mismatched.len()
    );
    Ok(())
}

pub fn list_topics(config: &Config, json: bool) -> anyhow::Result<()> {
    let catalog = TopicCatalog::new(config);
    if json {
        return print_json(&json!(catalog.specs()));
    }
    println!(
        "{:<50} {:>10} {:>14}  CLEANUP",
        "TOPIC", "PARTITIONS", "RETENTION"
    );
    for s in catalog.specs() {
        let retention = humanize(Duration::from_millis(
            u64::try_from(s.retention_ms).unwrap_or(0),
        ));
        println!(
            "{:<50} {:>10} {:>14}  {}",
            s.name, s.partitions, retention, s.cleanup_policy
        );
    }
    Ok(())
}

fn humanize(d: Duration) -> String {
    kafka::tier_name(d)
}

pub fn check_config(config: &Config, json: bool) -> anyhow::Result<()> {
    // Only non-secret values; the database URL and SASL password are never printed.
    let tiers: Vec<String> = TopicCatalog::new(config)
        .retry_tiers()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let limits = config.record_limits();
    let summary = json!({
        "valid": true,
        // The largest payload the API and fan-out accept (docs/api.md).
        "payload_limit": {"message_max_bytes": limits.message_max_bytes,
                          "envelope_bytes": limits.envelope_bytes,
                          "max_payload_bytes": limits.max_payload_bytes()},
        "kafka": {"bootstrap": config.kafka.bootstrap, "topic_prefix": config.kafka.topic_prefix,
                  "security_protocol": config.kafka.security_protocol},
        "database": {"schema": config.database.schema, "pool_size": config.database.pool_size},
        "retry_tiers": tiers,
        "gateway": {"listen": config.gateway.listen.to_string()},
        // What the Strimzi KafkaTopics and KafkaUsers must provide under this configuration
        // (docs/deployment.md; harborctl/tests/deploy.rs compares them).
        "topics": TopicCatalog::new(config).specs(),
        "kafka_access": shared::kafka::Principal::ALL
            .iter()
            .map(|p| (p.name(), shared::kafka::access(*p, config)))
            .collect::<std::collections::BTreeMap<_, _>>(),
    });
    if json {
        return print_json(&summary);
    }
    println!("configuration is valid");
    println!(
        "  kafka      {} (prefix {:?})",
        config.kafka.bootstrap, config.kafka.topic_prefix
    );
    println!("  retry      {}", tiers.join(" → "));
    println!("  gateway    {}", config.gateway.listen);
    println!(
        "  payloads   at most {} bytes (kafka.message_max_bytes {} less a {}-byte record envelope)",
        limits.max_payload_bytes(),
        limits.message_max_bytes,
        limits.envelope_bytes
    );
    Ok(())
}

/// `dev up|down|status`: the stack script of the checkout harborctl runs in (found from the
/// working directory upwards), so the two never disagree.
pub fn dev(action: &str) -> Result<(), crate::CliError> {
    let cwd = std::env::current_dir().map_err(|e| crate::CliError::failed(e.to_string(), ""))?;
    let script = cwd
        .ancestors()
        .map(|d| d.join("scripts/stack.sh"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            crate::CliError::usage(
                "scripts/stack.sh not found here or above",
                "run `harborctl dev` inside a Harborhook checkout",
            )
        })?;
    // `up` starts the services too (detached); `down` stops them and the stack.
    let (script, action) = if action == "up" {
        (script.with_file_name("dev.sh"), "--detach")
    } else {
        (script, action)
    };
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .map_err(|e| crate::CliError::failed(format!("running {}: {e}", script.display()), ""))?;
    if status.success() {
        Ok(())
    } else {
        Err(crate::CliError::failed(
            format!("{} {action} failed", script.display()),
            "its log lines above (and .stack/logs/) say why",
        ))
    }
}
