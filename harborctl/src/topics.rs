//! `topics ensure|list|describe`: creates the catalog's missing topics, prints the catalog,
//! and shows each topic as the broker has it (partitions, retention) with the lag of each
//! service's consumer group, per partition.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use shared::Config;
use shared::kafka::{self, Principal, TopicCatalog};

use crate::CliError;
use crate::output::{emit, table};

const TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
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

/// The service group that consumes `topic`, as `shared::kafka::access` declares it (the same
/// declaration the services subscribe from and the KafkaUser ACLs are checked against).
fn group_reading(config: &Config, topic: &str) -> Option<String> {
    Principal::ALL
        .into_iter()
        .map(|p| shared::kafka::access(p, config))
        .filter(|a| a.reads.iter().any(|t| t == topic))
        .find_map(|a| a.group)
}

pub async fn describe(config: &Config, json: bool) -> Result<(), CliError> {
    let catalog = TopicCatalog::new(config);
    let probe: BaseConsumer = shared::kafka::client_config(&config.kafka, "harborctl").create()?;
    let mut topics = Vec::new();
    let mut lags = Vec::new();
    for spec in catalog.specs() {
        let metadata = shared::blocking(|| probe.fetch_metadata(Some(&spec.name), TIMEOUT))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        topics.push(json!({
            "topic": spec.name, "partitions": partitions.len(), "expected_partitions": spec.partitions,
            "retention_ms": spec.retention_ms, "exists": !partitions.is_empty(),
        }));
        let Some(group) = group_reading(config, &spec.name) else {
            continue;
        };
        let member: BaseConsumer =
            shared::kafka::consumer_config(&config.kafka, "harborctl", &group).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&spec.name, *p);
        }
        let committed = shared::blocking(|| member.committed_offsets(tpl, TIMEOUT))?;
        for p in &partitions {
            let (low, high) = shared::blocking(|| probe.fetch_watermarks(&spec.name, *p, TIMEOUT))?;
            let at = match committed.find_partition(&spec.name, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            lags.push(json!({
                "group": group, "topic": spec.name, "partition": p,
                "committed": at, "high_watermark": high, "lag": high - at.unwrap_or(low),
            }));
        }
    }
    let v = json!({"topics": topics, "consumer_lag": lags});
    emit(json, &v, |v| {
        let empty = Vec::new();
        let t: &Vec<Value> = v["topics"].as_array().unwrap_or(&empty);
        let l: &Vec<Value> = v["consumer_lag"].as_array().unwrap_or(&empty);
        format!(
            "{}\n\n{}",
            table(
                &[
                    "topic",
                    "partitions",
                    "expected_partitions",
                    "retention_ms",
                    "exists"
                ],
                t
            ),
            table(
                &[
                    "group",
                    "topic",
                    "partition",
                    "committed",
                    "high_watermark",
                    "lag"
                ],
                l
            )
        )
    });
    Ok(())
}
