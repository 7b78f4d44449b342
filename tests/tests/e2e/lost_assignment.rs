//! A member that lost its assignment (the coordinator no longer knows it: a missed session)
//! must stop work on those partitions at once: the group has already given them to others, so
//! waiting out a drain would only prolong two owners working on the same keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::ensure;
use common::bus::headers;
use e2e_tests::bus::{Kind, TestBus, eventually, record};
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Runs until cancelled, noting that it started and that it saw the cancellation.
struct UntilCancelled {
    started: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Handler for UntilCancelled {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], context: &Context) -> Outcome {
        self.started.store(true, Ordering::SeqCst);
        context.cancel.cancelled().await;
        self.cancelled.store(true, Ordering::SeqCst);
        Outcome::Retry {
            reason: "cancelled".into(),
            delay: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_assignment_stops_its_work_at_once() -> anyhow::Result<()> {
    let mock = MockCluster::new(1)?;
    mock.create_topic("webhooks", 1, 1)?;
    mock.create_topic("webhooks-dlq", 1, 1)?;
    let brokers = mock.bootstrap_servers();
    // A drain far longer than the test waits: only the lost assignment can stop the call.
    let bus = TestBus::new(
        Kind::Kafka,
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("KAFKA_TOPIC", "webhooks"),
            ("KAFKA_DLQ_TOPIC", "webhooks-dlq"),
            ("KAFKA_CREATE_TOPICS", "false"),
            ("BUS_DRAIN_TIMEOUT_MS", "60000"),
            (
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,heartbeat.interval.ms=200",
            ),
        ],
    )?;
    let publisher = bus.publisher().await?;
    let mut named = record(0, 1);
    named.headers.insert(headers::EVENT_NAME, "test");
    publisher.publish(named).await?;
    let started = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    let engine = Engine::new(
        bus.consumer().await?,
        publisher.clone(),
        Registry::new().with(UntilCancelled {
            started: Arc::clone(&started),
            cancelled: Arc::clone(&cancelled),
        }),
        EngineConfig {
            drain_timeout: Duration::from_secs(60),
            ..EngineConfig::default()
        },
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    eventually("the handler call to start", || async {
        Ok(started.load(Ordering::SeqCst))
    })
    .await?;
    // The coordinator forgets the member: its next heartbeat is told so.
    let lost_at = Instant::now();
    mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID; 3],
    );
    eventually("the running call to be cancelled", || async {
        Ok(cancelled.load(Ordering::SeqCst))
    })
    .await?;
    ensure!(
        lost_at.elapsed() < Duration::from_secs(20),
        "cancelled only after {:?}",
        lost_at.elapsed()
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    Ok(())
}
