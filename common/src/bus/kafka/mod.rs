//! The Kafka bus (`rdkafka`): an idempotent `acks=all` publisher and a group consumer that
//! commits only acknowledged prefixes and drains on revoke.

mod admin;
mod consumer;
mod delivery;
mod dlq;
mod inspect;
mod publisher;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::warn;

pub use admin::ensure_topics;
pub use consumer::KafkaConsumer;
pub use dlq::KafkaDlq;
pub use inspect::inspect;
pub use publisher::KafkaPublisher;

use super::BusError;
use crate::config::KafkaConfig;

/// Settings the delivery guarantees rest on; `KAFKA_PROPERTIES` cannot weaken them.
const PROTECTED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// The client settings shared by producer, consumer and admin client: brokers, then the
/// operator's `KAFKA_PROPERTIES` (SASL, TLS, tuning).
fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", config.brokers.join(","));
    for (key, value) in config.properties.expose() {
        if PROTECTED.contains(&key.as_str()) {
            warn!(property = %key, "KAFKA_PROPERTIES may not change this property; ignored");
            continue;
        }
        client.set(key, value);
    }
    client
}

/// The headers of a consumed message, byte for byte (a header without a value reads as empty).
fn message_headers(message: &rdkafka::message::BorrowedMessage<'_>) -> crate::bus::Headers {
    use rdkafka::message::{Headers as _, Message as _};
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        bytes::Bytes::copy_from_slice(header.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Record headers as librdkafka takes them.
fn owned_headers(headers: &crate::bus::Headers) -> rdkafka::message::OwnedHeaders {
    headers.iter().fold(
        rdkafka::message::OwnedHeaders::new_with_capacity(headers.len()),
        |owned, (key, value)| {
            owned.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_ref()),
            })
        },
    )
}

/// The partition ids of `topic` as the broker describes it; a topic it does not know (or
/// reports without partitions) is [`BusError::UnknownDestination`].
fn partitions_of(
    client: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, BusError> {
    use rdkafka::consumer::Consumer as _;
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| classify(error, topic, timeout))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|described| described.name() == topic && described.error().is_none())
        .flat_map(|described| described.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(BusError::UnknownDestination {
            name: topic.to_owned(),
            source: "the broker reports no partitions for it".into(),
        });
    }
    Ok(partitions)
}

/// Maps a client error to the bus contract's classes.
fn classify(error: KafkaError, destination: &str, deadline: Duration) -> BusError {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(Code::MessageTimedOut) => BusError::Timeout(deadline),
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => {
            BusError::TooLarge(error.into())
        }
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition) => {
            BusError::UnknownDestination {
                name: destination.to_owned(),
                source: error.into(),
            }
        }
        Some(
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication,
        ) => BusError::Unauthorized(error.into()),
        Some(
            Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::NetworkException
            | Code::Resolve,
        ) => BusError::Unavailable(error.into()),
        _ => match error {
            KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => {
                BusError::Setup(error.into())
            }
            other => BusError::Broker(other.into()),
        },
    }
}
