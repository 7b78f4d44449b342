//! The engine on the in-memory bus: ordering, concurrency bound, retries, DLQ, commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Headers, OutboundRecord, Publisher, headers};
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

const MAX_ATTEMPTS: u32 = 3;

/// One call the handler saw: (key, offset, attempt).
type Call = (String, u64, u32);

/// A handler whose record `i` sleeps `latency[i]` ms and fails transiently `failures[i]` times.
struct Scripted {
    latencies: Vec<u64>,
    failures: Vec<u32>,
    calls: Arc<Mutex<Vec<Call>>>,
    running: AtomicUsize,
    peak: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Handler for Scripted {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], context: &Context) -> Outcome {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(running, Ordering::SeqCst);
        let record = &records[0];
        let i = index(&record.payload);
        let key = String::from_utf8_lossy(&record.key).into_owned();
        self.calls
            .lock()
            .unwrap()
            .push((key, record.position.offset, context.attempt));
        tokio::time::sleep(Duration::from_millis(self.latencies[i])).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if context.attempt <= self.failures[i] {
            Outcome::Retry {
                reason: format!("scripted failure {}", context.attempt),
                delay: None,
            }
        } else {
            Outcome::Done
        }
    }
}

fn index(payload: &[u8]) -> usize {
    let text = std::str::from_utf8(payload).unwrap();
    text.trim_start_matches(r#"{"i":"#)
        .trim_end_matches('}')
        .parse()
        .unwrap()
}

/// Runs `engine` until `count` records are settled, then shuts it down cleanly.
async fn run_until_settled(engine: Engine, count: u64) -> Arc<processor_engine::Stats> {
    let stats = engine.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.finished() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left unfinished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    stats
}

struct Outcomes {
    calls: Vec<Call>,
    peak: usize,
    bus: MemoryBus,
}

async fn run_engine(
    keys: &[u8],
    latencies: Vec<u64>,
    failures: Vec<u32>,
    max_in_flight: usize,
) -> Outcomes {
    let bus = MemoryBus::new(3);
    for (i, key) in keys.iter().enumerate() {
        bus.publish(OutboundRecord {
            key: format!("k{key}").into(),
            payload: format!(r#"{{"i":{i}}}"#).into(),
            headers: Headers::new().with(headers::EVENT_NAME, "test"),
        });
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let peak = Arc::new(AtomicUsize::new(0));
    let handler = Scripted {
        latencies,
        failures,
        calls: Arc::clone(&calls),
        running: AtomicUsize::new(0),
        peak: Arc::clone(&peak),
    };
    let config = EngineConfig {
        max_in_flight,
        max_attempts: MAX_ATTEMPTS,
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(4),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        Consumer::Memory(bus.consumer("group")),
        Publisher::Memory(bus.clone()),
        Registry::new().with(handler),
        config,
    );
    run_until_settled(engine, keys.len() as u64).await;
    let calls = calls.lock().unwrap().clone();
    Outcomes {
        calls,
        peak: peak.load(Ordering::SeqCst),
        bus,
    }
}

fn check(keys: &[u8], failures: &[u32], max_in_flight: usize, outcomes: &Outcomes) {
    // Per key, handler calls follow offset order (a retry repeats the same offset).
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, offset, _) in &outcomes.calls {
        by_key.entry(key.as_str()).or_default().push(*offset);
    }
    for (key, offsets) in &by_key {
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "key {key} out of order: {offsets:?}"
        );
    }
    // Each record was tried exactly as often as its script and the attempt budget say.
    let published = outcomes.bus.published();
    for (position, record) in &published {
        let i = index(&record.payload);
        let key = String::from_utf8_lossy(&record.key);
        let tries = outcomes
            .calls
            .iter()
            .filter(|(k, o, _)| *k == key && *o == position.offset)
            .count();
        assert_eq!(
            tries as u32,
            (failures[i] + 1).min(MAX_ATTEMPTS),
            "record {i}"
        );
    }
    // Exactly the records that kept failing are in the DLQ, with the attempt count.
    let expected: BTreeSet<usize> = (0..keys.len())
        .filter(|i| failures[*i] >= MAX_ATTEMPTS)
        .collect();
    let letters = outcomes.bus.dead_letters();
    let dead: BTreeSet<usize> = letters.iter().map(|r| index(&r.payload)).collect();
    assert_eq!(dead, expected);
    for letter in &letters {
        assert_eq!(
            letter.headers.get_str(headers::DLQ_ERROR_CLASS),
            Some("transient")
        );
        assert_eq!(letter.headers.get_str(headers::DLQ_ATTEMPTS), Some("3"));
    }
    // Everything is committed, and the concurrency bound held.
    let mut lengths = vec![0u64; 3];
    for (position, _) in &published {
        lengths[position.partition as usize] += 1;
    }
    assert_eq!(
        outcomes.bus.committed("group"),
        lengths,
        "committed offsets"
    );
    assert!(
        outcomes.peak <= max_in_flight,
        "peak {} > bound {max_in_flight}",
        outcomes.peak
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn keeps_key_order_respects_the_bound_and_settles_every_record(
        keys in proptest::collection::vec(0u8..10, 1..80),
        latencies in proptest::collection::vec(0u64..3, 80),
        failures in proptest::collection::vec(prop_oneof![4 => Just(0u32), 1 => 1u32..5], 80),
        max_in_flight in 1usize..6,
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let outcomes = runtime.block_on(run_engine(&keys, latencies, failures.clone(), max_in_flight));
        check(&keys, &failures, max_in_flight, &outcomes);
    }
}

#[tokio::test]
async fn a_retrying_key_holds_back_only_itself() {
    // Key 0's first record fails twice; key 1's records must not wait for it.
    let keys = [0, 1, 1, 1];
    let outcomes = run_engine(&keys, vec![0; 4], vec![2, 0, 0, 0], 2).await;
    check(&keys, &[2, 0, 0, 0], 2, &outcomes);
    let first_success_of_key0 = outcomes
        .calls
        .iter()
        .rposition(|(k, _, _)| k == "k0")
        .unwrap();
    let last_of_key1 = outcomes
        .calls
        .iter()
        .rposition(|(k, _, _)| k == "k1")
        .unwrap();
    assert!(
        last_of_key1 < first_success_of_key0,
        "key 1 waited for key 0: {:?}",
        outcomes.calls
    );
}

/// Fails for good on the records whose index is listed; finishes the others.
struct FailsOn(Vec<usize>);

#[async_trait::async_trait]
impl Handler for FailsOn {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        if self.0.contains(&index(&records[0].payload)) {
            Outcome::Fail("the mapping setting names no such state".into())
        } else {
            Outcome::Done
        }
    }
}

/// Runs `registry` over records `(key, name)` until all are settled; returns the bus.
async fn run_with(registry: Registry, records: &[(&str, &str)], config: EngineConfig) -> MemoryBus {
    run_counted(registry, records, config).await.0
}

/// [`run_with`], also returning the engine's counters.
async fn run_counted(
    registry: Registry,
    records: &[(&str, &str)],
    config: EngineConfig,
) -> (MemoryBus, Arc<processor_engine::Stats>) {
    let bus = MemoryBus::new(1);
    for (i, (key, name)) in records.iter().enumerate() {
        bus.publish(OutboundRecord {
            key: (*key).to_owned().into(),
            payload: format!(r#"{{"i":{i}}}"#).into(),
            headers: Headers::new().with(headers::EVENT_NAME, (*name).to_owned()),
        });
    }
    let engine = Engine::new(
        Consumer::Memory(bus.consumer("group")),
        Publisher::Memory(bus.clone()),
        registry,
        config,
    );
    let stats = run_until_settled(engine, records.len() as u64).await;
    (bus, stats)
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_and_blocks_nothing() {
    let records = [
        ("order-1", "test"),
        ("order-1", "test"),
        ("order-2", "test"),
    ];
    let bus = run_with(
        Registry::new().with(FailsOn(vec![0])),
        &records,
        EngineConfig::default(),
    )
    .await;
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(index(&letters[0].payload), 0);
    assert_eq!(
        letters[0].headers.get_str(headers::DLQ_ERROR_CLASS),
        Some("permanent")
    );
    assert_eq!(letters[0].headers.get_str(headers::DLQ_ATTEMPTS), Some("1"));
    assert_eq!(
        letters[0].headers.get_str(headers::DLQ_ERROR),
        Some("the mapping setting names no such state")
    );
    // The records behind it, of its own key and others, were processed and committed.
    assert_eq!(bus.committed("group"), [3]);
}

#[tokio::test]
async fn unknown_names_are_skipped_or_dead_lettered_as_configured() {
    let records = [("order-1", "something.else"), ("order-1", "test")];
    let registry = || Registry::new().with(FailsOn(vec![]));
    let bus = run_with(registry(), &records, EngineConfig::default()).await;
    assert!(bus.dead_letters().is_empty());
    assert_eq!(bus.committed("group"), [2]);

    let config = EngineConfig {
        unknown_names: processor_engine::UnknownNames::DeadLetter,
        ..EngineConfig::default()
    };
    let bus = run_with(registry(), &records, config).await;
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].headers.get_str(headers::EVENT_NAME),
        Some("something.else")
    );
    assert_eq!(bus.committed("group"), [2]);
}

/// Skips every record of `other`, under a name of its own in metrics.
struct SkipsOther;

#[async_trait::async_trait]
impl Handler for SkipsOther {
    fn names(&self) -> Vec<String> {
        vec!["other".into()]
    }

    fn name(&self) -> &'static str {
        "skips_other"
    }

    async fn handle(&self, _records: &[Record], _context: &Context) -> Outcome {
        Outcome::Skip("not ours to change".into())
    }
}

#[tokio::test]
async fn outcomes_are_counted_per_handler_and_unknown_names_under_none() {
    let records = [
        ("order-1", "test"),
        ("order-2", "test"),
        ("order-3", "other"),
        ("order-4", "something.else"),
    ];
    let config = EngineConfig {
        unknown_names: processor_engine::UnknownNames::DeadLetter,
        ..EngineConfig::default()
    };
    let registry = Registry::new().with(FailsOn(vec![1])).with(SkipsOther);
    let (_, stats) = run_counted(registry, &records, config).await;
    let count = |handler: &'static str, outcome: &'static str| {
        stats
            .by_handler
            .get_or_create(&[("handler", handler), ("outcome", outcome)])
            .get()
    };
    // The default name is the type's, without its module path.
    assert_eq!(count("FailsOn", "done"), 1);
    assert_eq!(count("FailsOn", "dead_lettered"), 1);
    assert_eq!(count("skips_other", "skipped"), 1);
    assert_eq!(count("none", "dead_lettered"), 1);
    assert_eq!(count("FailsOn", "skipped"), 0);
    // The totals are the sums.
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 2);
    assert_eq!(stats.done.load(Ordering::Relaxed), 1);
    assert_eq!(stats.skipped.load(Ordering::Relaxed), 1);
}

#[test]
fn engine_settings_come_from_the_configuration() {
    let env = [
        ("PROCESSOR_MAX_IN_FLIGHT", "64"),
        ("PROCESSOR_MAX_ATTEMPTS", "4"),
        ("PROCESSOR_RETRY_BASE_MS", "50"),
        ("PROCESSOR_UNKNOWN_NAMES", "dlq"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = common::config::Config::from_sources(&env, None).unwrap();
    let engine = EngineConfig::from_config(&config);
    assert_eq!(engine.max_in_flight, 64);
    assert_eq!(engine.max_attempts, 4);
    assert_eq!(engine.retry_base, Duration::from_millis(50));
    assert_eq!(
        engine.unknown_names,
        processor_engine::UnknownNames::DeadLetter
    );
}

/// Each call's records as (offset, duplicate flag).
type BatchCalls = Arc<Mutex<Vec<Vec<(u64, bool)>>>>;

/// Takes batches; records each call.
struct Batching {
    calls: BatchCalls,
}

#[async_trait::async_trait]
impl Handler for Batching {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    fn takes_batches(&self) -> bool {
        true
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        let call = records
            .iter()
            .map(|r| (r.position.offset, r.duplicate))
            .collect();
        self.calls.lock().unwrap().push(call);
        // Slow enough that the key's later records queue up behind this call.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Outcome::Done
    }
}

#[tokio::test]
async fn queued_records_of_a_key_are_coalesced_and_repeated_event_ids_marked() {
    let bus = MemoryBus::new(1);
    let ids = ["a", "b", "c", "a", "d"];
    for id in ids {
        bus.publish(OutboundRecord {
            key: "order-1".into(),
            payload: format!(r#"{{"id":"{id}"}}"#).into(),
            headers: Headers::new()
                .with(headers::EVENT_NAME, "test")
                .with(headers::EVENT_ID, id),
        });
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::new(
        Consumer::Memory(bus.consumer("group")),
        Publisher::Memory(bus.clone()),
        Registry::new().with(Batching {
            calls: Arc::clone(&calls),
        }),
        EngineConfig::default(),
    );
    let stats = run_until_settled(engine, 5).await;

    let calls = calls.lock().unwrap().clone();
    let offsets: Vec<u64> = calls.iter().flatten().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        [0, 1, 2, 3, 4],
        "each record once, in offset order: {calls:?}"
    );
    assert!(calls.len() < 5, "nothing was coalesced: {calls:?}");
    assert!(stats.coalesced.load(Ordering::Relaxed) > 0);
    // "a" at offset 3 repeats the event applied at offset 0 (applied before it started).
    let flags: Vec<bool> = calls
        .iter()
        .flatten()
        .map(|(_, duplicate)| *duplicate)
        .collect();
    assert_eq!(flags, [false, false, false, true, false], "{calls:?}");
    assert_eq!(bus.committed("group"), [5]);
}

/// Panics on the first attempt of every record, then succeeds.
struct PanicsOnce;

#[async_trait::async_trait]
impl Handler for PanicsOnce {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], context: &Context) -> Outcome {
        assert!(
            context.attempt > 1,
            "deliberate panic on attempt {}",
            context.attempt
        );
        Outcome::Done
    }
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_does_not_stall_its_key() {
    let records = [
        ("order-1", "test"),
        ("order-1", "test"),
        ("order-2", "test"),
    ];
    let config = EngineConfig {
        retry_base: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    let bus = run_with(Registry::new().with(PanicsOnce), &records, config).await;
    assert!(bus.dead_letters().is_empty());
    assert_eq!(bus.committed("group"), [3]);
}

/// Waits for a dependency `waits` times, then succeeds; notes the attempt numbers it saw.
struct Outage {
    waits: u32,
    calls: Arc<Mutex<Vec<u32>>>,
}

#[async_trait::async_trait]
impl Handler for Outage {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], context: &Context) -> Outcome {
        let mut calls = self.calls.lock().unwrap();
        calls.push(context.attempt);
        if calls.len() as u32 <= self.waits {
            Outcome::Wait {
                reason: "the API is down".into(),
                delay: None,
            }
        } else {
            Outcome::Done
        }
    }
}

#[tokio::test]
async fn waiting_for_a_dependency_spends_no_attempts_within_the_wait_budget() {
    for (max_wait, dead_lettered) in [(Duration::from_secs(3600), false), (Duration::ZERO, true)] {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let registry = Registry::new().with(Outage {
            waits: 12,
            calls: Arc::clone(&calls),
        });
        let config = EngineConfig {
            max_attempts: MAX_ATTEMPTS,
            retry_base: Duration::from_millis(1),
            retry_cap: Duration::from_millis(4),
            max_wait,
            ..EngineConfig::default()
        };
        let bus = run_with(registry, &[("k", "test")], config).await;
        let letters = bus.dead_letters();
        let calls = calls.lock().unwrap().clone();
        if dead_lettered {
            // No budget: each wait is an ordinary retry, so attempts run out.
            assert_eq!(calls, vec![1, 2, 3]);
            assert_eq!(letters.len(), 1);
            assert_eq!(letters[0].headers.get_str(headers::DLQ_ATTEMPTS), Some("3"));
        } else {
            // Twelve waits, then success, every call still the first attempt.
            assert_eq!(calls, vec![1; 13]);
            assert!(letters.is_empty());
        }
    }
}
