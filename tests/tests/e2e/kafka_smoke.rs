//! Proves the Kafka test infrastructure does what the pipeline relies on: admin topic creation,
//! an idempotent `acks=all` producer with keys and headers, and a consumer group whose manual
//! commits decide where a restarted consumer resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
/// A header value that is not UTF-8, to prove headers are carried as bytes.
const BINARY_HEADER: &[u8] = &[0x00, 0xff, 0xfe, b'x'];

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka_brokers());
    config
}

async fn create_topic(topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config().create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new_topic], &options).await? {
        result.map_err(|(topic, code)| anyhow!("creating topic {topic}: {code}"))?;
    }
    Ok(())
}

fn producer() -> anyhow::Result<FutureProducer> {
    Ok(client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()?)
}

fn consumer(group: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Produces one record and returns the (partition, offset) the broker acknowledged.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    index: usize,
    partition: Option<i32>,
) -> anyhow::Result<(i32, i64)> {
    let key = format!("order-{}", index % 4);
    let payload = format!(r#"{{"index":{index}}}"#);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "fluent-event-id",
            value: Some(&format!("event-{index}")),
        })
        .insert(Header {
            key: "binary",
            value: Some(BINARY_HEADER),
        });
    let mut record = FutureRecord::to(topic)
        .key(&key)
        .payload(&payload)
        .headers(headers);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let delivery = producer
        .send(record, Duration::from_secs(15))
        .await
        .map_err(|(error, _)| anyhow!("producing record {index}: {error}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// What a received record says about itself, checked against what was produced.
fn index_of(message: &BorrowedMessage<'_>) -> anyhow::Result<usize> {
    let payload = std::str::from_utf8(message.payload().context("record without payload")?)?;
    let index: usize = payload
        .trim_start_matches(r#"{"index":"#)
        .trim_end_matches('}')
        .parse()
        .with_context(|| format!("unexpected payload {payload}"))?;
    ensure!(
        message.key() == Some(format!("order-{}", index % 4).as_bytes()),
        "key of {index}"
    );
    let headers = message.headers().context("record without headers")?;
    let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
    ensure!(header("fluent-event-id") == Some(format!("event-{index}").as_bytes()));
    ensure!(
        header("binary") == Some(BINARY_HEADER),
        "binary header changed"
    );
    Ok(index)
}

/// The next record; polls again after non-record events (a rebalance) until the deadline.
fn recv(consumer: &BaseConsumer) -> anyhow::Result<BorrowedMessage<'_>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no record within the deadline");
        if let Some(result) = consumer.poll(left) {
            return result.context("consumer error");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_group_resumes_from_committed_offsets() -> anyhow::Result<()> {
    let topic = unique("smoke");
    let group = unique("smoke-group");
    create_topic(&topic).await?;
    let producer = producer()?;

    let mut partition_of_key = BTreeMap::new();
    for index in 0..12 {
        let (partition, _) = produce(&producer, &topic, index, None).await?;
        let previous = partition_of_key.insert(index % 4, partition);
        ensure!(
            previous.is_none_or(|p| p == partition),
            "one key landed on two partitions"
        );
    }

    // First consumer: read everything, but commit only past the records with index < 8.
    let first = consumer(&group, &topic)?;
    let mut next_offsets = BTreeMap::new();
    let mut seen = BTreeSet::new();
    while seen.len() < 12 {
        let message = recv(&first)?;
        let index = index_of(&message)?;
        ensure!(
            seen.insert(index),
            "record {index} delivered twice to one consumer"
        );
        if index < 8 {
            let next = next_offsets.entry(message.partition()).or_insert(0);
            *next = (*next).max(message.offset() + 1);
        }
    }
    let mut commit = TopicPartitionList::new();
    for (partition, offset) in &next_offsets {
        commit.add_partition_offset(&topic, *partition, Offset::Offset(*offset))?;
    }
    first.commit(&commit, CommitMode::Sync)?;
    let committed = first.committed(Duration::from_secs(10))?;
    for element in commit.elements() {
        let stored = committed
            .find_partition(&topic, element.partition())
            .context("committed")?;
        ensure!(
            stored.offset() == element.offset(),
            "broker kept {:?} for partition {}, committed {:?}",
            stored.offset(),
            element.partition(),
            element.offset()
        );
    }
    // A TopicPartitionList holds references into its consumer's partitions: destroying the
    // consumer while one is alive makes librdkafka's shutdown wait for them forever.
    drop((commit, committed));
    drop(first);

    // A sentinel at the end of every partition tells the second consumer it has seen it all.
    let mut sentinels = BTreeSet::new();
    for partition in 0..PARTITIONS {
        sentinels
            .insert(produce(&producer, &topic, 100 + partition as usize, Some(partition)).await?);
    }

    let second = consumer(&group, &topic)?;
    let mut resumed = BTreeSet::new();
    while !sentinels.is_empty() {
        let message = recv(&second)?;
        let index = index_of(&message)?;
        ensure!(
            index >= 8,
            "record {index} came back although its offset was committed"
        );
        resumed.insert(index);
        sentinels.remove(&(message.partition(), message.offset()));
    }
    let expected: BTreeSet<usize> = (8..12).chain(100..100 + PARTITIONS as usize).collect();
    ensure!(
        resumed == expected,
        "resumed with {resumed:?}, expected {expected:?}"
    );
    Ok(())
}

/// Managed Kafka services (Confluent Cloud, MSK, Event Hubs) take only TLS with SASL: the
/// bundled librdkafka must be built with TLS and SCRAM, or `KAFKA_PROPERTIES` saying so stops
/// every client at creation ("OpenSSL not available at build time").
#[tokio::test(flavor = "multi_thread")]
async fn kafka_clients_accept_tls_and_sasl_settings() -> anyhow::Result<()> {
    use e2e_tests::bus::{Kind, TestBus};
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let properties = format!(
            "security.protocol=SASL_SSL,sasl.mechanism={mechanism},sasl.username=svc,\
             sasl.password=secret,ssl.endpoint.identification.algorithm=https"
        );
        let bus = TestBus::new(
            Kind::Kafka,
            &[
                ("KAFKA_CREATE_TOPICS", "false"),
                ("KAFKA_PROPERTIES", &properties),
            ],
        )?;
        bus.publisher()
            .await
            .with_context(|| format!("a TLS + SASL {mechanism} producer"))?;
        let consumer = bus
            .consumer()
            .await
            .with_context(|| format!("a TLS + SASL {mechanism} consumer"))?;
        // Closed, not dropped: a dropped consumer's poll thread goes on closing on its own,
        // and librdkafka still running TLS when the test process exits can crash it.
        tokio::time::timeout(e2e_tests::DEADLINE, consumer.close())
            .await
            .context("the consumer did not close")??;
    }
    Ok(())
}
