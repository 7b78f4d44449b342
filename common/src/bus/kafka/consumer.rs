//! Consuming from Kafka in a consumer group, at least once.
//!
//! librdkafka runs rebalance callbacks inside `poll`, and a revoke must wait for the engine to
//! finish in-flight work before the partitions go. Blocking a tokio worker for that would stall
//! the very tasks it waits for, so the consumer lives on its own thread: it polls, forwards
//! records over a bounded channel, commits acknowledged prefixes periodically, and blocks only
//! itself while a revocation drains. When the engine falls behind and the channel fills, the
//! thread pauses fetching instead of blocking, so callbacks and commits keep running.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::client_config;
use crate::bus::record::{AckInner, lock};
use crate::bus::tracker::OffsetTracker;
use crate::bus::{
    AckHandle, BusError, ConsumerStatus, Delivery, InboundRecord, Position, Revocation,
};
use crate::config::BusConfig;

/// Records buffered between the poll thread and the engine.
const CHANNEL_CAPACITY: usize = 1024;
/// Records held back (the engine's channel was full) before fetching pauses. librdkafka
/// purges a partition's prefetched records when it is paused and fetches them again on
/// resume, so pausing as soon as the channel fills would thrash: pause only once this many are
/// held, and resume only once all of them are forwarded.
const PAUSE_AT: usize = 4096;
/// How long one poll waits for a record; bounds how late commands and commits run.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

type Trackers = HashMap<i32, Arc<Mutex<OffsetTracker>>>;

/// A group consumer of the webhook topic. Acknowledge records through their
/// [`AckHandle`]; [`KafkaConsumer::close`] commits and leaves the group.
pub struct KafkaConsumer {
    deliveries: mpsc::Receiver<Result<Delivery, BusError>>,
    commands: std_mpsc::Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

enum Command {
    Commit(oneshot::Sender<Result<(), BusError>>),
    Close(oneshot::Sender<Result<(), BusError>>),
}

/// State the poll thread and the rebalance callbacks share.
struct Shared {
    topic: Arc<str>,
    trackers: Mutex<Trackers>,
    /// Records fetched but not yet taken by the engine (the channel was full).
    held: Mutex<VecDeque<InboundRecord>>,
    deliveries: mpsc::Sender<Result<Delivery, BusError>>,
    drain_timeout: Duration,
    closing: std::sync::atomic::AtomicBool,
    status: ConsumerStatus,
}

struct Context(Arc<Shared>);

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
    fn commit(
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

impl KafkaConsumer {
    /// Joins the consumer group and subscribes to the webhook topic.
    pub fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let kafka = &config.kafka;
        let (deliveries_tx, deliveries) = mpsc::channel(CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            topic: kafka.topic.as_str().into(),
            trackers: Mutex::default(),
            held: Mutex::default(),
            deliveries: deliveries_tx,
            drain_timeout: config.drain_timeout,
            closing: false.into(),
            status: ConsumerStatus::polling(),
        });
        let mut client = client_config(kafka);
        if client.get("statistics.interval.ms").is_none() {
            // The lag metric comes from these statistics; KAFKA_PROPERTIES may change the pace.
            client.set("statistics.interval.ms", "5000");
        }
        let consumer: BaseConsumer<Context> = client
            .set("group.id", &kafka.group_id)
            // Offsets are committed by us, and only for acknowledged prefixes.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(Context(Arc::clone(&shared)))
            .map_err(|error| BusError::Setup(error.into()))?;
        consumer
            .subscribe(&[&kafka.topic])
            .map_err(|error| BusError::Setup(error.into()))?;
        let (commands, receiver) = std_mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let interval = kafka.commit_interval;
        let thread = thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll_loop(consumer, &thread_shared, &receiver, interval))
            .map_err(|error| BusError::Setup(error.into()))?;
        Ok(Self {
            deliveries,
            commands,
            thread: Some(thread),
            shared,
        })
    }

    /// The next record or assignment change.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        self.deliveries
            .recv()
            .await
            .unwrap_or(Err(BusError::Closed))
    }

    /// Commits the acknowledged prefixes now; a failure is returned (and retried at the next
    /// periodic commit).
    pub async fn commit(&self) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Commit(reply))
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    /// The poll thread's last poll and the per-partition committed lag.
    pub fn status(&self) -> ConsumerStatus {
        self.shared.status.clone()
    }

    /// How many commits have failed so far (each is retried).
    pub fn commit_failures(&self) -> u64 {
        self.shared.status.commit_failures()
    }

    /// Commits the acknowledged prefixes and leaves the group. Drain in-flight work first:
    /// what is not acknowledged by now is redelivered to the next owner.
    pub async fn close(mut self) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Close(reply))
            .map_err(|_| BusError::Closed)?;
        let result = answer.await.map_err(|_| BusError::Closed)?;
        if let Some(thread) = self.thread.take() {
            // The thread has replied and only drops the consumer now; join off the runtime.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Dropping the command sender stops the poll thread, which commits and closes.
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

fn poll_loop(
    consumer: BaseConsumer<Context>,
    shared: &Shared,
    commands: &std_mpsc::Receiver<Command>,
    interval: Duration,
) {
    let mut last_commit = Instant::now();
    let mut paused = false;
    loop {
        shared.status.polled();
        match commands.try_recv() {
            Ok(Command::Commit(reply)) => {
                let _ = reply.send(shared.commit(&consumer, None));
            }
            Ok(Command::Close(reply)) => {
                let result = shutdown(&consumer, shared);
                drop(consumer);
                let _ = reply.send(result);
                return;
            }
            Err(std_mpsc::TryRecvError::Disconnected) => {
                let _ = shutdown(&consumer, shared);
                return;
            }
            Err(std_mpsc::TryRecvError::Empty) => {}
        }
        if last_commit.elapsed() >= interval {
            // A failure is logged and counted inside; the next round retries it.
            let _ = shared.commit(&consumer, None);
            last_commit = Instant::now();
        }
        match forward_held(shared) {
            Forward::Gone => return shutdown_quietly(&consumer, shared),
            Forward::Full if !paused && held_count(shared) >= PAUSE_AT => {
                paused = pause(&consumer, true);
            }
            Forward::Empty if paused => paused = !pause(&consumer, false),
            Forward::Full | Forward::Empty => {}
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                let record = inbound(shared, &message);
                shared
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back(record);
            }
            // Transient client errors (a broker restarting) are retried by librdkafka itself.
            Some(Err(error)) => warn!(%error, "Kafka consumer error"),
            None => {}
        }
    }
}

fn held_count(shared: &Shared) -> usize {
    shared
        .held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
}

enum Forward {
    Empty,
    Full,
    Gone,
}

/// Moves held records into the channel until it is full.
fn forward_held(shared: &Shared) -> Forward {
    let mut held = shared
        .held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while let Some(record) = held.pop_front() {
        match shared.deliveries.try_send(Ok(Delivery::Record(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Ok(Delivery::Record(record)))) => {
                held.push_front(record);
                return Forward::Full;
            }
            Err(_) => return Forward::Gone,
        }
    }
    Forward::Empty
}

/// Pauses or resumes fetching for the whole assignment; true when it took effect.
fn pause(consumer: &BaseConsumer<Context>, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            warn!(%error, pause, "could not change fetching");
            false
        }
    }
}

fn inbound(shared: &Shared, message: &BorrowedMessage<'_>) -> InboundRecord {
    let partition = message.partition();
    let offset = u64::try_from(message.offset()).unwrap_or_default();
    let tracker = shared
        .trackers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(partition)
        .or_default()
        .clone();
    // Tracked before anyone can see the record: an ack that raced ahead of this would be
    // ignored and hold the partition's commits back forever. A record still held when its
    // partition is revoked is dropped together with the partition's tracker.
    lock(&tracker).delivered(offset);
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    InboundRecord {
        source: Arc::clone(&shared.topic),
        position: Position {
            partition: u32::try_from(partition).unwrap_or_default(),
            offset,
        },
        key: Bytes::copy_from_slice(message.key().unwrap_or_default()),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
        delivery_count: 1,
        ack: AckHandle(AckInner::Tracked { tracker, offset }),
    }
}

/// The final commit before leaving; the revoke that closing triggers must not wait for a
/// drain the caller has already done.
fn shutdown(consumer: &BaseConsumer<Context>, shared: &Shared) -> Result<(), BusError> {
    shared
        .closing
        .store(true, std::sync::atomic::Ordering::Release);
    let result = shared.commit(consumer, None);
    consumer.unsubscribe();
    result
}

fn shutdown_quietly(consumer: &BaseConsumer<Context>, shared: &Shared) {
    let _ = shutdown(consumer, shared);
}
