//! Kafka helpers the benchmarks share: fresh topics and realistic keyed records.

use std::time::Duration;

use common::bus::{Headers, OutboundRecord};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::webhook_body;

/// Creates a topic with a fresh name and `partitions` partitions; returns its name.
pub async fn create_topic(brokers: &str, partitions: i32) -> anyhow::Result<String> {
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topic = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new_topic], &options).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(topic)
}

/// Record `i` as the gateway publishes it: a ~600-byte webhook keyed by one of `keys` order
/// refs, with the gateway's headers.
pub fn webhook_record(i: usize, keys: usize) -> OutboundRecord {
    OutboundRecord {
        key: format!("HD_{:08}", i % keys).into(),
        payload: webhook_body(i),
        headers: Headers::new()
            .with("fluent-event-id", uuid::Uuid::new_v4().to_string())
            .with(
                "fluent-event-name",
                "fc.connect.order.webhook.order-status-update",
            )
            .with("fluent-account-id", "ACME")
            .with("received-at", "2026-11-28T09:00:00.000Z"),
    }
}

/// How many records `topic` holds: the sum of its partitions' high minus low watermarks.
/// Blocking (librdkafka's metadata calls are).
pub fn records_held(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut held = 0;
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        held += usize::try_from(high - low).unwrap_or_default();
    }
    Ok(held)
}
