//! The consumer loop: collect a batch from `events`, hand it to [`Fanout::handle`] until it
//! succeeds, then store each partition's highest offset of the batch.
//!
//! **Offsets.** Auto-store is off (shared::kafka). A batch is handled whole and in order, so
//! once `handle` returned, every record up to the highest offset of each partition in the batch
//! is durable, and storing that offset is exact. A failing batch (database or broker down) is
//! retried with backoff, never skipped: the partition waits rather than loses events. Poison
//! records are not failures: they go to `events.invalid` and their offsets move on.
//!
//! **Rebalance and shutdown.** Before partitions are revoked the context commits what was
//! stored, so the next owner starts right after it; a batch in progress for a revoked
//! partition may be handled twice, which the deterministic ids make harmless. On shutdown the
//! loop finishes its batch, stores, and commits synchronously.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::batch::Fanout;

/// Commits stored offsets before partitions are taken away.
pub struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing"
            );
            commit(consumer);
        }
    }
}

fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed"),
    }
}

pub struct BatchSettings {
    pub max: usize,
    pub linger: Duration,
}

/// Reads the next batch: waits for one record, then takes more until `max` or `linger`.
async fn next_batch(
    consumer: &StreamConsumer<CommitOnRevoke>,
    settings: &BatchSettings,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedMessage>> {
    let first = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            m = consumer.recv() => match m {
                Ok(m) => break m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + settings.linger;
    while batch.len() < settings.max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m.detach()),
            Ok(Err(e)) => tracing::warn!(error = %e, "consume error"),
            Err(_) => break,
        }
    }
    Some(batch)
}

pub async fn run(
    consumer: std::sync::Arc<StreamConsumer<CommitOnRevoke>>,
    fanout: Fanout,
    settings: BatchSettings,
    shutdown: CancellationToken,
) {
    while let Some(batch) = next_batch(&consumer, &settings, &shutdown).await {
        let mut backoff = Duration::from_millis(100);
        loop {
            match fanout.handle(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %shared::error_chain(&e), records = batch.len(), "batch failed; retrying");
                    tokio::select! {
                        // Not stored: the batch is handled again after the restart.
                        _ = shutdown.cancelled() => { commit(&*consumer); return; }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
        for m in &batch {
            let slot = highest
                .entry((m.topic(), m.partition()))
                .or_insert(m.offset());
            *slot = (*slot).max(m.offset());
        }
        for ((topic, partition), offset) in highest {
            // Fails only for a partition revoked meanwhile; its next owner re-handles it.
            if let Err(e) = consumer.store_offset(topic, partition, offset) {
                tracing::debug!(topic, partition, offset, error = %e, "offset not stored");
            }
        }
    }
    commit(&*consumer);
}
