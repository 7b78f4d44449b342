//! The in-memory bus: partitions, offsets, consumer-group commits and the same ack semantics as
//! Kafka, inside one process. For the single-process demo and engine tests only: **nothing is
//! durable**, everything is gone when the process exits.

use std::collections::HashMap;
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
    partitions: Vec<Vec<OutboundRecord>>,
    dead_letters: Vec<OutboundRecord>,
    /// Consumer group → committed offset per partition.
    committed: HashMap<String, Vec<u64>>,
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
            partitions: vec![Vec::new(); partitions.max(1) as usize],
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                published: Notify::new(),
            }),
        }
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
            log.push(record);
            Position {
                partition,
                offset: log.len() as u64 - 1,
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

    /// Everything published so far, partition by partition, with its position.
    pub fn published(&self) -> Vec<(Position, OutboundRecord)> {
        let state = self.state();
        let mut records = Vec::new();
        for (partition, log) in state.partitions.iter().enumerate() {
            for (offset, record) in log.iter().enumerate() {
                let position = Position {
                    partition: partition as u32,
                    offset: offset as u64,
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

    /// A consumer of every partition for `group`, starting at the group's committed offsets.
    pub fn consumer(&self, group: &str) -> MemoryConsumer {
        let next = self.committed(group);
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
            let offset = self.next[partition];
            if let Some(record) = state.partitions[partition].get(offset as usize) {
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
        let ends = state.partitions.iter().map(|records| records.len() as u64);
        for (partition, (end, committed)) in ends.zip(committed).enumerate() {
            self.status
                .set_lag(partition as u32, end.saturating_sub(committed));
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
