//! The in-memory bus: partitions, offsets, consumer-group commits and the same ack semantics as
//! Kafka, inside one process. For the single-process demo and engine tests only: **nothing is
//! durable**, everything is gone when the process exits.
//!
//! It keeps every record (tests replay a log from the start with a fresh group) unless built
//! with [`MemoryBus::trimming`]: then what every consumer group has committed past is dropped,
//! as Kafka's retention would, so a long-running demo holds only what is unfinished.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::record::{AckInner, lock};
use super::tracker::OffsetTracker;
use super::{
    AckHandle, ConsumerStatus, Delivery, InboundRecord, OutboundRecord, Position, partition_for_key,
};

const SOURCE: &str = "memory";

/// An in-process bus with a fixed number of partitions and a DLQ. Clones share it.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    published: Notify,
}

#[derive(Default)]
struct State {
    partitions: Vec<Log>,
    dead_letters: Vec<OutboundRecord>,
    /// Consumer group → committed offset per partition.
    committed: HashMap<String, Vec<u64>>,
    /// Drop records every group has committed past.
    trim: bool,
}

/// One partition's records from offset `start` on.
#[derive(Default, Clone)]
struct Log {
    start: u64,
    records: VecDeque<OutboundRecord>,
}

impl Log {
    /// The offset the next record gets.
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    fn get(&self, offset: u64) -> Option<&OutboundRecord> {
        let index = offset.checked_sub(self.start)?;
        self.records.get(usize::try_from(index).ok()?)
    }

    /// Drops the records below `offset`.
    fn trim_below(&mut self, offset: u64) {
        while self.start < offset && self.records.pop_front().is_some() {
            self.start += 1;
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(12)
    }
}

impl MemoryBus {
    /// A bus with `partitions` partitions (at least one).
    pub fn new(partitions: u32) -> Self {
        let state = State {
            partitions: vec![Log::default(); partitions.max(1) as usize],
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                published: Notify::new(),
            }),
        }
    }

    /// A bus with `partitions` partitions that drops what every consumer group committed past
    /// (at each commit): its memory follows what is unfinished, not everything ever published.
    /// A group that starts later begins at the oldest record kept.
    pub fn trimming(partitions: u32) -> Self {
        let bus = Self::new(partitions);
        bus.state().trim = true;
        bus
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding this lock, so poisoning cannot hide a broken state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `record` to its key's partition; "acknowledged" at once.
    pub fn publish(&self, record: OutboundRecord) -> Position {
        let position = {
            let mut state = self.state();
            let count = state.partitions.len() as u32;
            let partition = partition_for_key(&record.key, count);
            let log = &mut state.partitions[partition as usize];
            log.records.push_back(record);
            Position {
                partition,
                offset: log.end() - 1,
            }
        };
        self.inner.published.notify_waiters();
        position
    }

    /// Appends `record` to the DLQ.
    pub fn publish_dlq(&self, record: OutboundRecord) -> Position {
        let mut state = self.state();
        state.dead_letters.push(record);
        Position {
            partition: 0,
            offset: state.dead_letters.len() as u64 - 1,
        }
    }

    /// Everything published so far (that a trimming bus still keeps), partition by
    /// partition, with its position.
    pub fn published(&self) -> Vec<(Position, OutboundRecord)> {
        let state = self.state();
        let mut records = Vec::new();
        for (partition, log) in state.partitions.iter().enumerate() {
            for (offset, record) in (log.start..).zip(&log.records) {
                let position = Position {
                    partition: partition as u32,
                    offset,
                };
                records.push((position, record.clone()));
            }
        }
        records
    }

    /// Everything dead-lettered so far, in order.
    pub fn dead_letters(&self) -> Vec<OutboundRecord> {
        self.state().dead_letters.clone()
    }

    /// The committed offset of each partition for `group` (0 where nothing was committed).
    pub fn committed(&self, group: &str) -> Vec<u64> {
        let state = self.state();
        state
            .committed
            .get(group)
            .cloned()
            .unwrap_or_else(|| vec![0; state.partitions.len()])
    }

    /// Sets `group`'s committed offset of `partition`, as an operator resetting a consumer
    /// group's offsets would: its next consumer starts there.
    pub fn set_committed(&self, group: &str, partition: u32, offset: u64) {
        let mut state = self.state();
        let partitions = state.partitions.len();
        let committed = state
            .committed
            .entry(group.to_owned())
            .or_insert_with(|| vec![0; partitions]);
        if let Some(slot) = committed.get_mut(partition as usize) {
            *slot = offset;
        }
    }

    /// A consumer of every partition for `group`, starting at the group's committed offsets
    /// (or the oldest record kept, when that is later).
    pub fn consumer(&self, group: &str) -> MemoryConsumer {
        // The group is registered now, not at its first commit: until it commits, what it
        // has not read yet must not be trimmed by another group's commit.
        let next = {
            let mut state = self.state();
            let starts: Vec<u64> = state.partitions.iter().map(|log| log.start).collect();
            let committed = state
                .committed
                .entry(group.to_owned())
                .or_insert_with(|| vec![0; starts.len()]);
            for (offset, start) in committed.iter_mut().zip(&starts) {
                *offset = (*offset).max(*start);
            }
            committed.clone()
        };
        let trackers = next.iter().map(|_| Arc::default()).collect();
        MemoryConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            next,
            trackers,
            cursor: 0,
            assigned: false,
            status: ConsumerStatus::unwatched(),
        }
    }
}

/// Consumes a [`MemoryBus`] for one group. Acknowledged prefixes are committed whenever it is
/// asked for the next delivery and when it is dropped, as a Kafka consumer commits
/// periodically and on close.
pub struct MemoryConsumer {
    bus: MemoryBus,
    group: String,
    next: Vec<u64>,
    trackers: Vec<Arc<Mutex<OffsetTracker>>>,
    cursor: usize,
    assigned: bool,
    status: ConsumerStatus,
}

impl MemoryConsumer {
    /// The next record, waiting for one to be published if need be. The first delivery
    /// announces the assignment of every partition.
    /// Without `records` only the assignment is announced (there are no revocations).
    pub async fn next(&mut self, records: bool) -> Result<Delivery, super::BusError> {
        if !self.assigned {
            self.assigned = true;
            return Ok(Delivery::Assigned((0..self.next.len() as u32).collect()));
        }
        if !records {
            return std::future::pending().await;
        }
        self.commit();
        loop {
            // Registered before looking, so a publish between the look and the wait wakes us.
            let bus = self.bus.clone();
            let published = bus.inner.published.notified();
            if let Some(record) = self.take_next() {
                return Ok(Delivery::Record(record));
            }
            published.await;
        }
    }

    /// Takes the next record round-robin across partitions, so one busy partition does not
    /// starve the others.
    fn take_next(&mut self) -> Option<InboundRecord> {
        let state = self.bus.state();
        let count = self.next.len();
        for step in 0..count {
            let partition = (self.cursor + step) % count;
            // Another consumer of this group committed (and the log was trimmed) past where
            // this one stands: what lies between is done already.
            let offset = self.next[partition].max(state.partitions[partition].start);
            if let Some(record) = state.partitions[partition].get(offset) {
                self.cursor = (partition + 1) % count;
                self.next[partition] = offset + 1;
                let tracker = Arc::clone(&self.trackers[partition]);
                // The in-memory bus keeps no completed sets: every record is handed out.
                lock(&tracker).delivered(offset);
                return Some(InboundRecord {
                    source: SOURCE.into(),
                    position: Position {
                        partition: partition as u32,
                        offset,
                    },
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    headers: record.headers.clone(),
                    delivery_count: 1,
                    ack: AckHandle(AckInner::Tracked { tracker, offset }),
                });
            }
        }
        None
    }

    /// Commits the acknowledged prefix of every partition.
    pub fn commit(&self) {
        let mut state = self.bus.state();
        let partitions = state.partitions.len();
        let committed = state
            .committed
            .entry(self.group.clone())
            .or_insert_with(|| vec![0; partitions]);
        for (partition, tracker) in self.trackers.iter().enumerate() {
            let mut tracker = lock(tracker);
            if let Some(commit) = tracker.to_commit() {
                committed[partition] = commit.0;
                tracker.committed(commit);
            }
        }
        let committed = committed.clone();
        let ends = state.partitions.iter().map(Log::end);
        for (partition, (end, committed)) in ends.zip(committed).enumerate() {
            self.status
                .set_lag(partition as u32, end.saturating_sub(committed));
        }
        if state.trim {
            let State {
                partitions,
                committed,
                ..
            } = &mut *state;
            for (partition, log) in partitions.iter_mut().enumerate() {
                let lowest = committed
                    .values()
                    .filter_map(|offsets| offsets.get(partition).copied())
                    .min()
                    .unwrap_or(0);
                log.trim_below(lowest);
            }
        }
    }

    /// Per-partition lag behind the committed offsets (updated at each commit).
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.commit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(bus: &MemoryBus, count: usize) {
        for n in 0..count {
            bus.publish(OutboundRecord {
                key: "order-1".into(),
                payload: format!("{n}").into(),
                headers: super::super::Headers::new(),
            });
        }
    }

    /// Takes and acknowledges `count` records of `consumer`.
    async fn consume(consumer: &mut MemoryConsumer, count: usize) -> Vec<u64> {
        let mut offsets = Vec::new();
        while offsets.len() < count {
            if let Delivery::Record(record) = consumer.next(true).await.unwrap() {
                offsets.push(record.position.offset);
                record.ack.ack().await.unwrap();
            }
        }
        offsets
    }

    #[tokio::test]
    async fn a_trimming_bus_drops_what_every_group_committed_past_and_keeps_the_rest() {
        let bus = MemoryBus::trimming(1);
        publish(&bus, 10);
        let mut fast = bus.consumer("fast");
        let mut slow = bus.consumer("slow");
        consume(&mut fast, 10).await;
        consume(&mut slow, 4).await;
        fast.commit();
        slow.commit();
        // The slow group still needs offsets 4 and on.
        let kept: Vec<u64> = bus.published().iter().map(|(p, _)| p.offset).collect();
        assert_eq!(kept, (4..10).collect::<Vec<_>>());
        consume(&mut slow, 6).await;
        slow.commit();
        assert!(
            bus.published().is_empty(),
            "everything committed by every group"
        );
        // Offsets go on from where they were, and a group that starts now begins there.
        publish(&bus, 2);
        let mut late = bus.consumer("late");
        assert_eq!(consume(&mut late, 2).await, [10, 11]);
        assert_eq!(bus.committed("fast"), [10]);
    }

    #[tokio::test]
    async fn a_default_bus_keeps_every_record_for_a_replay_from_the_start() {
        let bus = MemoryBus::new(1);
        publish(&bus, 3);
        let mut first = bus.consumer("first");
        consume(&mut first, 3).await;
        first.commit();
        assert_eq!(bus.published().len(), 3);
        let mut again = bus.consumer("again");
        assert_eq!(consume(&mut again, 3).await, [0, 1, 2]);
    }
}
