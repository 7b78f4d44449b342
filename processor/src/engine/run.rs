//! The engine's loop: one task owns all scheduling state (per-key queues, the ready list,
//! retry timers, revocations); handler calls run as spawned tasks and report back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::bus::{Consumer, Delivery, InboundRecord, Publisher, Revocation, headers};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::job::Job;
use super::{EngineConfig, Handler, Health, Record, Registry, Stats};

/// A record waiting its turn, with the handler it is routed to (none: unknown name).
pub(super) struct Queued {
    pub(super) record: InboundRecord,
    pub(super) view: Record,
    pub(super) handler: Option<Arc<dyn Handler>>,
}

/// One key's pending records, in offset order.
#[derive(Default)]
struct KeyState {
    queue: VecDeque<Queued>,
    /// A handler call runs, or a retry timer waits: nothing else of this key may start.
    busy: bool,
    /// Already in the ready list.
    scheduled: bool,
    /// Attempts made on the head of the queue.
    attempts: u32,
    /// When the head of the queue was first tried (the start of any wait for a dependency).
    first_try: Option<Instant>,
    /// Waits for an unavailable dependency so far (they grow the backoff, not the attempts).
    waits: u32,
}

/// What a handler task reports back.
pub(super) enum Finished {
    /// Every record of the batch was acknowledged (done, skipped or dead-lettered).
    Settled {
        key: Bytes,
        partition: u32,
        applied: Vec<String>,
    },
    /// The batch should run again later; its records come back.
    Retry {
        key: Bytes,
        partition: u32,
        batch: Vec<Queued>,
        attempts: u32,
        delay: Duration,
        /// A wait for a dependency, not an attempt.
        waited: bool,
    },
    /// Shutdown overtook the batch: its records stay unacknowledged and are redelivered.
    Abandoned { key: Bytes, partition: u32 },
}

/// The consumer engine: build it, then [`Engine::run`] until the shutdown token fires.
pub struct Engine {
    consumer: Consumer,
    publisher: Publisher,
    registry: Registry,
    config: EngineConfig,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl Engine {
    /// An engine consuming from `consumer`, dead-lettering through `publisher`.
    pub fn new(
        consumer: Consumer,
        publisher: Publisher,
        registry: Registry,
        config: EngineConfig,
    ) -> Self {
        let health = Arc::new(Health::new(consumer.status(), config.stall_timeout));
        Self {
            consumer,
            publisher,
            registry,
            config,
            stats: Arc::default(),
            health,
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The engine's liveness and readiness.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The consumer's poll age and per-partition lag (for metrics).
    pub fn consumer_status(&self) -> common::bus::ConsumerStatus {
        self.consumer.status()
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight work (within the drain
    /// deadline), commits and closes the consumer.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), common::bus::BusError> {
        let Self {
            consumer,
            publisher,
            registry,
            config,
            stats,
            health,
        } = self;
        let mut state = State {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            tasks: JoinSet::new(),
            timers: JoinSet::new(),
            in_flight_by_partition: HashMap::new(),
            revocations: Vec::new(),
            buffered: 0,
            publisher,
            registry,
            config,
            stats,
            health,
            cancel: CancellationToken::new(),
            applied: AppliedIds::default(),
        };
        // Turns the loop when nothing else does, so an idle engine still shows it is alive.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut consumer = consumer;
        let mut drain_until: Option<Instant> = None;
        loop {
            state.start_ready();
            state.health.turned(state.tasks.is_empty());
            state
                .stats
                .buffered
                .store(state.buffered, Ordering::Relaxed);
            if let Some(deadline) = drain_until {
                if state.tasks.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    warn!(
                        "in-flight work did not finish before the drain deadline; it will be redelivered"
                    );
                    state.cancel.cancel();
                    break;
                }
            }
            let can_fetch = drain_until.is_none()
                && state.buffered + state.tasks.len() < state.config.max_buffered;
            let wake_at = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(finished) = state.tasks.join_next(), if !state.tasks.is_empty() => {
                    match finished {
                        Ok(finished) => state.finish(finished),
                        // Jobs catch handler panics, and are aborted only after this loop.
                        Err(error) => warn!(%error, "a handler job ended abnormally"),
                    }
                }
                Some(Ok(key)) = state.timers.join_next(), if !state.timers.is_empty() => {
                    state.retry_due(key);
                }
                () = shutdown.cancelled(), if drain_until.is_none() => {
                    info!(in_flight = state.tasks.len(), "draining before shutdown");
                    drain_until = Some(Instant::now() + state.config.drain_timeout);
                }
                () = tokio::time::sleep_until(wake_at), if drain_until.is_some() => {}
                _ = heartbeat.tick() => {}
                delivery = consumer.next(), if can_fetch => match delivery? {
                    Delivery::Record(record) => state.enqueue(record),
                    Delivery::Assigned(partitions) => {
                        debug!(?partitions, "assigned");
                        state.health.assigned(partitions.len());
                    }
                    Delivery::Revoked(revocation) => state.revoke(revocation),
                },
            }
        }
        state.tasks.shutdown().await;
        consumer.close().await
    }
}

struct State {
    keys: HashMap<Bytes, KeyState>,
    ready: VecDeque<Bytes>,
    tasks: JoinSet<Finished>,
    timers: JoinSet<Bytes>,
    in_flight_by_partition: HashMap<u32, usize>,
    revocations: Vec<Revocation>,
    buffered: usize,
    publisher: Publisher,
    registry: Registry,
    config: EngineConfig,
    stats: Arc<Stats>,
    health: Arc<Health>,
    cancel: CancellationToken,
    applied: AppliedIds,
}

/// Event ids recently applied, per key, in a bounded window: enough to recognise Fluent's
/// retries of a webhook (seconds to minutes apart) without growing with the backlog.
#[derive(Default)]
struct AppliedIds {
    set: std::collections::HashSet<(Bytes, String)>,
    order: VecDeque<(Bytes, String)>,
}

impl AppliedIds {
    const CAPACITY: usize = 65_536;

    fn contains(&self, key: &Bytes, id: &str) -> bool {
        self.set.contains(&(key.clone(), id.to_owned()))
    }

    fn insert(&mut self, key: Bytes, id: String) {
        if self.set.insert((key.clone(), id.clone())) {
            self.order.push_back((key, id));
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}

impl State {
    fn enqueue(&mut self, record: InboundRecord) {
        let name = message_name(&record);
        let handler = self.registry.handler_for(&name).cloned();
        let view = Record {
            key: record.key.clone(),
            position: record.position,
            headers: record.headers.clone(),
            payload: record.payload.clone(),
            name,
            event_id: record.headers.get_str(headers::EVENT_ID).map(str::to_owned),
            duplicate: false,
        };
        let key = record.key.clone();
        let state = self.keys.entry(key.clone()).or_default();
        state.queue.push_back(Queued {
            record,
            view,
            handler,
        });
        self.buffered += 1;
        if !state.busy && !state.scheduled {
            state.scheduled = true;
            self.ready.push_back(key);
        }
    }

    /// Starts ready keys while there is room.
    fn start_ready(&mut self) {
        while self.tasks.len() < self.config.max_in_flight {
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(state) = self.keys.get_mut(&key) else {
                continue;
            };
            state.scheduled = false;
            if state.busy || state.queue.is_empty() {
                continue;
            }
            let mut batch = take_batch(&mut state.queue);
            // Mark repeats of applied events, and remember this batch's ids as applied once
            // it settles (a retry or abandonment leaves them unapplied).
            for queued in &mut batch {
                if let Some(id) = &queued.view.event_id {
                    queued.view.duplicate = self.applied.contains(&key, id);
                }
            }
            self.stats
                .coalesced
                .fetch_add(batch.len() as u64 - 1, Ordering::Relaxed);
            state.busy = true;
            state.attempts += 1;
            let first_try = *state.first_try.get_or_insert_with(Instant::now);
            self.buffered -= batch.len();
            let partition = batch[0].record.position.partition;
            *self.in_flight_by_partition.entry(partition).or_default() += 1;
            let running = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.stats
                .peak_in_flight
                .fetch_max(running, Ordering::Relaxed);
            let job = Job {
                key,
                partition,
                batch,
                attempts: state.attempts,
                first_try,
                waits: state.waits,
                publisher: self.publisher.clone(),
                config: self.config.clone(),
                stats: Arc::clone(&self.stats),
                cancel: self.cancel.clone(),
            };
            self.tasks.spawn(job.run());
        }
    }

    fn finish(&mut self, finished: Finished) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.health.progressed();
        let (key, partition) = match &finished {
            Finished::Settled { key, partition, .. }
            | Finished::Retry { key, partition, .. }
            | Finished::Abandoned { key, partition } => (key.clone(), *partition),
        };
        if let Some(count) = self.in_flight_by_partition.get_mut(&partition) {
            *count -= 1;
        }
        match finished {
            Finished::Retry {
                batch,
                attempts,
                delay,
                waited,
                ..
            } => {
                let state = self.keys.entry(key.clone()).or_default();
                self.buffered += batch.len();
                for queued in batch.into_iter().rev() {
                    state.queue.push_front(queued);
                }
                state.attempts = attempts;
                state.waits += u32::from(waited);
                // The key stays busy until its timer fires: it holds back only itself.
                self.timers.spawn(async move {
                    tokio::time::sleep(delay).await;
                    key
                });
            }
            Finished::Settled { applied, .. } => {
                for id in applied {
                    self.applied.insert(key.clone(), id);
                }
                if let Some(state) = self.keys.get_mut(&key) {
                    state.busy = false;
                    state.attempts = 0;
                    state.first_try = None;
                    state.waits = 0;
                }
                self.schedule_or_forget(key);
            }
            Finished::Abandoned { .. } => {
                if let Some(state) = self.keys.get_mut(&key) {
                    state.busy = false;
                    state.attempts = 0;
                    state.first_try = None;
                    state.waits = 0;
                }
                self.schedule_or_forget(key);
            }
        }
        self.release_drained_revocations();
    }

    fn retry_due(&mut self, key: Bytes) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.busy = false;
        }
        self.schedule_or_forget(key);
    }

    /// Puts `key` back in line if it has work; forgets it otherwise, so memory follows the
    /// number of keys with pending work, not every key ever seen.
    fn schedule_or_forget(&mut self, key: Bytes) {
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        if state.queue.is_empty() && !state.busy {
            self.keys.remove(&key);
        } else if !state.busy && !state.scheduled {
            state.scheduled = true;
            self.ready.push_back(key);
        }
    }

    /// Drops queued records of revoked partitions (the next owner receives them again) and
    /// holds the revocation until their in-flight work has finished.
    fn revoke(&mut self, revocation: Revocation) {
        let revoked = &revocation.partitions;
        self.health.revoked(revoked.len());
        for state in self.keys.values_mut() {
            let before = state.queue.len();
            state
                .queue
                .retain(|queued| !revoked.contains(&queued.record.position.partition));
            self.buffered -= before - state.queue.len();
        }
        self.revocations.push(revocation);
        self.release_drained_revocations();
    }

    fn release_drained_revocations(&mut self) {
        let busy = &self.in_flight_by_partition;
        self.revocations.retain(|revocation| {
            revocation
                .partitions
                .iter()
                .any(|p| busy.get(p).copied().unwrap_or_default() > 0)
        });
    }
}

/// The head record, or for a batching handler every queued record that shares its handler
/// (in offset order).
fn take_batch(queue: &mut VecDeque<Queued>) -> Vec<Queued> {
    let Some(head) = queue.pop_front() else {
        return Vec::new();
    };
    let batches = head
        .handler
        .as_ref()
        .is_some_and(|handler| handler.takes_batches());
    let mut batch = vec![head];
    while batches
        && queue
            .front()
            .is_some_and(|next| same_handler(&next.handler, &batch[0].handler))
    {
        batch.extend(queue.pop_front());
    }
    batch
}

fn same_handler(a: &Option<Arc<dyn Handler>>, b: &Option<Arc<dyn Handler>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// The message name: the gateway's header, else the body's `name`.
fn message_name(record: &InboundRecord) -> String {
    if let Some(name) = record.headers.get_str(headers::EVENT_NAME) {
        return name.to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(&record.payload)
        .ok()
        .and_then(|body| {
            body.get("name")
                .and_then(|name| name.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
