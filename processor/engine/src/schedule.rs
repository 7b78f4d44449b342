//! The scheduling state the engine loop owns: per-key queues, the ready list, retry timers,
//! running jobs, and revocations waiting for their partitions' in-flight work.
//!
//! The rules, each kept here and nowhere else:
//! - A key runs one job at a time, in offset order; a retry holds back only its key.
//! - A batch is one key's queued records of one partition and one handler, at most
//!   `max_batch` of them; a repeated event id inside it, or one applied recently, is marked.
//! - Records held (queued plus inside running jobs) stay below `max_buffered`.
//! - A record whose partition was revoked is dropped wherever it is met: on arrival, in its
//!   queue, and when its job comes back for a retry. It is never run again by this consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::bus::{InboundRecord, Publisher, Revocation, headers};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, warn};

use super::applied::AppliedIds;
use super::job::Job;
use super::work::{Finished, Queued};
use super::{EngineConfig, Handler, Health, Record, RecordOutcome, Registry, Stats};

/// One key's pending records, in offset order.
#[derive(Default)]
struct KeyState {
    queue: VecDeque<Queued>,
    /// A handler call runs, or a retry timer waits: nothing else of this key may start.
    busy: bool,
    /// Already in the ready list.
    scheduled: bool,
    /// Waits for an unavailable dependency so far (they grow the backoff, not the attempts).
    waits: u32,
}

/// A running job, as the loop knows it (its records are inside the task).
struct Running {
    key: Bytes,
    partition: u32,
    records: usize,
    /// When the oldest of its records arrived.
    oldest: Option<Instant>,
}

pub(super) struct State {
    keys: HashMap<Bytes, KeyState>,
    ready: VecDeque<Bytes>,
    pub(super) tasks: JoinSet<Finished>,
    running: HashMap<Id, Running>,
    pub(super) timers: JoinSet<Bytes>,
    in_flight_by_partition: HashMap<u32, usize>,
    /// Revocations waiting for their partitions' in-flight work, with their drain deadline and
    /// the cancellation tokens of the jobs that ran under the revoked ownership.
    revocations: Vec<(Revocation, Instant, Vec<CancellationToken>)>,
    /// Per partition, the token its jobs see: cancelled when the partition was revoked and its
    /// drain deadline passed, so work still running there stops before it acts for an owner
    /// it no longer is. Children of `cancel` (shutdown).
    partition_cancel: HashMap<u32, CancellationToken>,
    /// Records queued, not in a running job.
    pub(super) buffered: usize,
    /// Records inside running jobs.
    in_flight_records: usize,
    /// When the oldest record of a job that died arrived: those records are unfinished until
    /// a restart redelivers them, so the age an operator alerts on keeps growing.
    lost_oldest: Option<Instant>,
    publisher: Publisher,
    registry: Registry,
    pub(super) config: EngineConfig,
    pub(super) stats: Arc<Stats>,
    pub(super) health: Arc<Health>,
    pub(super) cancel: CancellationToken,
    applied: AppliedIds,
}

impl State {
    pub(super) fn new(
        publisher: Publisher,
        registry: Registry,
        config: EngineConfig,
        stats: Arc<Stats>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            timers: JoinSet::new(),
            in_flight_by_partition: HashMap::new(),
            revocations: Vec::new(),
            partition_cancel: HashMap::new(),
            buffered: 0,
            in_flight_records: 0,
            lost_oldest: None,
            publisher,
            registry,
            config,
            stats,
            health,
            cancel: CancellationToken::new(),
            applied: AppliedIds::default(),
        }
    }

    /// Keys the engine keeps state for.
    pub(super) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Records in memory: queued, and inside running jobs (the memory bound).
    pub(super) fn held(&self) -> usize {
        self.buffered + self.in_flight_records
    }

    /// True when no record is unfinished: nothing held, and no job died holding records.
    pub(super) fn nothing_unfinished(&self) -> bool {
        self.held() == 0 && self.lost_oldest.is_none()
    }

    /// When the oldest record not finished yet arrived: queued, waiting for a retry (back in
    /// its key's queue), inside a running job, or in a job that died. It looks at every record
    /// held (at most `max_buffered`), so the loop asks once a second, not every turn.
    pub(super) fn oldest_unfinished(&self) -> Option<Instant> {
        let queued = self
            .keys
            .values()
            .filter_map(|state| state.queue.iter().map(|queued| queued.arrived).min());
        let running = self.running.values().filter_map(|running| running.oldest);
        queued.chain(running).chain(self.lost_oldest).min()
    }

    pub(super) fn enqueue(&mut self, record: InboundRecord) {
        let name = message_name(&record);
        let handler = self.registry.handler_for(&name).cloned();
        if !record.ack.is_current() {
            // Fetched before its partition was revoked: the next owner runs it.
            self.stats
                .count(handler.as_ref(), RecordOutcome::Released, 1);
            return;
        }
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
            attempts: 0,
            first_try: None,
            arrived: Instant::now(),
        });
        self.buffered += 1;
        self.stats
            .peak_held
            .fetch_max(self.buffered + self.in_flight_records, Ordering::Relaxed);
        if !state.busy && !state.scheduled {
            state.scheduled = true;
            self.ready.push_back(key);
        }
    }

    /// Starts ready keys while there is room.
    pub(super) fn start_ready(&mut self) {
        while self.tasks.len() < self.config.max_in_flight {
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(state) = self.keys.get_mut(&key) else {
                continue;
            };
            state.scheduled = false;
            if state.busy {
                continue;
            }
            let stats = &self.stats;
            let before = state.queue.len();
            state.queue.retain(|queued| {
                let current = queued.is_current();
                if !current {
                    stats.count(queued.handler.as_ref(), RecordOutcome::Released, 1);
                }
                current
            });
            self.buffered -= before - state.queue.len();
            let mut batch = take_batch(&mut state.queue, self.config.max_batch);
            if batch.is_empty() {
                self.keys.remove(&key);
                continue;
            }
            self.mark_repeats(&key, &mut batch);
            self.stats.count(
                batch[0].handler.as_ref(),
                RecordOutcome::Coalesced,
                batch.len() as u64 - 1,
            );
            let now = Instant::now();
            for queued in &mut batch {
                queued.attempts += 1;
                queued.first_try.get_or_insert(now);
            }
            let Some(state) = self.keys.get_mut(&key) else {
                continue;
            };
            state.busy = true;
            let waits = state.waits;
            self.buffered -= batch.len();
            self.in_flight_records += batch.len();
            let partition = batch[0].record.position.partition;
            *self.in_flight_by_partition.entry(partition).or_default() += 1;
            let running = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.stats
                .peak_in_flight
                .fetch_max(running, Ordering::Relaxed);
            let records = batch.len();
            let oldest = batch.iter().map(|queued| queued.arrived).min();
            let cancel = self
                .partition_cancel
                .entry(partition)
                .or_insert_with(|| self.cancel.child_token())
                .clone();
            let job = Job {
                batch,
                waits,
                publisher: self.publisher.clone(),
                config: self.config.clone(),
                stats: Arc::clone(&self.stats),
                health: Arc::clone(&self.health),
                cancel,
            };
            let span = job.span();
            let id = self.tasks.spawn(job.run().instrument(span)).id();
            self.running.insert(
                id,
                Running {
                    key,
                    partition,
                    records,
                    oldest,
                },
            );
        }
    }

    /// Marks the repeats in `batch`: a record whose event id was applied recently for the key
    /// from another record, or came earlier in the same batch in another record (Fluent
    /// retried a webhook and the retry landed behind newer events). A repeat never moves the
    /// order; the same record delivered again is no repeat (see `applied`).
    fn mark_repeats(&self, key: &Bytes, batch: &mut [Queued]) {
        let mut seen: HashMap<&str, common::bus::Position> = HashMap::new();
        for queued in batch.iter_mut() {
            let position = queued.view.position;
            if let Some(id) = queued.view.event_id.as_deref() {
                let earlier = *seen.entry(id).or_insert(position);
                queued.view.duplicate =
                    earlier != position || self.applied.repeats(key, id, position);
            }
        }
    }

    /// A job ended, normally or not.
    pub(super) fn joined(&mut self, joined: Result<(Id, Finished), JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_records -= running.records;
        self.health.progressed();
        if let Some(count) = self.in_flight_by_partition.get_mut(&running.partition) {
            *count -= 1;
        }
        match joined {
            Ok((_, finished)) => self.finish(running.key, finished),
            Err(error) => {
                // Jobs catch handler panics; this is a panic in the engine's own code. The
                // records went down with the task unacknowledged, so later records of the key
                // must not overtake them: the key stays held and the engine stops being live,
                // so a restart redelivers them in order.
                error!(%error, key = %String::from_utf8_lossy(&running.key),
                    "a handler job ended abnormally; its key is held until a restart");
                self.lost_oldest = self.lost_oldest.into_iter().chain(running.oldest).min();
                self.health.stuck(format!(
                    "a handler job ended abnormally ({error}); its records are redelivered after a restart"
                ));
            }
        }
        self.release_drained_revocations();
    }

    fn finish(&mut self, key: Bytes, finished: Finished) {
        match finished {
            Finished::Abandoned { batch } => {
                // Never acknowledged, so never skipped: what is still this consumer's goes
                // back to the head of its key (keeping the key's order); the rest is released.
                let batch = self.still_ours(batch);
                let state = self.keys.entry(key.clone()).or_default();
                self.buffered += batch.len();
                for queued in batch.into_iter().rev() {
                    state.queue.push_front(queued);
                }
                self.idle(key);
            }
            Finished::Retry {
                batch,
                delay,
                waited,
                ..
            } => {
                // Work of a partition revoked meanwhile is dropped, never rescheduled.
                let batch = self.still_ours(batch);
                let state = self.keys.entry(key.clone()).or_default();
                if batch.is_empty() {
                    state.busy = false;
                    state.waits = 0;
                    self.schedule_or_forget(key);
                    return;
                }
                self.buffered += batch.len();
                for queued in batch.into_iter().rev() {
                    state.queue.push_front(queued);
                }
                state.waits += u32::from(waited);
                // The key stays busy until its timer fires: it holds back only itself.
                self.timers.spawn(async move {
                    tokio::time::sleep(delay).await;
                    key
                });
            }
            Finished::Settled { applied, .. } => {
                for (id, position) in applied {
                    self.applied.insert(key.clone(), id, position);
                }
                self.idle(key);
            }
        }
    }

    /// The records of `batch` still this consumer's; the others are released to their
    /// partition's next owner.
    fn still_ours(&self, batch: Vec<Queued>) -> Vec<Queued> {
        batch
            .into_iter()
            .filter(|queued| {
                let current = queued.is_current();
                if !current {
                    let handler = queued.handler.as_ref();
                    self.stats.count(handler, RecordOutcome::Released, 1);
                }
                current
            })
            .collect()
    }

    fn idle(&mut self, key: Bytes) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.busy = false;
            state.waits = 0;
        }
        self.schedule_or_forget(key);
    }

    pub(super) fn retry_due(&mut self, key: Bytes) {
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

    /// Drops queued records of revoked partitions (the next owner receives them again), forgets
    /// keys left with nothing, and holds the revocation until their in-flight work finished.
    pub(super) fn revoke(&mut self, revocation: Revocation) {
        let revoked = &revocation.partitions;
        self.health.revoked(revoked.len());
        let mut dropped = 0;
        let stats = &self.stats;
        self.keys.retain(|_, state| {
            let before = state.queue.len();
            state.queue.retain(|queued| {
                let kept =
                    queued.is_current() && !revoked.contains(&queued.record.position.partition);
                if !kept {
                    stats.count(queued.handler.as_ref(), RecordOutcome::Released, 1);
                }
                kept
            });
            dropped += before - state.queue.len();
            if before > state.queue.len() && state.queue.is_empty() {
                state.waits = 0;
            }
            // A busy key comes back through its job or its timer; an idle empty one is done.
            state.busy || !state.queue.is_empty()
        });
        self.buffered -= dropped;
        if dropped > 0 {
            warn!(dropped, partitions = ?revoked, "dropped queued records of revoked partitions");
        }
        // A lost assignment is someone else's already: its work stops now, no drain.
        let deadline = if revocation.lost {
            Instant::now()
        } else {
            Instant::now() + self.config.drain_timeout
        };
        // The jobs of this ownership keep their token; jobs of the partition after it comes
        // back (a re-assignment) get a fresh one, never cancelled by this revocation.
        let mut tokens: Vec<CancellationToken> = revoked
            .iter()
            .filter_map(|partition| self.partition_cancel.remove(partition))
            .collect();
        if revocation.lost {
            // Lost while an earlier revocation of these partitions still drains: its work is
            // someone else's too, now.
            for (held, _, held_tokens) in &mut self.revocations {
                if held.partitions.iter().any(|p| revoked.contains(p)) {
                    tokens.append(held_tokens);
                }
            }
        }
        self.revocations.push((revocation, deadline, tokens));
        self.release_drained_revocations();
        self.revocations_overdue();
    }

    fn release_drained_revocations(&mut self) {
        let busy = &self.in_flight_by_partition;
        self.revocations.retain(|(revocation, _, _)| {
            revocation
                .partitions
                .iter()
                .any(|p| busy.get(p).copied().unwrap_or_default() > 0)
        });
    }

    /// When the first held revocation's drain deadline passes, if any is held.
    pub(super) fn next_revocation_deadline(&self) -> Option<Instant> {
        self.revocations
            .iter()
            .map(|(_, deadline, _)| *deadline)
            .min()
    }

    /// Revocations past their drain deadline: the bus has handed their partitions over, so
    /// work still running there is told to stop (its records are the next owner's now).
    pub(super) fn revocations_overdue(&mut self) {
        let now = Instant::now();
        let (overdue, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.revocations)
            .into_iter()
            .partition(|(_, deadline, _)| *deadline <= now);
        self.revocations = held;
        for (revocation, _, tokens) in overdue {
            warn!(partitions = ?revocation.partitions,
                "work on revoked partitions outlasted the drain deadline; cancelling it");
            for token in tokens {
                token.cancel();
            }
        }
    }
}

/// The head record, or for a batching handler the queued records after it that share its
/// handler and partition (in offset order), at most `max` in all.
fn take_batch(queue: &mut VecDeque<Queued>, max: usize) -> Vec<Queued> {
    let Some(head) = queue.pop_front() else {
        return Vec::new();
    };
    let batches = head
        .handler
        .as_ref()
        .is_some_and(|handler| handler.takes_batches());
    let partition = head.record.position.partition;
    let mut batch = vec![head];
    while batches
        && batch.len() < max
        && queue.front().is_some_and(|next| {
            next.record.position.partition == partition
                && same_handler(&next.handler, &batch[0].handler)
        })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::bus::memory::MemoryBus;

    use super::*;

    /// The scheduling state of an engine over `bus`, with its health.
    fn state_on(bus: &MemoryBus) -> (State, Arc<Health>) {
        let health = Arc::new(Health::new(
            bus.consumer("health").status(),
            Duration::from_secs(60),
        ));
        let state = State::new(
            Publisher::Memory(bus.clone()),
            Registry::new(),
            EngineConfig::default(),
            Arc::default(),
            Arc::clone(&health),
        );
        (state, health)
    }

    /// A queued record for `record`, as `enqueue` makes it, tried once.
    fn queued(record: InboundRecord) -> Queued {
        let view = Record {
            key: record.key.clone(),
            position: record.position,
            headers: record.headers.clone(),
            payload: record.payload.clone(),
            name: String::new(),
            event_id: None,
            duplicate: false,
        };
        Queued {
            record,
            view,
            handler: None,
            attempts: 1,
            first_try: None,
            arrived: Instant::now(),
        }
    }

    #[tokio::test]
    async fn an_abandoned_batch_that_is_still_ours_goes_back_to_the_head_of_its_key() {
        let bus = MemoryBus::new(1);
        for n in 0..3 {
            bus.publish(common::bus::OutboundRecord {
                key: "order-1".into(),
                payload: format!("{n}").into(),
                headers: common::bus::Headers::new(),
            });
        }
        let mut consumer = bus.consumer("g");
        let (mut state, _) = state_on(&bus);
        let mut records = Vec::new();
        while records.len() < 3 {
            if let common::bus::Delivery::Record(record) = consumer.next(true).await.unwrap() {
                records.push(record);
            }
        }
        // Offsets 0 and 1 are in a job that a cancellation overtook; 2 queued behind them.
        let key = records[0].key.clone();
        state.enqueue(records.pop().unwrap());
        state.ready.clear();
        let key_state = state.keys.get_mut(&key).unwrap();
        key_state.scheduled = false;
        key_state.busy = true;
        let batch = records.into_iter().map(queued).collect();
        state.finish(key.clone(), Finished::Abandoned { batch });
        let queue: Vec<u64> = state.keys[&key]
            .queue
            .iter()
            .map(|queued| queued.view.position.offset)
            .collect();
        assert_eq!(queue, [0, 1, 2], "back at the head, in offset order");
        assert!(!state.keys[&key].busy);
        assert_eq!(state.ready.front(), Some(&key), "scheduled to run again");
        assert_eq!(state.buffered, 3);
    }

    #[tokio::test]
    async fn a_redelivered_suffix_runs_again_and_only_a_retry_at_a_new_position_repeats() {
        let bus = MemoryBus::new(1);
        for id in ["e1", "e2", "e3", "e1"] {
            bus.publish(common::bus::OutboundRecord {
                key: "order-1".into(),
                payload: id.into(),
                headers: common::bus::Headers::new().with(headers::EVENT_ID, id),
            });
        }
        let mut consumer = bus.consumer("g");
        let (mut state, _) = state_on(&bus);
        let mut batch = Vec::new();
        while batch.len() < 4 {
            if let common::bus::Delivery::Record(record) = consumer.next(true).await.unwrap() {
                let mut queued = queued(record);
                queued.view.event_id = queued
                    .record
                    .headers
                    .get_str(headers::EVENT_ID)
                    .map(str::to_owned);
                batch.push(queued);
            }
        }
        // This process applied e2 and e3 before (offsets 1 and 2); now the suffix from offset
        // 0 comes again (the committed offset was behind), with Fluent's retry of e1 at 3.
        let key = batch[0].view.key.clone();
        for queued in &batch[1..3] {
            let id = queued.view.event_id.clone().unwrap();
            state.applied.insert(key.clone(), id, queued.view.position);
        }
        state.mark_repeats(&key, &mut batch);
        let marks: Vec<bool> = batch.iter().map(|queued| queued.view.duplicate).collect();
        assert_eq!(marks, [false, false, false, true]);
    }

    #[tokio::test]
    async fn a_job_that_dies_holds_its_key_and_stops_liveness() {
        let bus = MemoryBus::new(1);
        let (mut state, health) = state_on(&bus);
        let key = Bytes::from_static(b"order-1");
        state.keys.entry(key.clone()).or_default().busy = true;
        state.in_flight_records = 2;
        *state.in_flight_by_partition.entry(0).or_default() += 1;
        state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let id = state
            .tasks
            .spawn(async { panic!("a deliberate bug in the engine's own code") })
            .id();
        let arrived = Instant::now();
        state.running.insert(
            id,
            Running {
                key: key.clone(),
                partition: 0,
                records: 2,
                oldest: Some(arrived),
            },
        );
        let joined = state.tasks.join_next_with_id().await.unwrap();
        state.joined(joined);
        let reason = health.live().unwrap_err();
        assert!(reason.contains("ended abnormally"), "{reason}");
        // Its records went down unacknowledged: later ones of the key must not overtake them.
        assert!(state.keys[&key].busy);
        assert_eq!(state.held(), 0);
        // They are unfinished still: the age an operator alerts on keeps counting from them.
        assert!(!state.nothing_unfinished());
        assert_eq!(state.oldest_unfinished(), Some(arrived));
        assert_eq!(state.stats.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(state.in_flight_by_partition[&0], 0);
    }
}
