//! The soak's broker, Kafka or NATS JetStream, seen the same way by the checks: per partition
//! how far the records go and how far the consumers are done, and everything on the topic and
//! in the DLQ.

use anyhow::Context as _;
use common::config::{BusConfig, KafkaConfig, NatsConfig};

/// Partitions of the soak's topic or stream.
pub(super) const PARTITIONS: u32 = 6;

/// The bus a soak runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoakBus {
    /// Kafka (tansu in `scripts/test`).
    Kafka,
    /// NATS JetStream.
    Nats,
}

/// How the soak reaches the broker the processes use.
#[derive(Debug, Clone)]
pub(super) enum Broker {
    Kafka(KafkaConfig),
    Nats(NatsConfig),
}

impl Broker {
    pub(super) fn new(config: &BusConfig, bus: SoakBus) -> Self {
        match bus {
            SoakBus::Kafka => Self::Kafka(config.kafka.clone()),
            SoakBus::Nats => Self::Nats(config.nats.clone()),
        }
    }

    /// Per partition, (the last record's position, how far the consumers are done): Kafka's
    /// end and committed offsets, JetStream's last sequence of the partition subject and the
    /// durable consumer's ack floor. Done when the second reaches the first everywhere.
    pub(super) async fn progress(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        match self {
            Self::Kafka(kafka) => {
                let kafka = kafka.clone();
                tokio::task::spawn_blocking(move || {
                    crate::kafka::ends_and_commits(&kafka, PARTITIONS)
                })
                .await?
            }
            Self::Nats(nats) => {
                let stream = crate::nats::stream(nats).await?;
                let mut progress = Vec::new();
                for partition in 0..PARTITIONS {
                    let subject = format!("{}.{partition}", nats.subject_prefix);
                    let last = match stream.get_last_raw_message_by_subject(&subject).await {
                        Ok(message) => message.sequence,
                        Err(_) => 0,
                    };
                    let done = match stream
                        .consumer_info(format!("{}-{partition}", nats.consumer_prefix))
                        .await
                    {
                        Ok(info) => info.ack_floor.stream_sequence,
                        Err(_) => 0,
                    };
                    progress.push((last, done));
                }
                Ok(progress)
            }
        }
    }

    /// Who consumes what, for a report on a stuck partition: Kafka's group as its coordinator
    /// describes it (members and their assignments); per JetStream partition consumer, what
    /// it has pending, unacknowledged and waiting.
    pub(super) async fn describe(&self) -> Vec<String> {
        let described = match self {
            Self::Kafka(kafka) => {
                let kafka = kafka.clone();
                tokio::task::spawn_blocking(move || crate::kafka::describe_group(&kafka))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result)
            }
            Self::Nats(nats) => describe_consumers(nats).await,
        };
        described
            .unwrap_or_else(|error| vec![format!("could not describe the consumers: {error:#}")])
    }

    /// Every record on the topic (`dlq`: in the DLQ) as (key, event id).
    pub(super) async fn read(&self, dlq: bool) -> anyhow::Result<Vec<(String, String)>> {
        let records = match self {
            Self::Kafka(kafka) => {
                let mut config = kafka.clone();
                if dlq {
                    config.topic = config.dlq_topic.clone();
                }
                tokio::task::spawn_blocking(move || {
                    let count: u64 = crate::kafka::ends_and_commits(&config, PARTITIONS)?
                        .iter()
                        .map(|(end, _)| end)
                        .sum();
                    crate::kafka::read_topic(
                        &config.brokers.join(","),
                        &config.topic,
                        usize::try_from(count)?,
                    )
                    .with_context(|| format!("reading {}", config.topic))
                })
                .await??
            }
            Self::Nats(nats) => {
                if dlq {
                    crate::nats::read_subject(nats, "dlq").await?
                } else {
                    let mut records = Vec::new();
                    for partition in 0..PARTITIONS {
                        records
                            .extend(crate::nats::read_subject(nats, &partition.to_string()).await?);
                    }
                    records
                }
            }
        };
        Ok(records
            .into_iter()
            .map(|record| {
                let key = String::from_utf8_lossy(&record.key).into_owned();
                let id = record
                    .headers
                    .get_str(common::bus::headers::EVENT_ID)
                    .unwrap_or_default()
                    .to_owned();
                (key, id)
            })
            .collect())
    }
}

async fn describe_consumers(nats: &NatsConfig) -> anyhow::Result<Vec<String>> {
    let stream = crate::nats::stream(nats).await?;
    let mut lines = Vec::new();
    for partition in 0..PARTITIONS {
        let name = format!("{}-{partition}", nats.consumer_prefix);
        lines.push(match stream.consumer_info(&name).await {
            Ok(info) => format!(
                "consumer {name}: pending {} unacknowledged {} waiting pulls {} redelivered {}",
                info.num_pending, info.num_ack_pending, info.num_waiting, info.num_redelivered
            ),
            Err(error) => format!("consumer {name}: {error}"),
        });
    }
    Ok(lines)
}
