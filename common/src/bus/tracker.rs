//! Which delivered records of one partition are acknowledged, and so how far it is safe to
//! commit.
//!
//! Records of a partition are delivered in offset order but finish in any order (different
//! keys run concurrently). The committed offset is a promise that everything before it is done,
//! so it may only advance to the first delivered offset not yet acknowledged. Offsets are
//! tracked explicitly rather than assumed contiguous: compaction and transaction markers leave
//! gaps in real Kafka partitions.

use std::collections::VecDeque;

/// Delivered-but-not-yet-committable offsets of one partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Delivered offsets in delivery order, with whether each is acknowledged. Only offsets at
    /// or after the first unacknowledged one are kept.
    pending: VecDeque<(u64, bool)>,
    /// One past the last delivered offset.
    next: Option<u64>,
    /// The offset last committed successfully.
    committed: Option<u64>,
}

impl OffsetTracker {
    /// Records that `offset` was handed to the application.
    ///
    /// An offset at or below one already delivered means the broker rewound (a seek after an
    /// error, or a redelivery): the earlier state no longer describes what is in flight, so
    /// tracking restarts from here; acks of the superseded deliveries are then ignored.
    pub(crate) fn delivered(&mut self, offset: u64) {
        if self.next.is_some_and(|next| offset < next) {
            self.pending.clear();
        }
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
    }

    /// Marks `offset` done. Unknown offsets (already committed past, or superseded) are ignored.
    pub(crate) fn ack(&mut self, offset: u64) {
        if let Ok(index) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            self.pending[index].1 = true;
        }
        while self.pending.front().is_some_and(|(_, acked)| *acked) {
            self.pending.pop_front();
        }
    }

    /// The offset to commit: the first delivered offset not yet acknowledged, or one past the
    /// last delivered when all are. `None` before anything was delivered.
    pub(crate) fn committable(&self) -> Option<u64> {
        self.pending
            .front()
            .map(|(offset, _)| *offset)
            .or(self.next)
    }

    /// The committable offset if it moved since the last successful commit.
    pub(crate) fn to_commit(&self) -> Option<u64> {
        self.committable()
            .filter(|offset| Some(*offset) != self.committed)
    }

    /// Records a successful commit of `offset`.
    pub(crate) fn committed(&mut self, offset: u64) {
        self.committed = Some(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offsets: impl IntoIterator<Item = u64>) -> OffsetTracker {
        let mut tracker = OffsetTracker::default();
        offsets
            .into_iter()
            .for_each(|offset| tracker.delivered(offset));
        tracker
    }

    #[test]
    fn out_of_order_acks_commit_exactly_the_contiguous_prefix() {
        let mut tracker = delivered(1..=5);
        tracker.ack(1);
        assert_eq!(tracker.committable(), Some(2));
        for (ack, expected) in [(3, 2), (5, 2), (4, 2), (2, 6)] {
            tracker.ack(ack);
            assert_eq!(tracker.committable(), Some(expected), "after ack {ack}");
        }
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_back_the_commit() {
        let mut tracker = delivered([10, 11, 15, 20]);
        tracker.ack(10);
        tracker.ack(11);
        assert_eq!(tracker.committable(), Some(15));
        tracker.ack(20);
        tracker.ack(15);
        assert_eq!(tracker.committable(), Some(21));
    }

    #[test]
    fn commits_only_when_moved_and_after_success() {
        let mut tracker = delivered([0, 1]);
        assert_eq!(tracker.to_commit(), Some(0));
        tracker.committed(0);
        assert_eq!(tracker.to_commit(), None);
        tracker.ack(0);
        assert_eq!(tracker.to_commit(), Some(1));
        // A failed commit is not recorded, so the same offset is offered again.
        assert_eq!(tracker.to_commit(), Some(1));
    }

    #[test]
    fn rewind_restarts_tracking_and_ignores_stale_acks() {
        let mut tracker = delivered([5, 6, 7]);
        tracker.ack(5);
        tracker.delivered(6);
        assert_eq!(tracker.committable(), Some(6));
        tracker.ack(7);
        assert_eq!(tracker.committable(), Some(6));
        tracker.ack(6);
        assert_eq!(tracker.committable(), Some(7));
        assert_eq!(OffsetTracker::default().committable(), None);
    }
}
