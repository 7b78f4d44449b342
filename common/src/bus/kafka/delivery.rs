//! A Kafka producer whose delivery reports are served on the async runtime.
//!
//! rdkafka's `FutureProducer` keeps a thread polling librdkafka's main queue and completes each
//! send's future from there, so every acknowledgement crosses two threads: librdkafka's broker
//! thread wakes that polling thread, which wakes the tokio worker holding the waiting request.
//! Here librdkafka signals a [`Notify`] when its main queue turns non-empty (the hook rdkafka's
//! own `StreamConsumer` uses for its consumer queue) and a task on the runtime drains the queue,
//! completing the waiting senders where their requests run: one thread and one hop fewer per
//! batch of acknowledgements. The gateway spends most of its CPU on such hops (bench/README.md).
//!
//! This is the one module that calls librdkafka directly, for the three queue functions rdkafka
//! does not wrap for producers; each `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

/// Where librdkafka says a record landed: `(partition, offset)`, or why it did not.
pub(super) type Delivered = Result<(i32, i64), KafkaError>;

/// The underlying librdkafka producer, for the calls that are not about sending.
pub(super) type Inner = BaseProducer<Reports>;

/// How often the queue is drained even without a signal. A safety net only (the signal comes
/// on every empty → non-empty turn of the queue; the first tick, at once, drains what came
/// before the signal was set), and kept long on purpose: with the signal broken every publish
/// would wait for it, and the Kafka end-to-end tests time out (checked) rather than pass slowly.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Events served before the drain yields to the requests it just completed.
const EVENTS_PER_TURN: usize = 256;

/// How long to wait for room when librdkafka's local queue is full (the broker is behind).
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Hands each delivery report to the request waiting for it.
pub(super) struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        // The request may have stopped waiting (its deadline passed); nobody is left to tell.
        let _ = waiting.send(outcome);
    }
}

/// A producer whose acknowledgements complete on the runtime that sent the records.
pub(super) struct AsyncProducer {
    producer: Arc<Inner>,
    /// What librdkafka's wake-up callback points at, held only to keep it alive: it must
    /// outlive the registration, and `Drop` turns the callback off before fields drop.
    _signal: Arc<Notify>,
    drain: tokio::task::AbortHandle,
}

impl AsyncProducer {
    /// Creates the producer and starts draining its reports; needs a tokio runtime.
    pub(super) fn create(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<Inner> = Arc::new(config.create_with_context(Reports)?);
        let signal = Arc::new(Notify::new());
        set_signal(&producer, Some(&signal));
        let drain = tokio::spawn(serve_reports(
            Arc::downgrade(&producer),
            Arc::clone(&signal),
        ))
        .abort_handle();
        Ok(Self {
            producer,
            _signal: signal,
            drain,
        })
    }

    /// The librdkafka producer, for metadata requests and flushing.
    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.producer
    }

    /// Queues a record and waits for librdkafka's report on it. A full local queue is waited
    /// out until `room_until`; after that the record is refused with `QueueFull`.
    pub(super) async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
        room_until: Instant,
    ) -> Delivered {
        let (report, delivered) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(report))
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if Instant::now() < room_until =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        // librdkafka reports on every queued record (delivered, failed, timed out or purged),
        // and the report drops the sender only after using it; a closed channel means the
        // producer went away with the record.
        delivered.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Drop for AsyncProducer {
    fn drop(&mut self) {
        self.drain.abort();
        // librdkafka must stop calling back before `_signal` may be freed.
        set_signal(&self.producer, None);
    }
}

/// Drains the main queue whenever librdkafka signals it, running the delivery callbacks (and
/// librdkafka's log, error and statistics events) on this task.
async fn serve_reports(producer: Weak<Inner>, signal: Arc<Notify>) {
    let mut safety = tokio::time::interval(SAFETY_POLL);
    safety.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = signal.notified() => {}
            _ = safety.tick() => {}
        }
        let Some(producer) = producer.upgrade() else {
            return;
        };
        let mut served = 0;
        // Drain to empty: librdkafka signals again only when the queue turns non-empty.
        while queue_length(&producer) > 0 {
            producer.poll(Duration::ZERO);
            served += 1;
            if served % EVENTS_PER_TURN == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Points librdkafka's main-queue wake-up at `signal`, or turns it off.
fn set_signal(producer: &Inner, signal: Option<&Arc<Notify>>) {
    let (callback, opaque): (Option<unsafe extern "C" fn(_, _)>, *mut c_void) = match signal {
        Some(signal) => (Some(wake), Arc::as_ptr(signal).cast_mut().cast()),
        None => (None, std::ptr::null_mut()),
    };
    // SAFETY: the client handle is live (the producer is borrowed); `rd_kafka_queue_get_main`
    // returns a new reference to the main queue, released before returning. `opaque` points at
    // a `Notify` the `AsyncProducer` keeps alive until after it has turned the callback off
    // here; librdkafka both changes the callback and calls it under the queue's lock, so no
    // call is in flight once this returns.
    unsafe {
        let queue = rd::rd_kafka_queue_get_main(producer.client().native_ptr());
        rd::rd_kafka_queue_cb_event_enable(queue, callback, opaque);
        rd::rd_kafka_queue_destroy(queue);
    }
}

/// Events waiting in the main queue.
fn queue_length(producer: &Inner) -> usize {
    // SAFETY: as in `set_signal`: a live handle and a queue reference released at once.
    unsafe {
        let queue = rd::rd_kafka_queue_get_main(producer.client().native_ptr());
        let length = rd::rd_kafka_queue_length(queue);
        rd::rd_kafka_queue_destroy(queue);
        length
    }
}

/// Called by librdkafka, on its own thread, when the main queue turns non-empty.
unsafe extern "C" fn wake(_client: *mut rd::rd_kafka_t, signal: *mut c_void) {
    // SAFETY: `signal` is the `Notify` registered by `set_signal`, alive while registered.
    let signal = unsafe { &*signal.cast::<Notify>() };
    // Stores a permit when the drain is busy, so a turn that races with it is not lost.
    signal.notify_one();
}
