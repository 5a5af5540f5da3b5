//! What each Kafka principal reads, writes and joins: the one statement of it.
//!
//! The consuming services take their subscription and consumer group from here, and
//! `platform-tests/tests/it/deploy.rs` checks that every Strimzi `KafkaUser` in `deploy/` grants exactly
//! this (Read and Describe on topics read, Write and Describe on topics written, Read on groups
//! joined, Describe on groups only looked at) and nothing else. A service that starts using a
//! topic without saying so here fails that test instead of failing in production with
//! `TOPIC_AUTHORIZATION_FAILED`.

use serde::Serialize;

use super::TopicCatalog;
use crate::config::Config;

/// A Kafka identity: one per service, harborctl, and the one every direct producer shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Principal {
    IngestGateway,
    FanoutProcessor,
    DeliveryConsumer,
    RetryScheduler,
    Harborctl,
    DirectProducer,
}

impl Principal {
    pub const ALL: [Self; 6] = [
        Self::IngestGateway,
        Self::FanoutProcessor,
        Self::DeliveryConsumer,
        Self::RetryScheduler,
        Self::Harborctl,
        Self::DirectProducer,
    ];

    /// The component's name: a service's `NAME`, its consumer group suffix, and (after
    /// `harborhook-`) its `KafkaUser`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::IngestGateway => "ingest-gateway",
            Self::FanoutProcessor => "fanout-processor",
            Self::DeliveryConsumer => "delivery-consumer",
            Self::RetryScheduler => "retry-scheduler",
            Self::Harborctl => "harborctl",
            Self::DirectProducer => "direct-producer",
        }
    }
}

/// Topics and groups one principal uses. Names include the topic prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KafkaAccess {
    /// Topics consumed (ACL: Read, Describe).
    pub reads: Vec<String>,
    /// Topics produced to (ACL: Write, Describe).
    pub writes: Vec<String>,
    /// The consumer group joined, if any (ACL: Read).
    pub group: Option<String>,
    /// Prefix of short-lived groups (harborctl's one-off replay readers) (ACL: Read, prefixed).
    pub group_prefix: Option<String>,
    /// Topics whose metadata and offsets are only looked at (ACL: Describe).
    pub describes_topics: Vec<String>,
    /// Groups whose committed offsets are only read, never joined (ACL: Describe).
    pub describes_groups: Vec<String>,
}

impl KafkaAccess {
    /// `reads` as the `&[&str]` that `Consumer::subscribe` takes.
    pub fn subscription(&self) -> Vec<&str> {
        self.reads.iter().map(String::as_str).collect()
    }

    /// The group a consuming service joins; empty for a principal that joins none.
    pub fn group_id(&self) -> &str {
        self.group.as_deref().unwrap_or_default()
    }
}

/// The consumer group of a service: the topic prefix keeps installations (and tests) apart.
pub fn group_id(config: &crate::config::KafkaConfig, service: &str) -> String {
    format!("{}{service}", config.topic_prefix)
}

/// What `principal` uses under `config` (topic prefix and retry schedule decide the names).
pub fn access(principal: Principal, config: &Config) -> KafkaAccess {
    let catalog = TopicCatalog::new(config);
    let group = |p: Principal| group_id(&config.kafka, p.name());
    let tiers = || catalog.retry_tiers().iter().map(|t| t.topic.clone());
    match principal {
        Principal::IngestGateway | Principal::DirectProducer => KafkaAccess {
            writes: vec![catalog.events().to_owned()],
            ..KafkaAccess::default()
        },
        Principal::FanoutProcessor => KafkaAccess {
            reads: vec![catalog.events().to_owned()],
            writes: vec![
                catalog.deliveries().to_owned(),
                catalog.events_invalid().to_owned(),
            ],
            group: Some(group(principal)),
            ..KafkaAccess::default()
        },
        Principal::DeliveryConsumer => KafkaAccess {
            reads: vec![catalog.deliveries().to_owned()],
            writes: tiers().chain([catalog.dlq().to_owned()]).collect(),
            group: Some(group(principal)),
            ..KafkaAccess::default()
        },
        Principal::RetryScheduler => KafkaAccess {
            reads: tiers().collect(),
            writes: vec![catalog.deliveries().to_owned()],
            group: Some(group(principal)),
            ..KafkaAccess::default()
        },
        // `events replay` reads events in a group of its own; `dlq replay` and `deliveries
        // replay` write deliveries; `events produce` writes events like a direct producer;
        // `topics describe` reads every topic's metadata and the services' committed offsets
        // to report their lag.
        Principal::Harborctl => KafkaAccess {
            reads: vec![catalog.events().to_owned()],
            writes: vec![catalog.events().to_owned(), catalog.deliveries().to_owned()],
            group: None,
            group_prefix: Some(format!("{}harborctl-", config.kafka.topic_prefix)),
            describes_topics: catalog.specs().iter().map(|s| s.name.clone()).collect(),
            describes_groups: [
                Principal::FanoutProcessor,
                Principal::DeliveryConsumer,
                Principal::RetryScheduler,
            ]
            .into_iter()
            .map(group)
            .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_consumed_topic_has_one_consuming_service_and_every_topic_a_writer() {
        let config = Config::default();
        let catalog = TopicCatalog::new(&config);
        let services = [
            Principal::FanoutProcessor,
            Principal::DeliveryConsumer,
            Principal::RetryScheduler,
        ];
        for spec in catalog.specs() {
            let readers = services
                .iter()
                .filter(|p| access(**p, &config).reads.contains(&spec.name))
                .count();
            // Invalid events and dead letters are read by operators (harborctl, PostgreSQL),
            // not by a service group.
            let expected =
                usize::from(!spec.name.ends_with(".invalid") && !spec.name.ends_with(".dlq"));
            assert_eq!(readers, expected, "{}", spec.name);
            let written = Principal::ALL
                .iter()
                .any(|p| access(*p, &config).writes.contains(&spec.name));
            assert!(written, "nobody writes {}", spec.name);
        }
        assert_eq!(
            access(Principal::DirectProducer, &config).writes,
            ["harborhook.events"]
        );
    }
}
