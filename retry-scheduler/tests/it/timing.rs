//! The retry-scheduler against the real broker with short test tiers (1 s and 3 s): records are
//! re-enqueued never before their due time and soon after it; poison records are skipped
//! without stalling; a rebalance between two instances while partitions are paused, and a
//! SIGKILL with a restart, lose nothing.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::ExposeSecret as _;
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{DeliveryRecord, RetryRecord, SchemaVersion};
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

/// How late a re-enqueue may be in these tests: the 1 s target plus slack for a loaded CI box.
const LATE_BOUND: Duration = Duration::from_millis(1500);

struct Setup {
    env: TestEnv,
    producer: FutureProducer,
    tenant: TenantId,
}

async fn setup() -> anyhow::Result<Setup> {
    let mut env = TestEnv::new();
    env.config.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(3)];
    let admin = shared::kafka::admin(&env.config.kafka, "test")?;
    shared::kafka::ensure_topics(&admin, &env.catalog(), Duration::from_secs(30)).await?;
    let producer = shared::kafka::producer(&env.config.kafka, "test")?;
    Ok(Setup {
        env,
        producer,
        tenant: TenantId::new(),
    })
}

impl Setup {
    fn tier_topic(&self, name: &str) -> String {
        self.env
            .catalog()
            .retry_tiers()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.topic.clone())
            .expect("tier")
    }

    /// Writes a retry record for a new delivery to `endpoint`, due at `due`.
    async fn retry(
        &self,
        tier: &str,
        endpoint: &EndpointId,
        due: DateTime<Utc>,
    ) -> anyhow::Result<DeliveryId> {
        let event = EventId::new();
        let delivery = DeliveryRecord {
            schema_version: SchemaVersion::CURRENT,
            delivery_id: DeliveryId::derive(&event, endpoint),
            event_id: event,
            tenant_id: self.tenant,
            endpoint_id: *endpoint,
            event_type: "a.b".parse()?,
            payload: shared::payload::Payload::from_value(&json!({"n": 1})),
            occurred_at: Utc::now(),
            attempt: 2,
            attempts: Vec::new(),
            replay: None,
            deferred_since: None,
        };
        let record = RetryRecord {
            schema_version: SchemaVersion::CURRENT,
            due_at: due,
            tier: tier.into(),
            delivery,
        };
        let value = serde_json::to_vec(&record)?;
        let key = endpoint.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.tier_topic(tier))
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(record.delivery.delivery_id)
    }

    fn reader(&self) -> anyhow::Result<StreamConsumer> {
        self.env.reader(self.env.catalog().deliveries())
    }
}

/// Reads deliveries until `want` distinct ids arrived (or `limit` passed): id → when it was
/// first re-enqueued (its timestamp on `deliveries`).
async fn arrivals(
    reader: &StreamConsumer,
    want: usize,
    limit: Duration,
) -> HashMap<DeliveryId, DateTime<Utc>> {
    more_arrivals(reader, HashMap::new(), want, limit).await
}

/// Like [`arrivals`], adding to what `out` already holds (a re-enqueue after a crash may repeat
/// an id seen before; it counts once).
async fn more_arrivals(
    reader: &StreamConsumer,
    mut out: HashMap<DeliveryId, DateTime<Utc>>,
    want: usize,
    limit: Duration,
) -> HashMap<DeliveryId, DateTime<Utc>> {
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < want {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, reader.recv()).await else {
            break;
        };
        // When the scheduler produced it (the record's timestamp), not when this reader
        // happened to fetch it: a fetch that waits cannot hide an early re-enqueue.
        let at = m
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .expect("a record timestamp");
        let record: DeliveryRecord =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("delivery record");
        out.entry(record.delivery_id).or_insert(at);
    }
    out
}

fn check_timing(
    due: &HashMap<DeliveryId, DateTime<Utc>>,
    got: &HashMap<DeliveryId, DateTime<Utc>>,
    late_bound: Duration,
) {
    assert_eq!(got.len(), due.len(), "every record was re-enqueued");
    let mut worst = chrono::Duration::zero();
    for (id, due_at) in due {
        let at = got[id];
        assert!(
            at >= *due_at,
            "{id} re-enqueued {} ms early",
            (*due_at - at).num_milliseconds()
        );
        worst = worst.max(at - *due_at);
    }
    assert!(
        worst.to_std().unwrap_or_default() <= late_bound,
        "worst lateness {} ms",
        worst.num_milliseconds()
    );
    eprintln!(
        "worst lateness {} ms over {} records",
        worst.num_milliseconds(),
        due.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_reenqueued_on_time_never_early() -> anyhow::Result<()> {
    let s = setup().await?;
    let shutdown = CancellationToken::new();
    let running = retry_scheduler::start(s.env.config.clone(), shutdown.clone()).await?;
    let reader = s.reader()?;
    let endpoints: Vec<EndpointId> = (0..4).map(|_| EndpointId::new()).collect();
    let mut due = HashMap::new();
    let start = Utc::now();
    // Per endpoint (one partition each), due times ascending, as the delivery-consumer writes.
    for i in 0..12i64 {
        let ep = &endpoints[usize::try_from(i).unwrap_or(0) % endpoints.len()];
        let at = start + chrono::Duration::milliseconds(800 + 150 * i);
        due.insert(s.retry("1s", ep, at).await?, at);
    }
    for i in 0..6i64 {
        let ep = &endpoints[usize::try_from(i).unwrap_or(0) % endpoints.len()];
        let at = start + chrono::Duration::milliseconds(3000 + 200 * i);
        due.insert(s.retry("3s", ep, at).await?, at);
    }
    // Already overdue: re-enqueued at once.
    let overdue = start - chrono::Duration::seconds(5);
    due.insert(s.retry("1s", &EndpointId::new(), overdue).await?, overdue);

    let got = arrivals(&reader, due.len(), Duration::from_secs(20)).await;
    // The overdue one is "late" by definition; check it arrived, then the rest for timing.
    let overdue_ids: Vec<DeliveryId> = due
        .iter()
        .filter(|(_, at)| **at == overdue)
        .map(|(id, _)| *id)
        .collect();
    for id in &overdue_ids {
        assert!(got.contains_key(id));
        due.remove(id);
    }
    let got: HashMap<_, _> = got
        .into_iter()
        .filter(|(id, _)| !overdue_ids.contains(id))
        .collect();
    check_timing(&due, &got, LATE_BOUND);

    let metrics = shared::tls::http_client()
        .build()?
        .get(format!("http://{}/metrics", running.local_addr))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("harborhook_retry_reenqueued_total{tier=\"1s\"} 13"),
        "{metrics}"
    );
    assert!(
        metrics.contains("harborhook_retry_lateness_seconds_count{tier=\"3s\"} 6"),
        "{metrics}"
    );
    shutdown.cancel();
    running.wait().await?;
    s.env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_skipped_without_stalling() -> anyhow::Result<()> {
    let s = setup().await?;
    let shutdown = CancellationToken::new();
    let running = retry_scheduler::start(s.env.config.clone(), shutdown.clone()).await?;
    let reader = s.reader()?;
    let ep = EndpointId::new();
    let topic = s.tier_topic("1s");
    let key = ep.to_string();
    for junk in [&b"not json"[..], br#"{"schema_version":1}"#, &[0xff, 0x00]] {
        s.producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(junk),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let at = Utc::now() + chrono::Duration::milliseconds(500);
    let id = s.retry("1s", &ep, at).await?;
    let got = arrivals(&reader, 1, Duration::from_secs(10)).await;
    assert!(
        got.get(&id).is_some_and(|t| *t >= at),
        "the record behind the poison was re-enqueued on time"
    );
    let metrics = shared::tls::http_client()
        .build()?
        .get(format!("http://{}/metrics", running.local_addr))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("harborhook_retry_malformed_total{tier=\"1s\"} 3"),
        "{metrics}"
    );
    // A record far from due keeps its tier's lag above zero (refreshed every 5 s).
    s.retry(
        "3s",
        &EndpointId::new(),
        Utc::now() + chrono::Duration::hours(1),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let metrics = shared::tls::http_client()
        .build()?
        .get(format!("http://{}/metrics", running.local_addr))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("harborhook_retry_lag{tier=\"3s\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("harborhook_retry_lag{tier=\"1s\"} 0"),
        "{metrics}"
    );
    shutdown.cancel();
    running.wait().await?;
    s.env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_paused_keeps_timing() -> anyhow::Result<()> {
    rebalance_while_paused("roundrobin").await
}

/// Under cooperative-sticky a rebalance revokes only the partitions that move: the paused
/// partitions A keeps must still be resumed when due (they are not re-fetched from the commit,
/// so a forgotten timer would leave them paused for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_rebalance_while_paused_keeps_timing() -> anyhow::Result<()> {
    rebalance_while_paused("cooperative-sticky").await
}

async fn rebalance_while_paused(strategy: &str) -> anyhow::Result<()> {
    let s = setup().await?;
    let mut config = s.env.config.clone();
    config.kafka.session_timeout_ms = 6000;
    config.kafka.partition_assignment_strategy = strategy.to_owned();
    let stop_a = CancellationToken::new();
    let a = retry_scheduler::start(config.clone(), stop_a.clone()).await?;
    let reader = s.reader()?;
    let mut due = HashMap::new();
    let start = Utc::now();
    for i in 0..8i64 {
        let at = start + chrono::Duration::milliseconds(3500 + 100 * i);
        due.insert(s.retry("3s", &EndpointId::new(), at).await?, at);
    }
    // A has fetched and paused the heads; a second instance joins: partitions are revoked (all
    // of them, or with cooperative-sticky only those that move) and reassigned across A and B
    // while their heads are not yet due.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stop_b = CancellationToken::new();
    let b = retry_scheduler::start(config.clone(), stop_b.clone()).await?;
    let got = arrivals(&reader, due.len(), Duration::from_secs(30)).await;
    check_timing(&due, &got, Duration::from_millis(2500));
    stop_a.cancel();
    stop_b.cancel();
    a.wait().await?;
    b.wait().await?;
    s.env.cleanup().await
}

fn spawn(s: &Setup) -> anyhow::Result<Child> {
    let c = &s.env.config;
    Ok(Command::new(env!("CARGO_BIN_EXE_retry-scheduler"))
        .env_clear()
        .env("HARBORHOOK_DATABASE__URL", c.database.url.expose_secret())
        .env("HARBORHOOK_DATABASE__SCHEMA", &s.env.schema)
        .env("HARBORHOOK_KAFKA__BOOTSTRAP", &c.kafka.bootstrap)
        .env("HARBORHOOK_KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
        .env("HARBORHOOK_KAFKA__ENSURE_TOPICS_ON_START", "false")
        .env("HARBORHOOK_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("HARBORHOOK_RETRY__SCHEDULE", "1s,3s")
        .env("HARBORHOOK_SCHEDULER__OPS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_lose_nothing() -> anyhow::Result<()> {
    let s = setup().await?;
    let reader = s.reader()?;
    let mut child = spawn(&s)?;
    let mut due = HashMap::new();
    let start = Utc::now();
    for i in 0..20i64 {
        let at = start + chrono::Duration::milliseconds(500 + 150 * i);
        due.insert(s.retry("1s", &EndpointId::new(), at).await?, at);
    }
    // Let some go out, then kill mid-stream (no shutdown, no commit) and restart.
    let early = arrivals(&reader, 5, Duration::from_secs(10)).await;
    assert!(early.len() >= 5);
    child.kill()?;
    child.wait()?;
    let mut restarted = spawn(&s)?;
    let got = more_arrivals(&reader, early, due.len(), Duration::from_secs(40)).await;
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            got.len(),
            due.len(),
            "every record re-enqueued across the crash"
        );
        for (id, at) in &got {
            assert!(*at >= due[id], "never early, also after a restart");
        }
    });
    restarted.kill()?;
    restarted.wait()?;
    s.env.cleanup().await?;
    result.map_err(|_| anyhow::anyhow!("assertions failed"))
}
