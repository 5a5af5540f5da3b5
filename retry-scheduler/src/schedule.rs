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
//! **Rebalance.** A rebalance (eager) revokes every partition and forgets every pause: the
//! revoke handler bumps a generation number, and a timer whose generation is stale is ignored.
//! After the new assignment each partition starts from its committed offset, its head record
//! is fetched again and, if not due, paused again — on whichever instance now owns it. An
//! instance that lost a partition therefore neither resumes it nor keeps its timer alive.
//!
//! **Memory** is one small entry per paused partition: pending records stay in Kafka.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use shared::records::RetryRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Tier};

/// Forgets pauses on revoke (by bumping the generation) and commits what was stored.
pub struct SchedulerContext {
    pub generation: Arc<AtomicU64>,
}

impl ClientContext for SchedulerContext {}

impl ConsumerContext for SchedulerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.generation.fetch_add(1, Ordering::SeqCst);
            commit(consumer);
        }
    }

    /// librdkafka keeps a partition's pause flag across a revoke and a re-assignment to the
    /// same member; our timers for it were forgotten, so it would stay paused forever (the
    /// classic retry-topic bug). Every newly assigned partition is therefore resumed; its head
    /// record is fetched again and paused anew if not due.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::debug!(partitions = ?partitions, "assigned");
        }
        if let Rebalance::Assign(partitions) = rebalance
            && let Err(e) = consumer.resume(partitions)
        {
            tracing::warn!(error = %e, "resuming newly assigned partitions failed");
        }
    }
}

fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed"),
    }
}

const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A request from a timer to resume a partition.
struct Resume {
    topic: String,
    partition: i32,
    generation: u64,
}

pub struct Scheduler {
    pub consumer: StreamConsumer<SchedulerContext>,
    pub producer: FutureProducer,
    pub deliveries_topic: String,
    /// Tier name by topic.
    pub tiers: HashMap<String, String>,
    pub metrics: Metrics,
    pub generation: Arc<AtomicU64>,
    pub produce_timeout: Duration,
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
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            // Pauses of an earlier generation were forgotten by a rebalance.
            paused.retain(|_, g| *g == generation);
            self.metrics
                .paused
                .set(i64::try_from(paused.len()).unwrap_or(i64::MAX));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = lag_tick.tick() => self.update_lag(),
                Some(r) = resume_rx.recv() => {
                    tracing::debug!(topic = %r.topic, partition = r.partition, generation = r.generation, "timer fired");
                    if r.generation == self.generation.load(Ordering::SeqCst)
                        && paused.remove(&(r.topic.clone(), r.partition)).is_some()
                        && let Err(e) = self.consumer.resume(&tpl(&r.topic, r.partition))
                    {
                        tracing::warn!(topic = %r.topic, partition = r.partition, error = %e, "resume failed");
                    }
                }
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        if let Some(wait) = self.handle(&m, &shutdown).await {
                            // The generation now, not at the top of the loop: a rebalance is
                            // served inside recv(), and a timer of the old generation would be
                            // ignored, leaving this partition paused for good.
                            let current = self.generation.load(Ordering::SeqCst);
                            self.pause(&m, wait, current, &resume_tx, &mut paused);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
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
        let value = match serde_json::to_vec(&record.delivery) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "re-encoding a delivery failed; skipping");
                self.store(m);
                return None;
            }
        };
        let key = record.delivery.endpoint_id.to_string();
        let headers = m.headers().map_or_else(OwnedHeaders::new, |h| {
            h.iter()
                .fold(OwnedHeaders::new_with_capacity(h.count()), |acc, h| {
                    acc.insert(h)
                })
        });
        // Retried until acked: a record must not be skipped because the broker blinked.
        let mut backoff = Duration::from_millis(100);
        loop {
            let record_out = FutureRecord::to(&self.deliveries_topic)
                .key(&key)
                .payload(&value)
                .headers(headers.clone());
            match self.producer.send(record_out, self.produce_timeout).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "re-enqueue failed; retrying");
                    if shutdown.is_cancelled() {
                        return None; // Not stored: handled again after restart.
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let late = (Utc::now() - record.due_at).to_std().unwrap_or_default();
        self.metrics
            .lateness
            .get_or_create(&Tier { tier: tier.clone() })
            .observe(late.as_secs_f64());
        self.metrics.reenqueued.get_or_create(&Tier { tier }).inc();
        self.store(m);
        None
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
