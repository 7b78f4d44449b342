//! The engine on Kafka under injected faults (librdkafka's mock cluster): commit errors and a
//! broker that goes down and comes back. Nothing may be lost, each key's records must be
//! handled in offset order, and the committed offsets must end up covering everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use common::bus::{OutboundRecord, Publisher, headers};
use e2e_tests::bus::{Kind, PARTITIONS, TestBus, eventually, record};
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

const KEYS: usize = 7;

/// Notes every call as (key, offset) in call order.
struct Noting {
    calls: Arc<Mutex<Vec<(String, u64)>>>,
}

#[async_trait::async_trait]
impl Handler for Noting {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut calls = self.calls.lock().unwrap();
        for record in records {
            let key = String::from_utf8_lossy(&record.key).into_owned();
            calls.push((key, record.position.offset));
        }
        Outcome::Done
    }
}

fn named(i: usize) -> OutboundRecord {
    let mut record = record(i, KEYS);
    record.headers.insert(headers::EVENT_NAME, "test");
    record
}

struct Fixture {
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bus: TestBus,
    publisher: Publisher,
    calls: Arc<Mutex<Vec<(String, u64)>>>,
    shutdown: CancellationToken,
    status: common::bus::ConsumerStatus,
    engine: tokio::task::JoinHandle<Result<(), common::bus::BusError>>,
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let mock = MockCluster::new(1)?;
        mock.create_topic("webhooks", PARTITIONS as i32, 1)?;
        mock.create_topic("webhooks-dlq", 1, 1)?;
        let bus = TestBus::new(
            Kind::Kafka,
            &[
                ("KAFKA_BROKERS", &mock.bootstrap_servers()),
                ("KAFKA_TOPIC", "webhooks"),
                ("KAFKA_DLQ_TOPIC", "webhooks-dlq"),
                ("KAFKA_CREATE_TOPICS", "false"),
                ("KAFKA_COMMIT_INTERVAL_MS", "100"),
                ("BUS_PUBLISH_TIMEOUT_MS", "20000"),
            ],
        )?;
        let publisher = bus.publisher().await?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let engine = Engine::new(
            bus.consumer().await?,
            publisher.clone(),
            Registry::new().with(Noting {
                calls: Arc::clone(&calls),
            }),
            EngineConfig {
                max_in_flight: 4,
                ..EngineConfig::default()
            },
        );
        let shutdown = CancellationToken::new();
        let status = engine.consumer_status();
        let engine = tokio::spawn(engine.run(shutdown.clone()));
        Ok(Self {
            mock,
            bus,
            publisher,
            calls,
            shutdown,
            status,
            engine,
        })
    }

    async fn publish(&self, range: std::ops::Range<usize>) -> anyhow::Result<BTreeMap<u32, u64>> {
        let mut ends = BTreeMap::new();
        for i in range {
            let position = self.publisher.publish(named(i)).await?;
            ends.insert(position.partition, position.offset + 1);
        }
        Ok(ends)
    }

    fn handled(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Waits until every partition's committed offset reaches its end in `ends`, then checks
    /// that every record was handled and each key's calls never went back in offset order
    /// (a redelivery after a fault starts again from the committed offset, so a key may see a
    /// record again, but only by restarting from an earlier offset it saw before).
    async fn settle(self, ends: &BTreeMap<u32, u64>, total: usize) -> anyhow::Result<()> {
        eventually("offsets committed up to the end", || async {
            for (partition, end) in ends {
                let committed =
                    e2e_tests::kafka::committed_offset(&self.bus.config.kafka, *partition)?;
                if committed < *end {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
        self.shutdown.cancel();
        self.engine.await??;
        let calls = self.calls.lock().unwrap().clone();
        let distinct: BTreeSet<(String, u64)> = calls.iter().cloned().collect();
        ensure!(
            distinct.len() == total,
            "{} distinct records handled, {total} published",
            distinct.len()
        );
        // Per key: a record seen for the first time must come after everything the key saw
        // before; anything else must be a replay of a record already seen.
        let mut seen: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (key, offset) in &calls {
            let offsets = seen.entry(key).or_default();
            let newest = offsets.last().copied();
            ensure!(
                newest.is_none_or(|newest| *offset > newest) || offsets.contains(offset),
                "key {key}: offset {offset} first handled after offset {newest:?}"
            );
            offsets.insert(*offset);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_keeps_processing_through_commit_errors_and_commits_everything_after()
-> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    // Ten commits in a row fail (about a second of periodic commits).
    fixture.mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 10],
    );
    let ends = fixture.publish(0..200).await?;
    let status = fixture.status.clone();
    fixture.settle(&ends, 200).await?;
    ensure!(
        status.commit_failures() >= 1,
        "the injected commit errors never surfaced"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_resumes_after_the_broker_bounces_and_loses_nothing() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let mut ends = fixture.publish(0..150).await?;
    eventually("some records handled before the bounce", || async {
        Ok(fixture.handled() >= 20)
    })
    .await?;
    fixture.mock.broker_down(1)?;
    // The outage lasts long enough for fetches and commits to fail and reconnects to start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fixture.mock.broker_up(1)?;
    ends.extend(fixture.publish(150..300).await?);
    fixture.settle(&ends, 300).await
}
