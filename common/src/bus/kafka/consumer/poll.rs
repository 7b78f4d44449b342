//! The consumer's own thread: it polls librdkafka (which runs the rebalance callbacks there),
//! hands records to the engine over a bounded channel, holding them back and pausing fetching
//! when the engine falls behind, runs the periodic and requested commits, and leaves the group
//! when the consumer is closed or dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::Command;
use super::group::{Context, Shared};
use crate::bus::record::{AckInner, lock};
use crate::bus::{AckHandle, BusError, Delivery, InboundRecord, Position};

/// Records held back (the engine's channel was full) before fetching pauses. librdkafka
/// purges a partition's prefetched records when it is paused and fetches them again on
/// resume, so pausing as soon as the channel fills would thrash: pause only once this many are
/// held, and resume only once all of them are forwarded.
const PAUSE_AT: usize = 4096;
/// How often every owned partition's offset is committed again, moved or not.
const RECOMMIT_INTERVAL: Duration = Duration::from_secs(30);
/// How long one poll waits for a record; bounds how late commands and commits run.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The thread's body: runs until the consumer is closed (or dropped) or the engine is gone.
pub(super) fn poll_loop(
    consumer: BaseConsumer<Context>,
    shared: &Shared,
    commands: &std_mpsc::Receiver<Command>,
    interval: Duration,
) {
    let mut last_commit = Instant::now();
    let mut last_recommit = Instant::now();
    loop {
        let paused = shared.paused.load(Ordering::Acquire);
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
        // A member whose assignment is lost (its revocation not yet run) commits nothing: the
        // partitions are someone else's, and a broker that does not fence old generations
        // would take it. (Asked only when a commit is due: this loop turns per record.)
        if last_commit.elapsed() >= interval && !consumer.assignment_lost() {
            if last_recommit.elapsed() >= RECOMMIT_INTERVAL {
                for tracker in shared
                    .trackers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .values()
                {
                    lock(tracker).forget_commit();
                }
                last_recommit = Instant::now();
            }
            // A failure is logged and counted inside; the next round retries it.
            let _ = shared.commit(&consumer, None);
            last_commit = Instant::now();
        }
        match forward_held(shared) {
            Forward::Gone => return shutdown_quietly(&consumer, shared),
            Forward::Full if !paused && held_count(shared) >= PAUSE_AT => {
                pause(&consumer, shared, true);
            }
            Forward::Empty if paused => pause(&consumer, shared, false),
            Forward::Full | Forward::Empty => {}
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                if let Some(record) = inbound(shared, &message) {
                    shared
                        .held
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push_back(record);
                }
            }
            Some(Err(error))
                if error.rdkafka_error_code()
                    == Some(rdkafka::error::RDKafkaErrorCode::InconsistentGroupProtocol) =>
            {
                error!(%error, "this consumer's partition.assignment.strategy does not match \
                    the group's: librdkafka cannot mix cooperative-sticky (our default) with \
                    eager strategies in one group. Stop every member once and start them all \
                    with the same strategy (README: Operations)");
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

/// Pauses or resumes fetching for the whole assignment. The flag is set first, under the
/// same thread as the rebalance callbacks, so a partition assigned later follows it.
fn pause(consumer: &BaseConsumer<Context>, shared: &Shared, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            shared.paused.store(pause, Ordering::Release);
            shared.status.set_fetch_paused(pause);
        }
        Err(error) => warn!(%error, pause, "could not change fetching"),
    }
}

/// The record to hand out, or `None` when a previous owner of the partition already
/// completed it (the commit's metadata said so): it is acknowledged at once instead.
fn inbound(shared: &Shared, message: &BorrowedMessage<'_>) -> Option<InboundRecord> {
    let partition = message.partition();
    let offset = u64::try_from(message.offset()).unwrap_or_default();
    // A record of a partition this consumer does not own (fetched before a revocation took
    // it) is not handed out: a tracker made up for it would be committed for a partition
    // another member owns, over that member's commits.
    let Some(tracker) = shared
        .trackers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&partition)
        .cloned()
    else {
        debug!(
            partition,
            offset, "dropping a record of a partition not assigned here"
        );
        return None;
    };
    // Tracked before anyone can see the record: an ack that raced ahead of this would be
    // ignored and hold the partition's commits back forever. A record still held when its
    // partition is revoked is dropped together with the partition's tracker.
    if !lock(&tracker).delivered(offset) {
        return None;
    }
    let headers = super::super::message_headers(message);
    Some(InboundRecord {
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
    })
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
