//! What the consumer's poll thread and librdkafka's callbacks (which run inside `poll`, on that
//! thread) share: the owned partitions' offset trackers, the drain on revoke, the commits of
//! acknowledged prefixes, and the lag read from librdkafka's statistics.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::bus::record::lock;
use crate::bus::tracker::OffsetTracker;
use crate::bus::{BusError, ConsumerStatus, Delivery, InboundRecord, Revocation};

type Trackers = HashMap<i32, Arc<Mutex<OffsetTracker>>>;

/// State the poll thread and the rebalance callbacks share.
pub(super) struct Shared {
    pub(super) topic: Arc<str>,
    pub(super) trackers: Mutex<Trackers>,
    /// Records fetched but not yet taken by the engine (the channel was full).
    pub(super) held: Mutex<VecDeque<InboundRecord>>,
    pub(super) deliveries: mpsc::Sender<Result<Delivery, BusError>>,
    pub(super) drain_timeout: Duration,
    pub(super) closing: std::sync::atomic::AtomicBool,
    pub(super) status: ConsumerStatus,
}

/// The librdkafka client context: its callbacks reach the shared state.
pub(super) struct Context(pub(super) Arc<Shared>);

impl ClientContext for Context {
    /// librdkafka's periodic statistics carry each partition's committed-offset lag (the
    /// high watermark minus the committed offset): the lag metric, at no extra broker call.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&*self.0.topic) else {
            return;
        };
        let owned: Vec<i32> = self
            .0
            .trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for partition in owned {
            let lag = topic.partitions.get(&partition).and_then(|p| {
                // librdkafka says -1 until something was committed; the committed position is
                // then the log start (the group resets to earliest), so the lag is all of it.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    p.hi_offset - p.lo_offset.max(0)
                };
                u64::try_from(lag).ok()
            });
            if let (Some(lag), Ok(partition)) = (lag, u32::try_from(partition)) {
                self.0.status.set_lag(partition, lag);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.0.revoke(consumer, &partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                self.0.assign(&partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => error!(%error, "consumer group rebalance failed"),
        }
    }
}

impl Shared {
    fn assign(&self, partitions: &[i32]) {
        {
            let mut trackers = self
                .trackers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for partition in partitions {
                trackers.insert(*partition, Arc::default());
            }
        }
        debug!(?partitions, "partitions assigned");
        let assigned = partitions
            .iter()
            .map(|p| u32::try_from(*p).unwrap_or_default())
            .collect();
        let deadline = Instant::now() + self.drain_timeout;
        if !self.send_by(Delivery::Assigned(assigned), deadline) {
            warn!(
                ?partitions,
                "the engine did not take the assignment notice in time"
            );
        }
    }

    /// Sends `delivery` once the channel has room, giving up at `deadline`: a rebalance
    /// callback must not hang on an engine that stopped reading. This is the consumer's own
    /// thread, so waiting here stalls nothing else.
    fn send_by(&self, delivery: Delivery, deadline: Instant) -> bool {
        let mut pending = Ok(delivery);
        loop {
            match self.deliveries.try_send(pending) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    pending = back;
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Hands revoked partitions back: records not yet taken are dropped (the next owner gets
    /// them from the committed offset), the engine drains what is in flight, what is
    /// acknowledged is committed, and only then does librdkafka let the partitions go.
    fn revoke(&self, consumer: &BaseConsumer<Context>, partitions: &[i32]) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|record| !partitions.contains(&(record.position.partition as i32)));
        let closing = self.closing.load(std::sync::atomic::Ordering::Acquire);
        if !closing {
            let (drained, wait) = std_mpsc::sync_channel(1);
            let revoked = partitions
                .iter()
                .map(|p| u32::try_from(*p).unwrap_or_default())
                .collect();
            let notice = Revocation::new(revoked, Some(drained));
            // One deadline for both: reaching the engine, and the engine draining.
            let deadline = Instant::now() + self.drain_timeout;
            if self.send_by(Delivery::Revoked(notice), deadline) {
                // The engine drops the Revocation when drained; the sender side then
                // disconnects, which ends this wait.
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(std_mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
                    warn!(?partitions, timeout = ?self.drain_timeout,
                        "in-flight records did not finish before the drain deadline; \
                         committing what is done, the rest will be redelivered");
                }
            }
        }
        if let Err(error) = self.commit(consumer, Some(partitions)) {
            warn!(%error, ?partitions, "final commit of revoked partitions failed; \
                their unacknowledged tail will be redelivered");
        }
        let mut trackers = self
            .trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for partition in partitions {
            trackers.remove(partition);
        }
        let gone: Vec<u32> = partitions
            .iter()
            .filter_map(|p| u32::try_from(*p).ok())
            .collect();
        self.status.forget(&gone);
    }

    /// Commits the acknowledged prefix of `only` (or every) partition, synchronously, and
    /// records success in the trackers so unchanged offsets are not committed again.
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Context>,
        only: Option<&[i32]>,
    ) -> Result<(), BusError> {
        let pending: Vec<(i32, Arc<Mutex<OffsetTracker>>, u64)> = {
            let trackers = self
                .trackers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            trackers
                .iter()
                .filter(|(partition, _)| only.is_none_or(|only| only.contains(partition)))
                .filter_map(|(partition, tracker)| {
                    let offset = lock(tracker).to_commit()?;
                    Some((*partition, Arc::clone(tracker), offset))
                })
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        // The list is dropped inside this function: a TopicPartitionList that outlives its
        // consumer makes librdkafka's close wait forever.
        let mut list = TopicPartitionList::with_capacity(pending.len());
        for (partition, _, offset) in &pending {
            let offset = Offset::Offset(i64::try_from(*offset).unwrap_or(i64::MAX));
            list.add_partition_offset(&self.topic, *partition, offset)
                .map_err(|error| BusError::Commit(error.into()))?;
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                for (_, tracker, offset) in &pending {
                    lock(tracker).committed(*offset);
                }
                Ok(())
            }
            Err(error) => {
                self.status.commit_failed();
                warn!(%error, "offset commit failed; it is retried at the next commit");
                Err(BusError::Commit(error.into()))
            }
        }
    }
}
