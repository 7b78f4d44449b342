//! Which delivered records of one partition are acknowledged, and so how far it is safe to
//! commit.
//!
//! Records of a partition are delivered in offset order but finish in any order (different
//! keys run concurrently). The committed offset is a promise that everything before it is done,
//! so it may only advance to the first delivered offset not yet acknowledged. Offsets are
//! tracked explicitly rather than assumed contiguous: compaction and transaction markers leave
//! gaps in real Kafka partitions.
//!
//! What is done beyond that first gap travels with the commit (as Confluent's Parallel
//! Consumer does it, in the commit's metadata): the next owner of the partition loads it with
//! [`OffsetTracker::completed_beyond`] and skips those records instead of running them again.

use std::collections::{BTreeSet, VecDeque};

/// The most done offsets beyond the first gap carried into a commit.
const MAX_DONE_BEYOND: usize = 4096;

/// Delivered-but-not-yet-committable offsets of one partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Delivered offsets in offset order, with whether each is acknowledged. Only offsets at
    /// or after the first unacknowledged one are kept.
    pending: VecDeque<(u64, bool)>,
    /// One past the last delivered offset.
    next: Option<u64>,
    /// The offset and completed set last committed successfully.
    committed: Option<(u64, Vec<u64>)>,
    /// Offsets a previous owner completed beyond its committed offset: when they arrive they
    /// count as acknowledged at once and are not handed out. Kept until the commit passes
    /// them, so a rewind that delivers them again skips them again (what runs again after a
    /// rewind stays a suffix).
    completed: BTreeSet<u64>,
    /// The partition was revoked from this consumer: its records still in memory belong to
    /// the next owner, and nothing of this consumer may run them any more.
    retired: bool,
}

impl OffsetTracker {
    /// Records that `offset` was delivered by the broker; false when a previous owner already
    /// completed it (it is acknowledged here and must not be handed to the application).
    ///
    /// An offset at or below one already delivered means the broker rewound (a seek after an
    /// error, or a redelivery): offsets from there on are delivered again and tracked anew,
    /// while what is below stays as it was (an unacknowledged record below the rewind point
    /// still holds the commit back).
    pub(crate) fn delivered(&mut self, offset: u64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            while self.pending.back().is_some_and(|(o, _)| *o >= offset) {
                self.pending.pop_back();
            }
        }
        let done = self.completed.contains(&offset);
        self.pending.push_back((offset, done));
        self.next = Some(offset + 1);
        self.pop_acknowledged();
        !done
    }

    /// Marks `offset` done. Unknown offsets (already committed past) are ignored.
    pub(crate) fn ack(&mut self, offset: u64) {
        if let Ok(index) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            self.pending[index].1 = true;
        }
        self.pop_acknowledged();
    }

    fn pop_acknowledged(&mut self) {
        while self.pending.front().is_some_and(|(_, acked)| *acked) {
            self.pending.pop_front();
        }
        if let Some(committable) = self.committable() {
            self.completed = self.completed.split_off(&committable);
        }
    }

    /// Offsets completed before this consumer started, beyond the committed one (from the
    /// commit's metadata); those below `committed` are meaningless and dropped.
    pub(crate) fn completed_beyond(
        &mut self,
        committed: u64,
        offsets: impl IntoIterator<Item = u64>,
    ) {
        self.completed
            .extend(offsets.into_iter().filter(|offset| *offset > committed));
    }

    /// The offset to commit: the first delivered offset not yet acknowledged, or one past the
    /// last delivered when all are. `None` before anything was delivered.
    pub(crate) fn committable(&self) -> Option<u64> {
        self.pending
            .front()
            .map(|(offset, _)| *offset)
            .or(self.next)
    }

    /// The offsets known done beyond the committable one, ascending, at most
    /// [`MAX_DONE_BEYOND`]: acknowledged ones after the first gap, and a previous owner's not
    /// yet delivered again. (The commit metadata holds far fewer; what is left out is only run
    /// again by the next owner.)
    pub(crate) fn done_beyond(&self) -> Vec<u64> {
        let after = self.next.unwrap_or(0);
        self.pending
            .iter()
            .filter(|(_, acked)| *acked)
            .map(|(offset, _)| *offset)
            .chain(self.completed.range(after..).copied())
            .take(MAX_DONE_BEYOND)
            .collect()
    }

    /// The committable offset and what is done beyond it, if either changed since the last
    /// successful commit.
    pub(crate) fn to_commit(&self) -> Option<(u64, Vec<u64>)> {
        let offset = self.committable()?;
        let commit = (offset, self.done_beyond());
        (Some(&commit) != self.committed.as_ref()).then_some(commit)
    }

    /// Records a successful commit.
    pub(crate) fn committed(&mut self, commit: (u64, Vec<u64>)) {
        self.committed = Some(commit);
    }

    /// Forgets what was last committed, so the next commit sends the offset again even if it
    /// did not move: a broker that takes commits from a member that no longer owns the
    /// partition (tansu does) could otherwise keep that member's older offset for good.
    pub(crate) fn forget_commit(&mut self) {
        self.committed = None;
    }

    /// The partition was revoked: records of it still held are not this consumer's to run.
    pub(crate) fn retire(&mut self) {
        self.retired = true;
    }

    /// Whether the partition was revoked.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offsets: impl IntoIterator<Item = u64>) -> OffsetTracker {
        let mut tracker = OffsetTracker::default();
        offsets.into_iter().for_each(|offset| {
            tracker.delivered(offset);
        });
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
        assert_eq!(tracker.to_commit(), Some((0, vec![])));
        tracker.committed((0, vec![]));
        assert_eq!(tracker.to_commit(), None);
        tracker.ack(0);
        assert_eq!(tracker.to_commit(), Some((1, vec![])));
        // A failed commit is not recorded, so the same offset is offered again.
        assert_eq!(tracker.to_commit(), Some((1, vec![])));
    }

    #[test]
    fn a_rewind_redelivers_from_its_point_and_keeps_what_is_below() {
        let mut tracker = delivered([5, 6, 7]);
        tracker.ack(5);
        tracker.delivered(6);
        assert_eq!(tracker.committable(), Some(6));
        tracker.ack(6);
        assert_eq!(tracker.committable(), Some(7));
        assert_eq!(OffsetTracker::default().committable(), None);
        // An unacknowledged record below the rewind point still holds the commit back.
        let mut tracker = delivered([1, 2, 3]);
        tracker.ack(2);
        tracker.delivered(3);
        tracker.ack(3);
        assert_eq!(tracker.committable(), Some(1));
        tracker.ack(1);
        assert_eq!(tracker.committable(), Some(4));
    }

    #[test]
    fn work_done_beyond_the_first_gap_is_committed_with_it_and_skipped_by_the_next_owner() {
        let mut tracker = delivered(10..=14);
        tracker.ack(11);
        tracker.ack(13);
        assert_eq!(tracker.to_commit(), Some((10, vec![11, 13])));
        // The next owner starts at 10 and skips what was done.
        let mut next = OffsetTracker::default();
        next.completed_beyond(10, [11, 13, 4]);
        assert!(next.delivered(10));
        assert!(!next.delivered(11), "11 was done");
        assert_eq!(
            next.to_commit(),
            Some((10, vec![11, 13])),
            "13 still known done"
        );
        assert!(next.delivered(12));
        assert!(!next.delivered(13));
        next.ack(10);
        assert_eq!(next.committable(), Some(12));
        next.ack(12);
        assert_eq!(next.to_commit(), Some((14, vec![])));
    }

    #[test]
    fn a_rewind_after_skipping_skips_the_same_records_again() {
        let mut tracker = OffsetTracker::default();
        tracker.completed_beyond(10, [11, 13]);
        assert!(tracker.delivered(10));
        assert!(!tracker.delivered(11));
        assert!(tracker.delivered(12));
        // The broker rewinds to 10: 11 and 13 are still done, so what runs again is 10 and 12.
        assert!(tracker.delivered(10));
        assert!(!tracker.delivered(11), "11 was done");
        assert!(tracker.delivered(12));
        assert!(!tracker.delivered(13), "13 was done");
        tracker.ack(10);
        tracker.ack(12);
        assert_eq!(tracker.to_commit(), Some((14, vec![])));
    }
}
