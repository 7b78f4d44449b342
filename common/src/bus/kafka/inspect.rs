//! `processor check` on Kafka: the two topics' metadata, and the group's committed offsets
//! against the high watermarks.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{classify, client_config, partitions_of};
use crate::bus::{BusError, BusReport, Destination};
use crate::config::BusConfig;

/// See [`crate::bus::inspect::inspect`].
pub async fn inspect(config: &BusConfig) -> Result<BusReport, BusError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || inspect_blocking(&config))
        .await
        .map_err(|error| BusError::Broker(error.into()))?
}

fn inspect_blocking(config: &BusConfig) -> Result<BusReport, BusError> {
    let kafka = &config.kafka;
    let timeout = config.publish_timeout.max(Duration::from_secs(5));
    // A plain client with the group id: OffsetFetch does not join the group.
    let client: BaseConsumer = client_config(kafka)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|error| BusError::Setup(error.into()))?;
    let mut destinations = Vec::new();
    let mut topic_partitions = Vec::new();
    for (role, topic) in [
        ("webhook topic", &kafka.topic),
        ("DLQ topic", &kafka.dlq_topic),
    ] {
        let partitions = partitions_of(&client, topic, timeout)?;
        if role == "webhook topic" {
            topic_partitions.clone_from(&partitions);
        }
        destinations.push(Destination {
            role,
            name: topic.clone(),
            partitions: u32::try_from(partitions.len()).unwrap_or(u32::MAX),
        });
    }
    let lag = {
        // Scoped: partition lists must be gone before their client is dropped.
        let mut list = TopicPartitionList::new();
        for partition in &topic_partitions {
            list.add_partition(&kafka.topic, *partition);
        }
        let committed = client
            .committed_offsets(list, timeout)
            .map_err(|error| classify(error, &kafka.topic, timeout))?;
        let mut lag = Vec::new();
        for partition in topic_partitions {
            let (_, high) = client
                .fetch_watermarks(&kafka.topic, partition, timeout)
                .map_err(|error| classify(error, &kafka.topic, timeout))?;
            let behind = match committed
                .find_partition(&kafka.topic, partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => Some(u64::try_from(high - offset).unwrap_or(0)),
                _ => None,
            };
            lag.push((u32::try_from(partition).unwrap_or(0), behind));
        }
        lag
    };
    Ok(BusReport { destinations, lag })
}
