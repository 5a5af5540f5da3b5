//! The topic catalog (every topic the platform uses, with its partitions, retention and cleanup
//! policy) and `ensure_topics`, which creates what is missing.
//!
//! The catalog is the single source of topic names: services, harborctl, and the Strimzi
//! `KafkaTopic` manifests (checked by a test) all derive from it.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    Events,
    EventsInvalid,
    Deliveries,
    Retry,
    DeadLetter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub kind: TopicKind,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
    pub cleanup_policy: &'static str,
}

/// One retry tier: records wait `delay` in their own topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryTier {
    pub name: String,
    pub delay: Duration,
    pub topic: String,
}

#[derive(Debug, Clone)]
pub struct TopicCatalog {
    events: String,
    events_invalid: String,
    deliveries: String,
    dlq: String,
    tiers: Vec<RetryTier>,
    specs: Vec<TopicSpec>,
}

/// A tier's name from its delay, in the largest unit that divides it: `5s`, `5m`, `2h`, `250ms`.
/// The name is part of the topic name, so it has no spaces or odd characters.
pub fn tier_name(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TopicCatalog {
    pub fn new(config: &Config) -> Self {
        let prefix = &config.kafka.topic_prefix;
        let t = &config.topics;
        let name = |suffix: &str| format!("{prefix}{suffix}");
        let spec = |name: &str, kind, partitions, retention: Duration| TopicSpec {
            name: name.to_owned(),
            kind,
            partitions,
            replication_factor: t.replication_factor,
            retention_ms: millis(retention),
            cleanup_policy: "delete",
        };

        let mut tiers: Vec<RetryTier> = Vec::new();
        for &delay in &config.retry.schedule {
            // A schedule may repeat a delay (5m, 5m, 30m); each distinct delay is one tier.
            if tiers.iter().all(|t| t.delay != delay) {
                let tier = tier_name(delay);
                tiers.push(RetryTier {
                    topic: name(&format!("deliveries.retry.{tier}")),
                    name: tier,
                    delay,
                });
            }
        }

        let catalog = Self {
            events: name("events"),
            events_invalid: name("events.invalid"),
            deliveries: name("deliveries"),
            dlq: name("deliveries.dlq"),
            tiers,
            specs: Vec::new(),
        };
        let mut specs = vec![
            spec(
                &catalog.events,
                TopicKind::Events,
                t.events_partitions,
                t.events_retention,
            ),
            spec(
                &catalog.events_invalid,
                TopicKind::EventsInvalid,
                t.invalid_partitions,
                t.dlq_retention,
            ),
            spec(
                &catalog.deliveries,
                TopicKind::Deliveries,
                t.deliveries_partitions,
                t.deliveries_retention,
            ),
        ];
        for tier in &catalog.tiers {
            // A record waits up to its delay plus any backlog; keep it well past that.
            let retention = t.deliveries_retention.max(tier.delay * 4);
            specs.push(spec(
                &tier.topic,
                TopicKind::Retry,
                t.retry_partitions,
                retention,
            ));
        }
        specs.push(spec(
            &catalog.dlq,
            TopicKind::DeadLetter,
            t.dlq_partitions,
            t.dlq_retention,
        ));
        Self { specs, ..catalog }
    }

    pub fn events(&self) -> &str {
        &self.events
    }

    pub fn events_invalid(&self) -> &str {
        &self.events_invalid
    }

    pub fn deliveries(&self) -> &str {
        &self.deliveries
    }

    pub fn dlq(&self) -> &str {
        &self.dlq
    }

    /// Tiers in the order of the schedule (ascending delay).
    pub fn retry_tiers(&self) -> &[RetryTier] {
        &self.tiers
    }

    /// Every topic, in a stable order.
    pub fn specs(&self) -> &[TopicSpec] {
        &self.specs
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMismatch {
    pub topic: String,
    pub expected: i32,
    pub actual: i32,
}

/// What `ensure_topics` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnsureReport {
    pub created: Vec<String>,
    pub existing: Vec<String>,
    /// Topics whose partition count differs from the catalog. Kafka cannot shrink a topic and
    /// growing one moves keys between partitions (breaking per-endpoint order), so this is only
    /// reported, for an operator to decide.
    pub mismatched: Vec<PartitionMismatch>,
}

/// Creates every topic of `catalog` that does not exist; reports the rest. Safe to run from
/// several replicas at once: "already exists" counts as existing.
pub async fn ensure_topics<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    catalog: &TopicCatalog,
    timeout: Duration,
) -> Result<EnsureReport, KafkaError> {
    let found = partition_counts(admin, timeout).await?;
    let mut report = EnsureReport::default();
    let mut missing = Vec::new();
    for spec in catalog.specs() {
        match found.get(&spec.name) {
            Some(&actual) => {
                report.existing.push(spec.name.clone());
                if actual != spec.partitions {
                    report.mismatched.push(PartitionMismatch {
                        topic: spec.name.clone(),
                        expected: spec.partitions,
                        actual,
                    });
                }
            }
            None => missing.push(spec),
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }

    let retention: Vec<String> = missing.iter().map(|s| s.retention_ms.to_string()).collect();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&retention)
        .map(|(spec, retention)| {
            NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            )
            .set("retention.ms", retention)
            .set("cleanup.policy", spec.cleanup_policy)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    for result in admin.create_topics(&new_topics, &opts).await? {
        match result {
            Ok(name) => report.created.push(name),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(name),
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    wait_for_metadata(admin, &report.created, timeout).await?;
    Ok(report)
}

/// Partition count of every topic on the cluster.
async fn partition_counts<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    timeout: Duration,
) -> Result<HashMap<String, i32>, KafkaError> {
    let client = admin.inner();
    let metadata = crate::blocking(|| client.fetch_metadata(None, timeout))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            (
                t.name().to_owned(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect())
}

/// Creation is acknowledged before every broker's metadata shows the topic; wait until it does
/// so that a produce right after `ensure_topics` does not fail with "unknown topic".
async fn wait_for_metadata<C: ClientContext + 'static>(
    admin: &AdminClient<C>,
    created: &[String],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = partition_counts(admin, timeout).await?;
        if created.iter().all(|t| found.get(t).is_some_and(|&n| n > 0)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_use_the_largest_whole_unit() {
        assert_eq!(tier_name(Duration::from_secs(5)), "5s");
        assert_eq!(tier_name(Duration::from_secs(300)), "5m");
        assert_eq!(tier_name(Duration::from_secs(7200)), "2h");
        assert_eq!(tier_name(Duration::from_secs(90)), "90s");
        assert_eq!(tier_name(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn catalog_has_every_topic_of_the_design_brief() {
        let config = Config::default();
        let catalog = TopicCatalog::new(&config);
        let names: Vec<&str> = catalog.specs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "harborhook.events",
                "harborhook.events.invalid",
                "harborhook.deliveries",
                "harborhook.deliveries.retry.5s",
                "harborhook.deliveries.retry.5m",
                "harborhook.deliveries.retry.30m",
                "harborhook.deliveries.retry.2h",
                "harborhook.deliveries.retry.5h",
                "harborhook.deliveries.retry.10h",
                "harborhook.deliveries.dlq",
            ]
        );
        let tiers: Vec<&str> = catalog
            .retry_tiers()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(tiers, ["5s", "5m", "30m", "2h", "5h", "10h"]);
    }

    #[test]
    fn repeated_delays_share_one_tier_and_retention_outlives_the_delay() {
        let mut config = Config::default();
        config.retry.schedule = vec![Duration::from_secs(60); 3];
        config
            .retry
            .schedule
            .push(Duration::from_secs(30 * 24 * 3600));
        let catalog = TopicCatalog::new(&config);
        assert_eq!(catalog.retry_tiers().len(), 2);
        let long = catalog
            .specs()
            .iter()
            .find(|s| s.name.ends_with("retry.720h"))
            .expect("tier");
        assert!(long.retention_ms >= 4 * 30 * 24 * 3600 * 1000);
    }
}
