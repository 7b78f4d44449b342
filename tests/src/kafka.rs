//! Kafka helpers: reading what a group has committed, as the broker reports it.

use std::time::Duration;

use anyhow::Context as _;
use common::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The offset the group of `config` has committed for `partition` of its topic (0 if none).
pub fn committed_offset(config: &KafkaConfig, partition: u32) -> anyhow::Result<u64> {
    // A plain client with the group id: OffsetFetch does not join the group.
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", &config.group_id)
        .create()?;
    let offset = {
        // Scoped: partition lists must be gone before their client is dropped.
        let mut list = TopicPartitionList::new();
        list.add_partition(&config.topic, i32::try_from(partition)?);
        let committed = client.committed_offsets(list, Duration::from_secs(10))?;
        let element = committed
            .find_partition(&config.topic, i32::try_from(partition)?)
            .context("partition missing from the answer")?;
        element.offset()
    };
    Ok(match offset {
        Offset::Offset(offset) => u64::try_from(offset)?,
        _ => 0,
    })
}
