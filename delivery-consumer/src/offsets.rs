//! The per-partition offset watermark.
//!
//! Records of one partition finish out of order (a fast endpoint's record overtakes a slow
//! one's), but an offset may only be committed when everything before it is durable: the
//! committed offset is the consumer's promise that nothing earlier needs doing after a crash.
//! So each partition keeps the set of offsets read but not finished; the position to commit is
//! the smallest of them, or one past the highest offset read when none is pending. Only that
//! position is stored (never a finished offset above an unfinished one), so after a crash the
//! consumer resumes at the oldest unfinished record and at worst repeats finished ones, whose
//! `webhook-id` is unchanged. Memory is one entry per pending record, bounded by
//! `delivery.max_pending`.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
struct Partition {
    pending: BTreeSet<i64>,
    /// One past the highest offset read.
    next: i64,
    /// The position last reported for storing.
    stored: i64,
}

#[derive(Default)]
pub struct Watermarks {
    partitions: HashMap<i32, Partition>,
}

impl Watermarks {
    pub fn track(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_insert(Partition {
            pending: BTreeSet::new(),
            next: offset,
            stored: offset,
        });
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Marks `offset` finished; returns the position to store when it moved forward.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.pending.remove(&offset) {
            return None;
        }
        let position = p.pending.first().copied().unwrap_or(p.next);
        (position > p.stored).then(|| {
            p.stored = position;
            position
        })
    }

    /// Forgets a partition (it was revoked; its next owner starts from the commit).
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_only() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.track(0, o);
        }
        assert_eq!(w.finish(0, 12), None, "10 and 11 are still pending");
        assert_eq!(w.finish(0, 11), None);
        assert_eq!(w.finish(0, 10), Some(13), "10..=12 done: resume at 13");
        assert_eq!(w.finish(0, 14), None, "13 pending");
        assert_eq!(w.finish(0, 13), Some(15));
        assert_eq!(w.finish(0, 13), None, "finishing twice changes nothing");
    }

    #[test]
    fn partitions_are_independent_and_gaps_are_fine() {
        let mut w = Watermarks::default();
        w.track(0, 5);
        w.track(1, 100);
        // Offsets need not be contiguous (compaction, transaction markers).
        w.track(1, 103);
        assert_eq!(w.finish(1, 100), Some(103));
        assert_eq!(w.finish(0, 5), Some(6));
        assert_eq!(w.finish(1, 103), Some(104));
        w.track(0, 6);
        w.track(1, 105);
        w.forget(0);
        assert_eq!(w.finish(0, 6), None, "unknown once forgotten");
        assert_eq!(w.finish(1, 105), Some(106), "other partitions are kept");
    }
}
