//! The engine's bounds and bookkeeping on the in-memory bus: what counts as applied, whose
//! attempts a batch spends, how large a batch and how much memory may grow, and what shutdown
//! still starts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Headers, OutboundRecord, Publisher, headers};
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Publishes records of `key` with these event ids (one record each, offset order).
fn publish(bus: &MemoryBus, key: &str, ids: &[&str]) {
    for id in ids {
        bus.publish(OutboundRecord {
            key: key.to_owned().into(),
            payload: format!(r#"{{"id":"{id}"}}"#).into(),
            headers: Headers::new()
                .with(headers::EVENT_NAME, "test")
                .with(headers::EVENT_ID, (*id).to_owned()),
        });
    }
}

fn event_id(record: &Record) -> String {
    record.event_id.clone().unwrap_or_default()
}

/// A running engine over `bus` with `handler`.
struct Running {
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), common::bus::BusError>>,
}

impl Running {
    fn start(bus: &MemoryBus, handler: impl Handler, config: EngineConfig) -> Self {
        let engine = Engine::new(
            Consumer::Memory(bus.consumer("group")),
            Publisher::Memory(bus.clone()),
            Registry::new().with(handler),
            config,
        );
        let stats = engine.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(engine.run(shutdown.clone()));
        Self {
            stats,
            shutdown,
            task,
        }
    }

    async fn until(&self, what: &str, done: impl Fn(&Stats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.stats) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn settled(&self, count: u64) {
        self.until(&format!("{count} records settled"), |stats| {
            stats.finished() >= count
        })
        .await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn quick() -> EngineConfig {
    EngineConfig {
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(2),
        ..EngineConfig::default()
    }
}

/// Fails for good the first time it sees each event id, then records what it saw.
#[derive(Default)]
struct FailsFirstTime {
    seen: Mutex<Vec<(String, bool)>>,
}

#[async_trait::async_trait]
impl Handler for FailsFirstTime {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        let mut seen = self.seen.lock().unwrap();
        let id = event_id(&records[0]);
        let first = !seen.iter().any(|(known, _)| *known == id);
        seen.push((id, records[0].duplicate));
        if first {
            Outcome::Fail("the order is not there yet".into())
        } else {
            Outcome::Done
        }
    }
}

#[tokio::test]
async fn a_replayed_dead_letter_is_not_taken_for_a_repeat() {
    let bus = MemoryBus::new(1);
    let handler = Arc::new(FailsFirstTime::default());
    let running = Running::start(&bus, SharedHandler(Arc::clone(&handler)), quick());
    publish(&bus, "order-1", &["e1"]);
    running.settled(1).await;
    assert_eq!(bus.dead_letters().len(), 1);
    // The operator fixed the cause and replays the dead letter as README says.
    publish(&bus, "order-1", &["e1"]);
    running.settled(2).await;
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [("e1".to_owned(), false), ("e1".to_owned(), false)],
        "the replay must reach the handler as new"
    );
    assert_eq!(bus.dead_letters().len(), 1);
    running.stop().await;
}

/// Lets a test share a handler it keeps looking at.
struct SharedHandler<H>(Arc<H>);

#[async_trait::async_trait]
impl<H: Handler> Handler for SharedHandler<H> {
    fn names(&self) -> Vec<String> {
        self.0.names()
    }

    fn takes_batches(&self) -> bool {
        self.0.takes_batches()
    }

    async fn handle(&self, records: &[Record], context: &Context) -> Outcome {
        self.0.handle(records, context).await
    }
}

/// Batches; fails (transiently) every call whose batch holds the event `poison`; each call
/// waits for a permit, so a test decides when calls end.
struct PoisonBatch {
    poison: &'static str,
    gate: Arc<Semaphore>,
    calls: Mutex<Vec<Vec<String>>>,
    running: AtomicUsize,
}

impl PoisonBatch {
    fn new(poison: &'static str, gate: Arc<Semaphore>) -> Self {
        Self {
            poison,
            gate,
            calls: Mutex::default(),
            running: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Handler for PoisonBatch {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    fn takes_batches(&self) -> bool {
        true
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.calls
            .lock()
            .unwrap()
            .push(records.iter().map(event_id).collect());
        self.gate.acquire().await.unwrap().forget();
        self.running.fetch_sub(1, Ordering::SeqCst);
        if records.iter().any(|record| event_id(record) == self.poison) {
            Outcome::Retry {
                reason: "poisoned".into(),
                delay: Some(Duration::from_millis(1)),
            }
        } else {
            Outcome::Done
        }
    }
}

#[tokio::test]
async fn a_record_that_joins_on_the_last_attempt_is_not_dead_lettered_with_it() {
    let bus = MemoryBus::new(1);
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(PoisonBatch::new("bad", Arc::clone(&gate)));
    let config = EngineConfig {
        max_attempts: 2,
        ..quick()
    };
    let running = Running::start(&bus, SharedHandler(Arc::clone(&handler)), config);
    publish(&bus, "order-1", &["bad"]);
    let calls = Arc::clone(&handler);
    running
        .until("the first call", move |_| {
            calls.calls.lock().unwrap().len() == 1
        })
        .await;
    // While the first attempt runs, a good record queues; the second attempt takes both.
    publish(&bus, "order-1", &["good"]);
    running
        .until("the good record is queued", |stats| {
            stats.buffered.load(Ordering::Relaxed) == 1
        })
        .await;
    gate.add_permits(100);
    running.settled(2).await;
    let calls = handler.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [vec!["bad"], vec!["bad", "good"], vec!["good"]],
        "the good record is tried alone after its neighbour's attempts ran out"
    );
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].headers.get_str(headers::EVENT_ID), Some("bad"));
    running.stop().await;
}

#[tokio::test]
async fn batches_and_memory_stay_within_their_bounds() {
    let bus = MemoryBus::new(1);
    let ids: Vec<String> = (0..60).map(|n| format!("e{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    publish(&bus, "order-1", &ids);
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(PoisonBatch::new("none", Arc::clone(&gate)));
    let config = EngineConfig {
        max_buffered: 10,
        max_batch: 4,
        ..quick()
    };
    let running = Running::start(&bus, SharedHandler(Arc::clone(&handler)), config);
    // One call at a time, each released once the engine has read all it may.
    for call in 1.. {
        let calls = Arc::clone(&handler);
        let finished = running.stats.finished();
        if finished >= 60 {
            break;
        }
        running
            .until(&format!("call {call}"), move |stats| {
                calls.calls.lock().unwrap().len() >= call || stats.finished() >= 60
            })
            .await;
        gate.add_permits(1);
    }
    running.settled(60).await;
    let calls = handler.calls.lock().unwrap().clone();
    assert!(
        calls.iter().all(|batch| batch.len() <= 4),
        "a batch above PROCESSOR_MAX_BATCH: {calls:?}"
    );
    let flat: Vec<String> = calls.into_iter().flatten().collect();
    assert_eq!(flat, ids, "every record once, in order");
    let peak = running.stats.peak_held.load(Ordering::Relaxed);
    assert!(
        peak <= 10,
        "{peak} records held at once (queued plus in running calls) above max_buffered"
    );
    running.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_what_runs_and_starts_nothing_new() {
    let bus = MemoryBus::new(1);
    publish(&bus, "order-1", &["a"]);
    publish(&bus, "order-2", &["b"]);
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(PoisonBatch::new("none", Arc::clone(&gate)));
    let config = EngineConfig {
        max_in_flight: 1,
        drain_timeout: Duration::from_secs(30),
        ..quick()
    };
    let running = Running::start(&bus, SharedHandler(Arc::clone(&handler)), config);
    let calls = Arc::clone(&handler);
    running
        .until("the first call", move |_| {
            calls.calls.lock().unwrap().len() == 1
        })
        .await;
    running
        .until("the second record is queued", |stats| {
            stats.buffered.load(Ordering::Relaxed) == 1
        })
        .await;
    running.shutdown.cancel();
    gate.add_permits(100);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("shutdown ran into its drain deadline")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        handler.calls.lock().unwrap().len(),
        1,
        "queued work was started during the drain"
    );
    // The first record is committed; the second stays for the next owner.
    assert_eq!(bus.committed("group"), [1]);
}

/// Takes one permit of its gate per call: the test decides when calls end.
struct Gated(Arc<Semaphore>);

#[async_trait::async_trait]
impl Handler for Gated {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], _context: &Context) -> Outcome {
        match self.0.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => {
                return Outcome::Retry {
                    reason: "gate closed".into(),
                    delay: None,
                };
            }
        }
        Outcome::Done
    }
}

#[tokio::test]
async fn the_oldest_unfinished_records_age_grows_while_it_waits_and_clears_once_done() {
    let bus = MemoryBus::new(1);
    let gate = Arc::new(Semaphore::new(0));
    // The second waits in its key's queue behind the first, stuck in its handler call.
    publish(&bus, "K", &["e-1", "e-2"]);
    let running = Running::start(&bus, Gated(Arc::clone(&gate)), quick());
    running
        .until("the oldest record is a second old", |stats| {
            stats.oldest_unfinished_ms.load(Ordering::Relaxed) >= 1_000
        })
        .await;
    gate.add_permits(2);
    running.settled(2).await;
    running
        .until("no age once nothing is held", |stats| {
            stats.oldest_unfinished_ms.load(Ordering::Relaxed) == 0
        })
        .await;
    running.stop().await;
}
