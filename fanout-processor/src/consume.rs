//! The consumer loop: collect a batch from `events`, hand it to [`Fanout::handle`] until it
//! succeeds, then store each partition's highest offset of the batch.
//!
//! **Offsets.** Auto-store is off (shared::kafka). A batch is handled whole and in order, so
//! once `handle` returned, every record up to the highest offset of each partition in the batch
//! is durable, and storing that offset is exact. Poison records are not failures: they go to
//! `events.invalid` and their offsets move on.
//!
//! **Transient or permanent.** A failing batch is retried with backoff when the failure is
//! transient (the database or the broker is away, a timeout): the partition waits rather than
//! loses events. A failure that is about the data (PostgreSQL refused a value, the broker
//! refused a record as too large) would fail the same way forever and stop every partition this
//! worker owns; so the batch is split in halves, each handled on its own, down to the one record
//! that fails alone, which goes to `events.invalid` with the database's or broker's reason. The
//! halves are handled in order, and handling is idempotent (batch.rs), so the split changes
//! nothing for the records that were fine.
//!
//! **Rebalance and shutdown.** Before partitions are revoked the context commits what was
//! stored, so the next owner starts right after it; a batch in progress for a revoked
//! partition may be handled twice, which the deterministic ids make harmless, and its offset is
//! not stored here (the partition is no longer ours, or is ours again from the commit). On
//! shutdown the loop finishes its batch, stores, and commits synchronously.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use shared::kafka::{Rebalancing, commit};
use shared::liveness::Heartbeat;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchError, Fanout};

pub struct BatchSettings {
    pub max: usize,
    pub linger: Duration,
}

/// Reads the next batch: waits for one record, then takes more until `max` or `linger`.
async fn next_batch(
    consumer: &StreamConsumer<Rebalancing>,
    settings: &BatchSettings,
    heartbeat: &Heartbeat,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedMessage>> {
    // Idle, the loop still shows that it runs.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let first = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tick.tick() => heartbeat.ran(),
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

/// Handles `batch`, isolating records that fail permanently (module docs); returns only
/// transient errors, with how many of the batch's first records are done (when a split half
/// failed after the one before it succeeded), so the retry starts after them.
async fn handle_isolating(
    fanout: &Fanout,
    batch: &[OwnedMessage],
) -> Result<(), (usize, BatchError)> {
    match fanout.handle(batch).await {
        Ok(()) => Ok(()),
        // Too large to finish within the statement timeout: halves (each its own transaction,
        // as safe to repeat as the whole) until each fits. Nothing is quarantined; one record
        // that alone is too slow is retried like any transient error, and the records after
        // it wait for it (their order holds).
        Err(e) if e.too_slow() && batch.len() > 1 => {
            tracing::warn!(
                records = batch.len(),
                "the batch timed out in the database; splitting it"
            );
            halves(fanout, batch).await
        }
        Err(e) if !e.permanent() => Err((0, e)),
        Err(e) => {
            if let [one] = batch {
                let reason = format!("refused downstream: {}", shared::error_chain(&e));
                return match fanout.quarantine(one, &reason).await {
                    Err(q) if q.permanent() => {
                        // Not even the quarantine record can be written: count and skip.
                        fanout.metrics.event("dropped");
                        tracing::error!(partition = one.partition(), offset = one.offset(),
                            error = %shared::error_chain(&q), "event record could not be quarantined; skipped");
                        Ok(())
                    }
                    other => other.map_err(|q| (0, q)),
                };
            }
            tracing::warn!(records = batch.len(), error = %shared::error_chain(&e),
                "a record of the batch was refused; isolating it");
            halves(fanout, batch).await
        }
    }
}

/// The first half, then the second, counting the first half as done if the second fails.
async fn halves(fanout: &Fanout, batch: &[OwnedMessage]) -> Result<(), (usize, BatchError)> {
    let (a, b) = batch.split_at(batch.len() / 2);
    Box::pin(handle_isolating(fanout, a)).await?;
    Box::pin(handle_isolating(fanout, b))
        .await
        .map_err(|(done, e)| (a.len() + done, e))
}

pub async fn run(
    consumer: std::sync::Arc<StreamConsumer<Rebalancing>>,
    fanout: Fanout,
    settings: BatchSettings,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    loop {
        heartbeat.busy(false);
        // Revokes before this batch concern partitions whose offsets it does not store.
        consumer.context().take_revoked();
        let Some(batch) = next_batch(&consumer, &settings, &heartbeat, &shutdown).await else {
            break;
        };
        heartbeat.busy(true);
        let mut backoff = Duration::from_millis(100);
        // Records of the batch already handled by an earlier try (a split whose first part
        // succeeded): not sent again on each retry. The offsets still wait for the whole batch.
        let mut done = 0;
        loop {
            match handle_isolating(&fanout, &batch[done..]).await {
                Ok(()) => break,
                Err((more, e)) => {
                    done += more;
                    heartbeat.retrying(e.dependency());
                    tracing::error!(error = %shared::error_chain(&e), records = batch.len() - done, "batch failed; retrying");
                    tokio::select! {
                        // Not stored: the batch is handled again after the restart.
                        _ = shutdown.cancelled() => { commit(&*consumer); return; }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        heartbeat.progressed();
        let revoked: HashSet<(String, i32)> =
            consumer.context().take_revoked().into_iter().collect();
        let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
        for m in &batch {
            let slot = highest
                .entry((m.topic(), m.partition()))
                .or_insert(m.offset());
            *slot = (*slot).max(m.offset());
        }
        for ((topic, partition), offset) in highest {
            if revoked.contains(&(topic.to_owned(), partition)) {
                continue;
            }
            // Fails only for a partition revoked meanwhile; its next owner re-handles it.
            if let Err(e) = consumer.store_offset(topic, partition, offset) {
                tracing::debug!(topic, partition, offset, error = %e, "offset not stored");
            }
        }
    }
    commit(&*consumer);
}
