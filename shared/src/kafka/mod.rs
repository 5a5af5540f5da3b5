//! Kafka clients as every service uses them.
//!
//! **Producer**: idempotent with `acks=all`, so a retried send after a lost ack does not
//! duplicate a record and an acknowledged record is on every in-sync replica. Compression and
//! linger trade a few milliseconds for batches; `message.timeout.ms` bounds how long a send may
//! retry before the caller hears of the failure (and, say, the gateway answers 503).
//!
//! **Consumer**: the model is vector's Kafka source. `enable.auto.offset.store=false`: a service
//! stores an offset only once the record's outcome is durable, and only in order (the per-
//! partition watermark of each service). `enable.auto.commit=true` then commits what was stored
//! in the background; services also commit synchronously on revoke and on shutdown, so a hand-
//! over re-delivers as little as possible. `auto.offset.reset=earliest`: a new group starts at
//! the beginning rather than silently skipping records written before it existed.
//!
//! The partition assignment strategy is explicit (`roundrobin` by default, eager);
//! `cooperative-sticky` works too, because every loop forgets only the partitions a rebalance
//! actually revoked (rebalance.rs). docs/kafka.md says when to choose which.
//!
//! **Errors.** A failed produce is either transient (the broker is away or slow: retry, lose
//! nothing) or permanent for that one record ([`permanent`]: too large, invalid): retrying it
//! would block its partition forever, so the caller isolates the record instead.

mod access;
mod headers;
mod lag;
pub mod rebalance;
mod topics;

pub use access::{KafkaAccess, Principal, access, group_id};
pub use headers::{
    TENANT_HEADER, TRACEPARENT_HEADER, extract_trace_context, or_new_trace, trace_headers,
};
pub use lag::{LAG_INTERVAL, partition_lag, report_lag};
/// The trace context records carry (so crates need not depend on opentelemetry for it).
pub use opentelemetry::Context as TraceContext;
pub use topics::{
    EnsureReport, PartitionMismatch, RetryTier, TopicCatalog, TopicKind, TopicSpec, ensure_topics,
    tier_name,
};

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use secrecy::ExposeSecret;

use crate::config::KafkaConfig;

pub use rdkafka::error::KafkaError;
pub use rebalance::{Generations, Rebalancing, commit};

/// Whether a produce error is about the record itself, so retrying it can never succeed.
/// Not `InvalidMessage` (CORRUPT_MESSAGE): Kafka reports a checksum that failed in transit
/// with it, and a retry succeeds; the client retries it itself, and so do our loops.
pub fn permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        KafkaError::MessageProduction(code) => matches!(
            code,
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidRecord
                | C::MessageBatchTooLarge
                | C::InvalidTimestamp
        ),
        _ => false,
    }
}

/// Whether a produce error is the broker's or the network's (unreachable, no leader, timed
/// out), so waiting is the answer: not the record's fault ([`permanent`]), not a producer in a
/// fatal state (it refuses every later send until replaced: a restart clears it), not a
/// refusal of our credentials or topics (configuration, not an outage).
pub fn unavailable(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    if permanent(e) {
        return false;
    }
    !matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::InvalidConfig
        )
    )
}

/// Settings shared by producers, consumers and admin clients: where and how to connect.
pub fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap)
        .set("client.id", client_id)
        .set("security.protocol", &config.security_protocol);
    if let Some(mechanism) = &config.sasl_mechanism {
        c.set("sasl.mechanisms", mechanism);
    }
    if let Some(user) = &config.sasl_username {
        c.set("sasl.username", user);
    }
    if let Some(password) = &config.sasl_password {
        c.set("sasl.password", password.expose_secret());
    }
    if let Some(ca) = &config.ssl_ca_location {
        c.set("ssl.ca.location", ca);
    }
    c
}

/// The producer every service writes with (see the module docs for the settings).
pub fn producer(config: &KafkaConfig, client_id: &str) -> Result<FutureProducer, KafkaError> {
    client_config(config, client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &config.compression)
        .set("linger.ms", config.linger_ms.to_string())
        .set("batch.size", config.batch_size_bytes.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("message.max.bytes", config.message_max_bytes.to_string())
        .create()
}

/// A consumer in `group_id` with manual offset store (see the module docs).
pub fn consumer<C: ConsumerContext + 'static>(
    config: &KafkaConfig,
    client_id: &str,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, KafkaError> {
    consumer_config(config, client_id, group_id).create_with_context(context)
}

/// The settings of [`consumer`], for a service that must change one (and says why).
pub fn consumer_config(config: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut c = client_config(config, client_id);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "partition.assignment.strategy",
            &config.partition_assignment_strategy,
        )
        .set("session.timeout.ms", config.session_timeout_ms.to_string());
    c
}

pub fn admin(
    config: &KafkaConfig,
    client_id: &str,
) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(config, client_id).create()
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn produce_errors_are_told_apart() {
        let produce = |c| KafkaError::MessageProduction(c);
        // The broker's: wait.
        for c in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::InvalidMessage,
        ] {
            assert!(super::unavailable(&produce(c)), "{c:?}");
            assert!(!super::permanent(&produce(c)), "{c:?}");
        }
        // The record's: quarantine.
        assert!(super::permanent(&produce(C::MessageSizeTooLarge)));
        assert!(!super::unavailable(&produce(C::MessageSizeTooLarge)));
        // Ours: a fatal producer or refused credentials must be able to fail liveness.
        for c in [
            C::Fatal,
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            assert!(!super::unavailable(&produce(c)), "{c:?}");
        }
    }
}
