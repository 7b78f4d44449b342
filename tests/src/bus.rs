//! A bus of each kind, configured through the real configuration loader with names unique to
//! the test, and helpers to drive consumers.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Delivery, Headers, InboundRecord, OutboundRecord, Publisher};
use common::config::{BusConfig, Config};

use crate::{DEADLINE, kafka_brokers, nats_url, unique};

/// Partitions of every test topic or stream.
pub const PARTITIONS: u32 = 3;

/// Which implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The real Kafka-protocol broker.
    Kafka,
    /// The real NATS server.
    Nats,
    /// The in-memory bus.
    Memory,
}

/// One bus for one test.
pub struct TestBus {
    /// The implementation.
    pub kind: Kind,
    /// Its configuration.
    pub config: BusConfig,
    /// The in-memory bus (used when `kind` is Memory).
    pub memory: MemoryBus,
}

impl TestBus {
    /// A fresh topic/stream and group on the bus of `kind`; `extra` overrides settings.
    pub fn new(kind: Kind, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut env: HashMap<String, String> = HashMap::new();
        let mut set = |key: &str, value: String| env.insert(key.to_owned(), value);
        set("BUS_DRAIN_TIMEOUT_MS", "5000".into());
        match kind {
            Kind::Kafka => {
                set("BUS", "kafka".into());
                set("KAFKA_BROKERS", kafka_brokers());
                set("KAFKA_TOPIC", unique("contract"));
                set("KAFKA_DLQ_TOPIC", unique("contract-dlq"));
                set("KAFKA_GROUP_ID", unique("group"));
                set("KAFKA_CREATE_TOPICS", "true".into());
                set("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string());
                set("KAFKA_TOPIC_REPLICATION", "1".into());
                set("KAFKA_COMMIT_INTERVAL_MS", "100".into());
            }
            Kind::Nats => {
                set("BUS", "nats".into());
                set("NATS_URL", nats_url());
                set("NATS_STREAM", unique("CONTRACT"));
                set("NATS_SUBJECT_PREFIX", unique("contract"));
                set("NATS_PARTITIONS", PARTITIONS.to_string());
                set("NATS_CONSUMER_PREFIX", unique("processor"));
                set("NATS_ACK_WAIT_SECS", "1".into());
                // A consumer dropped without closing keeps its partitions for the pin timeout.
                set("NATS_PIN_TIMEOUT_SECS", "2".into());
                set("NATS_STANDBY_DELAY_SECS", "1".into());
            }
            Kind::Memory => {
                set("BUS", "memory".into());
            }
        }
        for (key, value) in extra {
            set(key, (*value).to_owned());
        }
        let config = Config::from_sources(&env, None)
            .context("test bus configuration")?
            .bus;
        Ok(Self {
            kind,
            config,
            memory: MemoryBus::new(PARTITIONS),
        })
    }

    /// A publisher for this bus.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        Ok(Publisher::connect(&self.config, &self.memory).await?)
    }

    /// A consumer for this bus (a new group member, or a restarted one).
    pub async fn consumer(&self) -> anyhow::Result<Consumer> {
        Ok(Consumer::connect(&self.config, &self.memory).await?)
    }
}

/// A test record: key `order-{i % keys}`, a JSON payload naming `i`, and headers including a
/// non-ASCII UTF-8 value.
pub fn record(i: usize, keys: usize) -> OutboundRecord {
    OutboundRecord {
        key: format!("order-{}", i % keys).into(),
        payload: format!(r#"{{"i":{i}}}"#).into(),
        headers: Headers::new()
            .with("fluent-event-id", format!("event-{i}"))
            .with("note", "ünïcødé ✓"),
    }
}

/// The `i` a test record carries.
pub fn index(record: &InboundRecord) -> anyhow::Result<usize> {
    let payload = std::str::from_utf8(&record.payload)?;
    payload
        .strip_prefix(r#"{"i":"#)
        .and_then(|rest| rest.strip_suffix('}'))
        .context("not a test record")?
        .parse()
        .context("not a test record")
}

/// The next record, skipping assignment changes (revocations are released at once).
pub async fn next_record(consumer: &mut Consumer) -> anyhow::Result<InboundRecord> {
    next_record_within(consumer, DEADLINE).await
}

/// [`next_record`] with another deadline.
pub async fn next_record_within(
    consumer: &mut Consumer,
    deadline: Duration,
) -> anyhow::Result<InboundRecord> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let delivery = tokio::time::timeout_at(until, consumer.next())
            .await
            .context("no record within the deadline")??;
        match delivery {
            Delivery::Record(record) => return Ok(record),
            Delivery::Assigned(_) | Delivery::Revoked(_) => {}
        }
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            bail!("{what}: not reached within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
