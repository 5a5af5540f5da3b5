//! The scheduling loop over the tier topics.
//!
//! **Timing.** Records in a tier topic are in due order per partition (the writer's jitter is
//! bounded so that it cannot reorder them), so a partition's head record decides for the whole
//! partition. When the head is due, it is re-produced to `deliveries` (same key, same headers)
//! and, after the broker's ack, its offset is stored. When it is not due, the partition is
//! paused, the consumer seeks back to the head's offset (so the head is fetched again), and a
//! timer — one sleep until the due instant, not a polling cadence — asks the loop to resume
//! it. Nothing is ever re-enqueued before its due time: the check is made again when the record
//! comes back. In steady state the lateness is the resume plus one fetch round trip
//! (`fetch.wait.max.ms` is lowered for this consumer).
//!
//! **Rebalance.** A revoke (of every partition with the eager assignors, of some with
//! `cooperative-sticky`) forgets the pauses of exactly the revoked partitions: each partition
//! has a generation (shared::kafka::rebalance), bumped when it is revoked, and a timer whose
//! generation is stale is ignored. After a new assignment each partition starts from its
//! committed offset, is resumed (the context resumes every newly assigned partition), its head
//! record is fetched again and, if not due, paused again — on whichever instance now owns it.
//! An instance that lost a partition therefore neither resumes it nor keeps its timer alive,
//! and the partitions it keeps stay paused until their own due time.
//!
//! **Errors.** A re-enqueue is retried until the broker acknowledges it when the failure is
//! transient. One the broker refuses for the record itself (too large, invalid) can never
//! succeed and would stop its partition: that delivery is dead-lettered as `undeliverable`
//! instead, and if even the dead letter is refused, its row in PostgreSQL is marked so and the
//! record skipped (logged and counted): never a partition stopped for good.
//!
//! **Memory** is one small entry per paused partition: pending records stay in Kafka.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use shared::kafka::{Generations, Rebalancing, commit};
use shared::liveness::Heartbeat;
use shared::records::{
    DeadLetterReason, DeadLetterRecord, ERROR_MAX, Outgoing, RetryRecord, SchemaVersion,
    SourcePosition,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Tier};

const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A request from a timer to resume a partition.
struct Resume {
    topic: String,
    partition: i32,
    generation: u64,
}

pub struct Scheduler {
    pub consumer: StreamConsumer<Rebalancing>,
    pub producer: FutureProducer,
    pub pool: Pool,
    pub deliveries_topic: String,
    pub dlq_topic: String,
    /// Tier name by topic.
    pub tiers: HashMap<String, String>,
    pub metrics: Metrics,
    pub produce_timeout: Duration,
    pub heartbeat: Heartbeat,
}

/// How a produce ended.
enum Sent {
    Acked,
    /// The broker refused the record for good: why.
    Refused(String),
    Shutdown,
}

fn tpl(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        let (resume_tx, mut resume_rx) = mpsc::channel::<Resume>(1024);
        let mut paused: HashMap<(String, i32), u64> = HashMap::new();
        let mut generations = Generations::default();
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        loop {
            self.metrics
                .paused
                .set(i64::try_from(paused.len()).unwrap_or(i64::MAX));
            enum Wake<'a> {
                Stop,
                Lag,
                Resume(Option<Resume>),
                Message(rdkafka::error::KafkaResult<BorrowedMessage<'a>>),
            }
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Stop,
                _ = lag_tick.tick() => Wake::Lag,
                r = resume_rx.recv() => Wake::Resume(r),
                m = self.consumer.recv() => Wake::Message(m),
            };
            // Pauses of revoked partitions are forgotten (module docs), before anything else.
            for p in generations.revoke(self.consumer.context().take_revoked()) {
                paused.remove(&p);
            }
            self.heartbeat.ran();
            match wake {
                Wake::Stop => break,
                Wake::Lag => self.update_lag(),
                Wake::Resume(None) => {}
                Wake::Resume(Some(r)) => {
                    tracing::debug!(topic = %r.topic, partition = r.partition, generation = r.generation, "timer fired");
                    let key = (r.topic.clone(), r.partition);
                    if paused.get(&key) == Some(&r.generation)
                        && r.generation == generations.of(&r.topic, r.partition)
                    {
                        paused.remove(&key);
                        if let Err(e) = self.consumer.resume(&tpl(&r.topic, r.partition)) {
                            tracing::warn!(topic = %r.topic, partition = r.partition, error = %e, "resume failed");
                        }
                    }
                }
                Wake::Message(Ok(m)) => {
                    if let Some(wait) = self.handle(&m, &shutdown).await {
                        let generation = generations.of(m.topic(), m.partition());
                        self.pause(&m, wait, generation, &resume_tx, &mut paused);
                    }
                }
                Wake::Message(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        commit(&self.consumer);
    }

    /// Re-enqueues `m` if it is due (or skips it if malformed) and stores its offset; returns
    /// how long to wait if it is not due yet.
    async fn handle(
        &self,
        m: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Option<Duration> {
        let tier = self.tiers.get(m.topic()).cloned().unwrap_or_default();
        let record: RetryRecord = match m.payload().map(serde_json::from_slice) {
            Some(Ok(r)) => r,
            other => {
                let reason = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "empty record".to_owned(),
                };
                tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "malformed retry record skipped");
                self.metrics.malformed.get_or_create(&Tier { tier }).inc();
                self.store(m);
                return None;
            }
        };
        let now = Utc::now();
        if record.due_at > now {
            return Some((record.due_at - now).to_std().unwrap_or_default());
        }
        // The trace the record carries continues; the tenant header is the record's own.
        let cx = shared::kafka::extract_trace_context(m.headers());
        self.heartbeat.busy(true);
        let sent = match Outgoing::delivery(&record.delivery, &cx) {
            Ok(o) => self.send(&self.deliveries_topic, &o, shutdown).await,
            Err(e) => Sent::Refused(format!("re-encoding the delivery: {e}")),
        };
        let done = match sent {
            Sent::Acked => {
                let late = (Utc::now() - record.due_at).to_std().unwrap_or_default();
                self.metrics
                    .lateness
                    .get_or_create(&Tier { tier: tier.clone() })
                    .observe(late.as_secs_f64());
                self.metrics.reenqueued.get_or_create(&Tier { tier }).inc();
                true
            }
            Sent::Refused(why) => self.undeliverable(m, record, &cx, &why, shutdown).await,
            // Not stored: handled again after restart.
            Sent::Shutdown => false,
        };
        self.heartbeat.busy(false);
        if done {
            self.heartbeat.progressed();
            self.store(m);
        }
        None
    }

    /// Produces until acknowledged, refused for good, or shutdown.
    async fn send(&self, topic: &str, record: &Outgoing, shutdown: &CancellationToken) -> Sent {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .producer
                .send(record.to(topic), self.produce_timeout)
                .await
            {
                Ok(_) => return Sent::Acked,
                Err((e, _)) if shared::kafka::permanent(&e) => {
                    return Sent::Refused(format!(
                        "the broker refused the record for {topic}: {e}"
                    ));
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, topic, "re-enqueue failed; retrying");
                    // The broker's (away, no leader, timed out), or ours (a fatal producer,
                    // refused credentials): only the latter may show as stuck and restart.
                    self.heartbeat.retrying(shared::kafka::unavailable(&e));
                }
            }
            if shutdown.is_cancelled() {
                return Sent::Shutdown;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// A due delivery the broker will not take back on `deliveries`: dead-letter it, or at
    /// least mark its row (module docs). Returns whether the record may be released.
    async fn undeliverable(
        &self,
        m: &BorrowedMessage<'_>,
        record: RetryRecord,
        cx: &shared::kafka::TraceContext,
        why: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::error!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            error = why,
            "a due delivery cannot be re-enqueued; dead-lettering it as undeliverable"
        );
        self.metrics.undeliverable.inc();
        let source = SourcePosition {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let delivery_id = record.delivery.delivery_id;
        let dead = DeadLetterRecord {
            schema_version: SchemaVersion::CURRENT,
            reason: DeadLetterReason::Undeliverable,
            dead_lettered_at: Utc::now(),
            delivery: record.delivery,
            last_status: None,
            error_class: None,
            response_body: None,
            error: Some(shared::text::cut(why, ERROR_MAX).to_owned()),
            source: source.clone(),
        };
        let sent = match Outgoing::dead_letter(&dead, cx) {
            Ok(o) => self.send(&self.dlq_topic, &o, shutdown).await,
            Err(e) => Sent::Refused(format!("encoding the dead letter: {e}")),
        };
        match sent {
            Sent::Acked => {}
            Sent::Shutdown => return false,
            Sent::Refused(e) => {
                tracing::error!(error = %e, "the dead letter was refused too; marking the row only");
            }
        }
        // The row says so (the API and `harborctl dlq` list it), whether or not the record
        // reached the DLQ topic; retried while the database is away.
        let source = serde_json::to_value(&source).unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let marked = match self.pool.get().await {
                Ok(client) => client
                    .execute(
                        "UPDATE deliveries SET status = 'dead_lettered', dead_letter_reason = 'undeliverable',
                            dead_letter_source = $2, updated_at = now()
                         WHERE id = $1 AND status <> 'delivered'",
                        &[&delivery_id as &(dyn tokio_postgres::types::ToSql + Sync), &source],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (shared::db::permanent(&e), shared::db::unavailable(&e), shared::error_chain(&e))
                    }),
                Err(e) => Err((false, shared::db::pool_unavailable(&e), shared::error_chain(&e))),
            };
            let dependency = match marked {
                Ok(()) => return true,
                Err((true, _, e)) => {
                    tracing::error!(error = %e, "marking the row failed for good; skipped");
                    return true;
                }
                Err((false, dependency, e)) => {
                    tracing::warn!(error = %e, "marking the row failed; retrying");
                    dependency
                }
            };
            self.heartbeat.retrying(dependency);
            if shutdown.is_cancelled() {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Sets `retry_lag{tier}`: per owned partition, the high watermark minus the next offset
    /// to read (or minus the low watermark before the first fetch).
    fn update_lag(&self) {
        let mut by_tier: HashMap<&str, i64> = HashMap::new();
        for tier in self.tiers.values() {
            by_tier.insert(tier, 0);
        }
        for (topic, _, lag) in shared::kafka::partition_lag(&self.consumer) {
            if let Some(tier) = self.tiers.get(&topic) {
                *by_tier.entry(tier).or_insert(0) += lag;
            }
        }
        for (tier, lag) in by_tier {
            self.metrics
                .lag
                .get_or_create(&Tier {
                    tier: tier.to_owned(),
                })
                .set(lag);
        }
    }

    fn store(&self, m: &BorrowedMessage<'_>) {
        if let Err(e) = self
            .consumer
            .store_offset(m.topic(), m.partition(), m.offset())
        {
            tracing::debug!(error = %e, "offset not stored (partition revoked?)");
        }
    }

    fn pause(
        &self,
        m: &BorrowedMessage<'_>,
        wait: Duration,
        generation: u64,
        resume_tx: &mpsc::Sender<Resume>,
        paused: &mut HashMap<(String, i32), u64>,
    ) {
        let (topic, partition) = (m.topic().to_owned(), m.partition());
        let list = tpl(&topic, partition);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(%topic, partition, error = %e, "pause failed");
            return;
        }
        // Fetch the head record again after the resume.
        if let Err(e) = self.consumer.seek(
            &topic,
            partition,
            Offset::Offset(m.offset()),
            Duration::from_secs(5),
        ) {
            tracing::warn!(%topic, partition, error = %e, "seek failed");
        }
        tracing::debug!(%topic, partition, offset = m.offset(), wait_ms = wait.as_millis(), generation, "paused until due");
        paused.insert((topic.clone(), partition), generation);
        let tx = resume_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tx
                .send(Resume {
                    topic,
                    partition,
                    generation,
                })
                .await;
        });
    }
}
