//! Kafka against the real broker: `ensure_topics` creates the whole catalog and is idempotent;
//! a record produced with trace-context headers comes back with the same trace; the consumer
//! factory's manual offset store resumes a group exactly after the last stored offset.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use rdkafka::Message as _;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer as _, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::producer::FutureRecord;
use shared::ids::TenantId;
use shared::kafka::{self, TENANT_HEADER, TRACEPARENT_HEADER, TopicCatalog};
use shared::testing::TestEnv;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topics_creates_the_catalog_and_is_idempotent() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let admin = kafka::admin(&env.config.kafka, "test")?;
    let catalog = env.catalog();

    let first = kafka::ensure_topics(&admin, &catalog, TIMEOUT).await?;
    let expected: Vec<String> = catalog.specs().iter().map(|s| s.name.clone()).collect();
    assert_eq!(first.created, expected);
    assert!(first.mismatched.is_empty());
    // Every topic of the design brief, with the configured partition counts.
    let prefix = &env.config.kafka.topic_prefix;
    for suffix in [
        "events",
        "events.invalid",
        "deliveries",
        "deliveries.retry.5s",
        "deliveries.retry.5m",
        "deliveries.retry.30m",
        "deliveries.retry.2h",
        "deliveries.retry.5h",
        "deliveries.retry.10h",
        "deliveries.dlq",
    ] {
        assert!(
            expected.contains(&format!("{prefix}{suffix}")),
            "catalog lacks {suffix}"
        );
    }
    let metadata = admin.inner().fetch_metadata(None, TIMEOUT)?;
    for spec in catalog.specs() {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.name)
            .unwrap_or_else(|| panic!("{} not on the broker", spec.name));
        assert_eq!(
            i32::try_from(topic.partitions().len())?,
            spec.partitions,
            "{}",
            spec.name
        );
    }

    let second = kafka::ensure_topics(&admin, &catalog, TIMEOUT).await?;
    assert!(
        second.created.is_empty(),
        "second run created {:?}",
        second.created
    );
    assert_eq!(second.existing, expected);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topics_reports_partition_mismatches() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let admin = kafka::admin(&env.config.kafka, "test")?;
    let catalog = env.catalog();
    // Someone created `deliveries` by hand with the wrong partition count.
    let deliveries = catalog.deliveries().to_owned();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .create_topics(
            &[NewTopic::new(&deliveries, 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let report = kafka::ensure_topics(&admin, &catalog, TIMEOUT).await?;
    assert!(!report.created.contains(&deliveries));
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert_eq!(report.mismatched[0].topic, deliveries);
    assert_eq!(report.mismatched[0].actual, 1);
    assert_eq!(
        report.mismatched[0].expected,
        env.config.topics.deliveries_partitions
    );
    env.cleanup().await
}

fn consumer(env: &TestEnv, group: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let group = kafka::group_id(&env.config.kafka, group);
    let consumer = kafka::consumer(&env.config.kafka, "test", &group, DefaultConsumerContext)?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

async fn recv(consumer: &StreamConsumer) -> anyhow::Result<rdkafka::message::OwnedMessage> {
    let message = tokio::time::timeout(TIMEOUT, consumer.recv()).await??;
    Ok(message.detach())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_carries_trace_context_and_tenant() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let catalog: TopicCatalog = env.catalog();
    kafka::ensure_topics(&kafka::admin(&env.config.kafka, "test")?, &catalog, TIMEOUT).await?;
    let producer = kafka::producer(&env.config.kafka, "test")?;

    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")?;
    let span_id = SpanId::from_hex("00f067aa0ba902b7")?;
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let tenant = TenantId::new();
    let body = br#"{"hello":"world"}"#;
    producer
        .send(
            FutureRecord::to(catalog.events())
                .key("k1")
                .payload(&body[..])
                .headers(kafka::trace_headers(&cx, &tenant)),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)?;

    let consumer = consumer(&env, "round-trip", catalog.events())?;
    let message = recv(&consumer).await?;
    assert_eq!(message.payload(), Some(&body[..]));
    assert_eq!(message.key(), Some(&b"k1"[..]));
    let headers = message.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(TENANT_HEADER), Some(tenant.to_string()));
    assert_eq!(
        header(TRACEPARENT_HEADER).as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let extracted = kafka::extract_trace_context(Some(headers.as_borrowed()));
    let extracted_span = extracted.span();
    assert_eq!(extracted_span.span_context().trace_id(), trace_id);
    assert_eq!(extracted_span.span_context().span_id(), span_id);
    assert!(extracted_span.span_context().is_remote());

    // No headers at all: an empty context, not an error.
    let empty = kafka::extract_trace_context(None);
    assert!(!empty.span().span_context().is_valid());
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_the_last_stored_offset() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let catalog = env.catalog();
    kafka::ensure_topics(&kafka::admin(&env.config.kafka, "test")?, &catalog, TIMEOUT).await?;
    let producer = kafka::producer(&env.config.kafka, "test")?;
    // One key, so all three land in one partition, in order.
    for i in 0..3 {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::to(catalog.dlq())
                    .key("same")
                    .payload(&payload),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    let first = consumer(&env, "resume", catalog.dlq())?;
    let m0 = recv(&first).await?;
    let m1 = recv(&first).await?;
    assert_eq!(m0.payload(), Some(&b"record-0"[..]));
    assert_eq!(m1.payload(), Some(&b"record-1"[..]));
    // Only record-0's outcome is "durable": store it alone; record-1 was received, not stored.
    first.store_offset(m0.topic(), m0.partition(), m0.offset())?;
    first.commit_consumer_state(CommitMode::Sync)?;
    drop(first);

    let second = consumer(&env, "resume", catalog.dlq())?;
    let resumed = recv(&second).await?;
    assert_eq!(
        resumed.payload(),
        Some(&b"record-1"[..]),
        "resumed at the first unstored record"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_get_a_trace_id_without_an_exporter() -> anyhow::Result<()> {
    let _guard = shared::telemetry::init("test", &shared::config::TelemetryConfig::default())?;
    let span = tracing::info_span!("publish");
    let _entered = span.enter();
    let cx = shared::telemetry::current_context();
    assert!(
        cx.span().span_context().is_valid(),
        "no trace context inside a span"
    );
    let headers = kafka::trace_headers(&cx, &TenantId::new());
    let traceparent = headers
        .iter()
        .find(|h| h.key == TRACEPARENT_HEADER)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("traceparent header");
    assert!(traceparent.contains(&cx.span().span_context().trace_id().to_string()));
    Ok(())
}
