//! Topic creation at start-up (`KAFKA_CREATE_TOPICS=true`), for environments where the
//! pipeline owns its topics.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use super::{classify, client_config};
use crate::bus::BusError;
use crate::config::BusConfig;

/// Creates the topic and the DLQ topic unless they exist. Idempotent: "already exists" is
/// success, so every instance may run it at start.
pub async fn ensure_topics(config: &BusConfig) -> Result<(), BusError> {
    let kafka = &config.kafka;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .map_err(|error| BusError::Setup(error.into()))?;
    let replication = i32::from(kafka.topic_replication);
    let partitions = i32::from(kafka.topic_partitions);
    let topics = [&kafka.topic, &kafka.dlq_topic]
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)));
    let options = AdminOptions::new().operation_timeout(Some(config.publish_timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|error| classify(error, &kafka.topic, config.publish_timeout))?;
    for result in results {
        match result {
            Ok(topic) => info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(classify(
                    rdkafka::error::KafkaError::AdminOp(code),
                    &topic,
                    config.publish_timeout,
                ));
            }
        }
    }
    Ok(())
}
