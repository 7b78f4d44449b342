//! What the consumer's poll thread and librdkafka's callbacks (which run inside `poll`, on that
//! thread) share: the owned partitions' offset trackers, the drain on revoke, the commits of
//! acknowledged prefixes, and the lag read from librdkafka's statistics.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::bus::metadata;
use crate::bus::record::lock;
use crate::bus::tracker::OffsetTracker;
use crate::bus::{BusError, ConsumerStatus, Delivery, InboundRecord, Revocation};

type Trackers = HashMap<i32, Arc<Mutex<OffsetTracker>>>;

/// How long reading the committed offsets of newly assigned partitions may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// State the poll thread and the rebalance callbacks share.
pub(super) struct Shared {
    pub(super) topic: Arc<str>,
    pub(super) trackers: Mutex<Trackers>,
    /// Records fetched but not yet taken by the engine (the channel was full).
    pub(super) held: Mutex<VecDeque<InboundRecord>>,
    pub(super) deliveries: mpsc::Sender<Result<Delivery, BusError>>,
    /// Assignments and revocations, ahead of records.
    pub(super) changes: mpsc::UnboundedSender<Delivery>,
    /// Fetching is paused (the engine fell behind): partitions assigned meanwhile start
    /// paused too, and the resume covers them.
    pub(super) paused: std::sync::atomic::AtomicBool,
    pub(super) drain_timeout: Duration,
    /// The broker refused commit metadata once: commit offsets alone.
    pub(super) no_metadata: std::sync::atomic::AtomicBool,
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => self.0.assign(consumer, list),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => error!(%error, "consumer group rebalance failed"),
        }
    }
}

impl Shared {
    /// Takes on newly assigned partitions (with incremental rebalancing, only those): fresh
    /// trackers, loaded with what a previous owner finished beyond its commit; fetching paused
    /// or resumed to match the rest (librdkafka keeps a pause across a revoke and re-assign).
    fn assign(&self, consumer: &BaseConsumer<Context>, list: &TopicPartitionList) {
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        if partitions.is_empty() {
            return;
        }
        let completed = self.completed_beyond_commits(consumer, list);
        {
            let mut trackers = self
                .trackers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for partition in &partitions {
                let mut tracker = OffsetTracker::default();
                if let Some((committed, done)) = completed.get(partition) {
                    tracker.completed_beyond(*committed, done.iter().copied());
                }
                if let Some(old) = trackers.insert(*partition, Arc::new(Mutex::new(tracker))) {
                    // Assigned again without a revocation seen in between: what was fetched
                    // under the old assignment is not this one's.
                    lock(&old).retire();
                }
            }
        }
        let paused = self.paused.load(std::sync::atomic::Ordering::Acquire);
        let result = if paused {
            consumer.pause(list)
        } else {
            consumer.resume(list)
        };
        if let Err(error) = result {
            warn!(%error, paused, "could not set fetching of the assigned partitions");
        }
        debug!(?partitions, "partitions assigned");
        let assigned = partitions
            .iter()
            .map(|p| u32::try_from(*p).unwrap_or_default())
            .collect();
        let _ = self.changes.send(Delivery::Assigned(assigned));
    }

    /// Per assigned partition, its committed offset and the offsets done beyond it that the
    /// commit's metadata carries. A broker that keeps no metadata (tansu) yields none: the
    /// records are then run again, which is safe, only slower.
    fn completed_beyond_commits(
        &self,
        consumer: &BaseConsumer<Context>,
        list: &TopicPartitionList,
    ) -> HashMap<i32, (u64, Vec<u64>)> {
        let committed = match consumer.committed_offsets(list.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                warn!(%error, "could not read the committed offsets' metadata; \
                    records completed beyond them will run again");
                return HashMap::new();
            }
        };
        committed
            .elements()
            .iter()
            .filter_map(|element| {
                let Offset::Offset(offset) = element.offset() else {
                    return None;
                };
                let offset = u64::try_from(offset).ok()?;
                // rdkafka panics on metadata that is not UTF-8 (another tool's commit).
                let text = std::panic::catch_unwind(|| element.metadata().to_owned()).ok()?;
                let done = metadata::decode(offset, &text);
                (!done.is_empty()).then(|| (element.partition(), (offset, done)))
            })
            .collect()
    }

    /// Hands revoked partitions back: records not yet taken are dropped (the next owner gets
    /// them from the committed offset), the engine drains what is in flight, what is
    /// acknowledged is committed, and only then does librdkafka let the partitions go.
    fn revoke(&self, consumer: &BaseConsumer<Context>, partitions: &[i32]) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|record| !partitions.contains(&(record.position.partition as i32)));
        // Retired before the engine hears of it: whatever of these partitions it still holds
        // or gets back later (a retry, a wait) is then known not to be its own any more.
        for partition in partitions {
            if let Some(tracker) = self
                .trackers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(partition)
            {
                lock(tracker).retire();
            }
        }
        let closing = self.closing.load(std::sync::atomic::Ordering::Acquire);
        // Lost: the group has already handed these partitions to others, who may be running
        // them now. Waiting for a drain would only prolong two owners at once, and a commit
        // could overwrite theirs (on a broker that does not fence old generations).
        let lost = consumer.assignment_lost();
        if lost {
            warn!(
                ?partitions,
                "the assignment was lost (session or poll deadline missed); \
                stopping their work without a drain or a commit"
            );
            let revoked = partitions
                .iter()
                .map(|p| u32::try_from(*p).unwrap_or_default())
                .collect();
            let _ = self
                .changes
                .send(Delivery::Revoked(Revocation::new(revoked, true, None)));
        } else if !closing {
            let (drained, wait) = std_mpsc::sync_channel(1);
            let revoked = partitions
                .iter()
                .map(|p| u32::try_from(*p).unwrap_or_default())
                .collect();
            let notice = Revocation::new(revoked, false, Some(drained));
            if self.changes.send(Delivery::Revoked(notice)).is_ok() {
                // The engine drops the Revocation when drained; the sender side then
                // disconnects, which ends this wait.
                if let Err(std_mpsc::RecvTimeoutError::Timeout) =
                    wait.recv_timeout(self.drain_timeout)
                {
                    warn!(?partitions, timeout = ?self.drain_timeout,
                        "in-flight records did not finish before the drain deadline; \
                         committing what is done, the rest will be redelivered");
                }
            }
        }
        // The member may have been evicted while it waited for the drain.
        if lost || consumer.assignment_lost() {
            // Nothing to commit: another member owns them already.
        } else if let Err(error) = self.commit(consumer, Some(partitions)) {
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
        type Pending = Vec<(i32, Arc<Mutex<OffsetTracker>>, (u64, Vec<u64>))>;
        let pending: Pending = {
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
        for (partition, _, (offset, done)) in &pending {
            let mut element = list.add_partition(&self.topic, *partition);
            element
                .set_offset(Offset::Offset(i64::try_from(*offset).unwrap_or(i64::MAX)))
                .map_err(|error| BusError::Commit(error.into()))?;
            // What finished beyond the first gap, so the next owner skips it.
            if !self.no_metadata.load(std::sync::atomic::Ordering::Relaxed) {
                element.set_metadata(metadata::encode(*offset, done));
            }
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Err(error)
                if error.rdkafka_error_code()
                    == Some(rdkafka::error::RDKafkaErrorCode::OffsetMetadataTooLarge)
                    && !self
                        .no_metadata
                        .swap(true, std::sync::atomic::Ordering::Relaxed) =>
            {
                self.status.commit_failed();
                warn!(%error, "the broker refuses our commit metadata (its \
                    offset.metadata.max.bytes is below 4096); committing without it from now \
                    on: a rebalance then replays what finished beyond the committed offset");
                self.commit(consumer, only)
            }
            Ok(()) => {
                for (_, tracker, commit) in pending {
                    lock(&tracker).committed(commit);
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
