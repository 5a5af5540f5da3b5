//! The one consumer context every service uses: commit on revoke, and tell the consumer loop
//! which partitions it lost.
//!
//! **Why per partition.** With the eager assignors (`roundrobin`, `range`) a rebalance revokes
//! every partition; with `cooperative-sticky` it revokes only those that move, and the others
//! keep flowing without a pause. A loop that forgot *all* its state on any revoke would, under
//! cooperative-sticky, drop the queued records of partitions it still owns while the consumer
//! reads on past them — records skipped, never sent. So the context records exactly which
//! partitions were revoked, and each loop forgets only those: their queued work (the next owner
//! reads it from the committed offset), their offset watermarks, their pauses. Work of a
//! revoked partition that is already in flight finishes, but its offset is not stored by this
//! member (a stale generation), so the hand-over repeats at most that work.
//!
//! **When.** librdkafka runs the callbacks inside the consumer's poll, that is inside the
//! loop's own `recv()`; the loop calls [`Rebalancing::take_revoked`] right after every wake-up,
//! before it starts any work, so nothing of a revoked partition is started after the revoke.
//!
//! **Resume on assign.** librdkafka keeps a partition's pause flag across a revoke and a
//! re-assignment to the same member, while the loop forgot its timer for it: a loop that
//! pauses partitions (the retry-scheduler) asks for every newly assigned partition to be
//! resumed, so none stays paused forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A topic partition.
pub type Partition = (String, i32);

#[derive(Default)]
pub struct Rebalancing {
    revoked: Mutex<Vec<Partition>>,
    revokes: AtomicU64,
    resume_on_assign: bool,
}

impl Rebalancing {
    /// For loops that pause partitions: resume every newly assigned one (module docs).
    pub fn resuming() -> Self {
        Self {
            resume_on_assign: true,
            ..Self::default()
        }
    }

    /// How many revokes happened so far (any partition).
    pub fn revokes(&self) -> u64 {
        self.revokes.load(Ordering::SeqCst)
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(
            &mut *self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ClientContext for Rebalancing {}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing"
            );
            commit(consumer);
            let mut revoked = self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            revoked.extend(
                partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
            self.revokes.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::debug!(partitions = partitions.count(), "partitions assigned");
            if self.resume_on_assign
                && let Err(e) = consumer.resume(partitions)
            {
                tracing::warn!(error = %e, "resuming newly assigned partitions failed");
            }
        }
    }
}

/// Commits the stored offsets synchronously (on revoke and at shutdown).
pub fn commit<C: Consumer<X>, X: ConsumerContext>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed"),
    }
}

/// Each partition's generation: bumped when it is revoked, so work read in an earlier
/// generation is recognised as stale (its offset is not stored, its timers are ignored).
#[derive(Debug, Default)]
pub struct Generations(HashMap<Partition, u64>);

impl Generations {
    pub fn of(&self, topic: &str, partition: i32) -> u64 {
        self.0
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Bumps each revoked partition; returns them.
    pub fn revoke(&mut self, revoked: Vec<Partition>) -> Vec<Partition> {
        for p in &revoked {
            *self.0.entry(p.clone()).or_insert(0) += 1;
        }
        revoked
    }
}
