//! Consuming from Kafka in a consumer group, at least once.
//!
//! librdkafka runs rebalance callbacks inside `poll`, and a revoke must wait for the engine to
//! finish in-flight work before the partitions go. Blocking a tokio worker for that would stall
//! the very tasks it waits for, so the consumer lives on its own thread: it polls, forwards
//! records over a bounded channel, commits acknowledged prefixes periodically, and blocks only
//! itself while a revocation drains. When the engine falls behind and the channel fills, the
//! thread pauses fetching instead of blocking, so callbacks and commits keep running.
//!
//! - `group`: what the poll thread and librdkafka's callbacks share: assignment, the drain
//!   on revoke, commits of acknowledged prefixes, lag from librdkafka's statistics.
//! - `poll`: the thread itself: polling, holding back and forwarding records, pausing.
//!
//! Assignment changes travel on a channel of their own, ahead of records, so a revocation
//! reaches the engine however full it is; the offset trackers of revoked partitions are
//! retired first, so records of them the engine still holds are known to be someone else's.

mod group;
mod poll;

use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::sync::{mpsc, oneshot};

use self::group::{Context, Shared};
use super::client_config;
use crate::bus::{BusError, ConsumerStatus, Delivery};
use crate::config::BusConfig;

/// Records buffered between the poll thread and the engine.
const CHANNEL_CAPACITY: usize = 1024;

/// A group consumer of the webhook topic. Acknowledge records through their
/// [`AckHandle`](crate::bus::AckHandle); [`KafkaConsumer::close`] commits and leaves the group.
pub struct KafkaConsumer {
    deliveries: mpsc::Receiver<Result<Delivery, BusError>>,
    /// Assignment changes travel apart from records, so a revocation reaches an engine that
    /// is too full to take records.
    changes: mpsc::UnboundedReceiver<Delivery>,
    commands: std_mpsc::Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

pub(super) enum Command {
    Commit(oneshot::Sender<Result<(), BusError>>),
    Close(oneshot::Sender<Result<(), BusError>>),
}

impl KafkaConsumer {
    /// Joins the consumer group and subscribes to the webhook topic.
    pub fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let kafka = &config.kafka;
        let (deliveries_tx, deliveries) = mpsc::channel(CHANNEL_CAPACITY);
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            topic: kafka.topic.as_str().into(),
            trackers: Mutex::default(),
            held: Mutex::default(),
            deliveries: deliveries_tx,
            changes: changes_tx,
            paused: false.into(),
            drain_timeout: config.drain_timeout,
            no_metadata: false.into(),
            closing: false.into(),
            status: ConsumerStatus::polling(),
        });
        let mut client = client_config(kafka);
        if client.get("partition.assignment.strategy").is_none() {
            // Incremental rebalancing: a member joining or leaving moves only the partitions
            // that change owner, instead of revoking every partition of every member.
            client.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if client.get("statistics.interval.ms").is_none() {
            // The lag metric comes from these statistics; KAFKA_PROPERTIES may change the pace.
            client.set("statistics.interval.ms", "5000");
        }
        let consumer: BaseConsumer<Context> = client
            .set("group.id", &kafka.group_id)
            // Offsets are committed by us, and only for acknowledged prefixes.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if config.start_at_newest {
                    "latest"
                } else {
                    "earliest"
                },
            )
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
            .spawn(move || poll::poll_loop(consumer, &thread_shared, &receiver, interval))
            .map_err(|error| BusError::Setup(error.into()))?;
        Ok(Self {
            deliveries,
            changes,
            commands,
            thread: Some(thread),
            shared,
        })
    }

    /// The next assignment change, else (with `records`) the next record. Changes come
    /// first: a revocation must overtake records already fetched.
    pub async fn next(&mut self, records: bool) -> Result<Delivery, BusError> {
        if !records {
            return self.changes.recv().await.ok_or(BusError::Closed);
        }
        tokio::select! {
            biased;
            Some(change) = self.changes.recv() => Ok(change),
            delivery = self.deliveries.recv() => delivery.unwrap_or(Err(BusError::Closed)),
        }
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
