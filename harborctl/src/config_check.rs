//! `config check`: validates the configuration and prints what it means (never a secret).

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use serde_json::json;
use shared::Config;
use shared::kafka::TopicCatalog;

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
        // (docs/deployment.md; platform-tests/tests/it/deploy.rs compares them).
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
