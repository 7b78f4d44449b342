//! The engine on Kafka across rebalances: a revocation reaches a full engine, work of a revoked
//! partition never runs again where it was, completed work is not replayed by the next owner,
//! and a DLQ that refuses writes is visible. Two engines share one group, as two processors do.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::bus::{OutboundRecord, headers};
use e2e_tests::bus::{Kind, TestBus, eventually, record};
use processor_engine::{
    Context, Engine, EngineConfig, Handler, Health, Outcome, Record, Registry, Stats,
};
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One handler call: which engine, which record, when it started and ended.
#[derive(Debug, Clone)]
struct Call {
    member: &'static str,
    partition: u32,
    offset: u64,
    started: Instant,
    ended: Instant,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// Notes every call; holds each call (or only the call of offset `hold`) while the gate is
/// closed; asks for a retry after `retry` on a record's first attempt when set.
struct Gated {
    member: &'static str,
    calls: Calls,
    gate: watch::Receiver<bool>,
    hold: Option<u64>,
    retry: Option<Duration>,
}

#[async_trait::async_trait]
impl Handler for Gated {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], context: &Context) -> Outcome {
        let started = Instant::now();
        let record = &records[0];
        if self.hold.is_none_or(|hold| hold == record.position.offset) {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.calls.lock().unwrap().push(Call {
            member: self.member,
            partition: record.position.partition,
            offset: record.position.offset,
            started,
            ended: Instant::now(),
        });
        match self.retry {
            Some(delay) if context.attempt == 1 => Outcome::Retry {
                reason: "come back later".into(),
                delay: Some(delay),
            },
            _ => Outcome::Done,
        }
    }
}

fn named(i: usize) -> OutboundRecord {
    let mut record = record(i, 1_000);
    record.headers.insert(headers::EVENT_NAME, "test");
    record
}

/// An engine of the group, running.
struct Member {
    stats: Arc<Stats>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), common::bus::BusError>>,
}

impl Member {
    async fn start(bus: &TestBus, handler: Gated, config: EngineConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(
            bus.consumer().await?,
            bus.publisher().await?,
            Registry::new().with(handler),
            config,
        );
        let (stats, health) = (engine.stats(), engine.health());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(engine.run(shutdown.clone()));
        Ok(Self {
            stats,
            health,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        Ok(self.task.await??)
    }
}

fn handler(member: &'static str, calls: &Calls, gate: &watch::Sender<bool>) -> Gated {
    Gated {
        member,
        calls: Arc::clone(calls),
        gate: gate.subscribe(),
        hold: None,
        retry: None,
    }
}

/// Every record handled by both members was handled by the first one completely before the
/// second started it: one key never runs on two members at once, nor goes back to the first.
fn no_overlap(calls: &[Call]) -> anyhow::Result<()> {
    let mut by_record: BTreeMap<(u32, u64), Vec<&Call>> = BTreeMap::new();
    for call in calls {
        by_record
            .entry((call.partition, call.offset))
            .or_default()
            .push(call);
    }
    for ((partition, offset), calls) in by_record {
        let first_b = calls
            .iter()
            .filter(|c| c.member == "b")
            .map(|c| c.started)
            .min();
        if let Some(first_b) = first_b {
            for call in calls.iter().filter(|c| c.member == "a") {
                ensure!(
                    call.ended <= first_b,
                    "{partition}:{offset} ran on the old owner after the new one took it: {calls:?}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_reaches_a_full_engine_and_its_queued_work_is_dropped() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Kafka, &[("BUS_DRAIN_TIMEOUT_MS", "5000")])?;
    let publisher = bus.publisher().await?;
    for i in 0..60 {
        publisher.publish(named(i)).await?;
    }
    let calls = Calls::default();
    let (gate, _) = watch::channel(false);
    // One call at a time and room for 55 of the 60 records: the engine is full and stops
    // reading, holding records of every partition.
    let config = EngineConfig {
        max_in_flight: 1,
        max_buffered: 55,
        drain_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let a = Member::start(&bus, handler("a", &calls, &gate), config.clone()).await?;
    eventually("the first member full", || async {
        Ok(a.health.assigned_partitions() == 3 && a.stats.buffered.load(Ordering::Relaxed) == 54)
    })
    .await?;
    let b = Member::start(&bus, handler("b", &calls, &gate), config).await?;
    // Cooperative rebalancing moves one partition; the full engine must hear of it at once.
    eventually("the revocation to reach the full engine", || async {
        Ok(a.health.assigned_partitions() == 2)
    })
    .await?;
    // Its queued records of that partition are dropped there and then.
    ensure!(
        a.stats.released.load(Ordering::Relaxed) > 0,
        "nothing of the revoked partition was let go"
    );
    gate.send_replace(true);
    eventually("every record handled", || async {
        let calls = calls.lock().unwrap();
        let mut seen: Vec<(u32, u64)> = calls.iter().map(|c| (c.partition, c.offset)).collect();
        seen.sort_unstable();
        seen.dedup();
        Ok(seen.len() == 60)
    })
    .await?;
    no_overlap(&calls.lock().unwrap())?;
    // And it forgot the keys whose records it dropped.
    eventually("the first member to hold no key state", || async {
        Ok(a.stats.keys.load(Ordering::Relaxed) == 0)
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_that_comes_back_after_its_partition_moved_is_dropped() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Kafka, &[])?;
    let publisher = bus.publisher().await?;
    for i in 0..6 {
        publisher.publish(named(i)).await?;
    }
    let calls = Calls::default();
    let (gate, _) = watch::channel(false);
    let retry = Duration::from_secs(2);
    let a = Member::start(
        &bus,
        Gated {
            retry: Some(retry),
            ..handler("a", &calls, &gate)
        },
        EngineConfig::default(),
    )
    .await?;
    // Every record's first attempt runs, held by the gate, when a partition is taken away.
    eventually("six first attempts running", || async {
        Ok(a.stats.in_flight.load(Ordering::Relaxed) == 6)
    })
    .await?;
    let b = Member::start(&bus, handler("b", &calls, &gate), EngineConfig::default()).await?;
    eventually("the revocation to reach the first member", || async {
        Ok(a.health.assigned_partitions() == 2)
    })
    .await?;
    // The attempts end only now, each asking to come back in two seconds.
    let opened = Instant::now();
    gate.send_replace(true);
    eventually(
        "the second member to handle the partition it took",
        || async { Ok(calls.lock().unwrap().iter().any(|c| c.member == "b")) },
    )
    .await?;
    eventually(
        "the first member's retries to have come due and run",
        || async {
            Ok(opened.elapsed() > retry + Duration::from_secs(1)
                && a.stats.in_flight.load(Ordering::Relaxed) == 0
                && a.stats.finished() + a.stats.released.load(Ordering::Relaxed) >= 6)
        },
    )
    .await?;
    let calls = calls.lock().unwrap().clone();
    let moved: Vec<u32> = calls
        .iter()
        .filter(|c| c.member == "b")
        .map(|c| c.partition)
        .collect();
    let again: Vec<&Call> = calls
        .iter()
        .filter(|c| c.member == "a" && moved.contains(&c.partition) && c.started > opened)
        .collect();
    ensure!(
        again.is_empty(),
        "retries of a revoked partition ran on the old owner: {again:?}"
    );
    ensure!(a.stats.released.load(Ordering::Relaxed) > 0);
    no_overlap(&calls)?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// A mock cluster (it keeps commit metadata, as Apache Kafka does) with the test topics.
fn mock_bus(
    extra: &[(&str, &str)],
) -> anyhow::Result<(
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    TestBus,
)> {
    let mock = MockCluster::new(1)?;
    mock.create_topic("webhooks", 1, 1)?;
    mock.create_topic("webhooks-dlq", 1, 1)?;
    let brokers = mock.bootstrap_servers();
    let mut settings = vec![
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", "webhooks"),
        ("KAFKA_DLQ_TOPIC", "webhooks-dlq"),
        ("KAFKA_CREATE_TOPICS", "false"),
    ];
    settings.extend_from_slice(extra);
    let bus = TestBus::new(Kind::Kafka, &settings)?;
    Ok((mock, bus))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_owner_skips_what_finished_beyond_the_committed_offset() -> anyhow::Result<()> {
    let (_mock, bus) = mock_bus(&[
        ("BUS_DRAIN_TIMEOUT_MS", "500"),
        // librdkafka's mock cluster keeps a member that left until its session times out.
        (
            "KAFKA_PROPERTIES",
            "session.timeout.ms=6000,heartbeat.interval.ms=500",
        ),
    ])?;
    let publisher = bus.publisher().await?;
    for i in 0..10 {
        publisher.publish(named(i)).await?;
    }
    // The first member finishes offsets 1..=9 while offset 0 hangs, then leaves.
    let calls = Calls::default();
    let (stuck, _) = watch::channel(false);
    let (open, _) = watch::channel(true);
    let a = Member::start(
        &bus,
        Gated {
            hold: Some(0),
            ..handler("a", &calls, &stuck)
        },
        EngineConfig {
            drain_timeout: Duration::from_millis(500),
            ..EngineConfig::default()
        },
    )
    .await?;
    eventually("offsets 1 to 9 done", || async {
        Ok(calls.lock().unwrap().len() == 9)
    })
    .await?;
    a.stop().await?;
    let committed = e2e_tests::kafka::committed_offset(&bus.config.kafka, 0)?;
    ensure!(
        committed == 0,
        "committed {committed}: offset 0 never finished"
    );
    // The next owner starts at 0 and must run only what is not done.
    let b = Member::start(&bus, handler("b", &calls, &open), EngineConfig::default()).await?;
    eventually("the unfinished record handled", || async {
        Ok(calls.lock().unwrap().iter().any(|c| c.member == "b"))
    })
    .await?;
    eventually("everything committed", || async {
        Ok(e2e_tests::kafka::committed_offset(&bus.config.kafka, 0)? == 10)
    })
    .await?;
    let replayed: Vec<u64> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.member == "b")
        .map(|c| c.offset)
        .collect();
    ensure!(
        replayed == [0],
        "the next owner ran again what was done: {replayed:?}"
    );
    b.stop().await?;
    Ok(())
}

/// Fails every record for good: it goes to the DLQ.
struct AlwaysFails;

#[async_trait::async_trait]
impl Handler for AlwaysFails {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], _context: &Context) -> Outcome {
        Outcome::Fail("the mapping names no such state".into())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dlq_that_refuses_writes_makes_the_engine_not_live_and_loses_nothing()
-> anyhow::Result<()> {
    let (mock, bus) = mock_bus(&[("KAFKA_PROPERTIES", "topic.metadata.refresh.interval.ms=200")])?;
    let publisher = bus.publisher().await?;
    publisher.publish(named(0)).await?;
    // The DLQ topic refuses us, as one without write access does.
    mock.topic_error(
        "webhooks-dlq",
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )?;
    let engine = Engine::new(
        bus.consumer().await?,
        publisher.clone(),
        Registry::new().with(AlwaysFails),
        EngineConfig {
            retry_base: Duration::from_millis(50),
            retry_cap: Duration::from_millis(200),
            ..EngineConfig::default()
        },
    );
    let (stats, health) = (engine.stats(), engine.health());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    eventually("the refusal to show on liveness", || async {
        Ok(health
            .live()
            .is_err_and(|reason| reason.contains("the DLQ refuses writes")))
    })
    .await?;
    ensure!(stats.dlq_write_failures.load(Ordering::Relaxed) >= 1);
    ensure!(
        e2e_tests::kafka::committed_offset(&bus.config.kafka, 0)? == 0,
        "a record whose dead letter was refused was committed"
    );
    // Access granted: the held record reaches the DLQ, is committed, and the engine is live.
    mock.topic_error(
        "webhooks-dlq",
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
    )?;
    eventually("the dead letter written and committed", || async {
        Ok(stats.dead_lettered.load(Ordering::Relaxed) == 1
            && e2e_tests::kafka::committed_offset(&bus.config.kafka, 0)? == 1)
    })
    .await?;
    ensure!(health.live().is_ok(), "{:?}", health.live());
    let letters = e2e_tests::kafka::read_topic(&mock.bootstrap_servers(), "webhooks-dlq", 1)
        .context("reading the DLQ")?;
    ensure!(letters[0].headers.get_str("dlq-error") == Some("the mapping names no such state"));
    shutdown.cancel();
    task.await??;
    Ok(())
}
