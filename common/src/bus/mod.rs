//! The message bus between the stages: the only module that knows Kafka or NATS exist.
//!
//! `ingest` publishes through a [`Publisher`] and `processor` consumes through a [`Consumer`];
//! both pick the implementation from `BUS`. The contract every implementation keeps:
//!
//! - **Publish** returns only when the broker has durably acknowledged the record, or fails
//!   within the publish deadline with a [`BusError`] that says whether retrying may help.
//! - **Consume** yields records with their position, key, headers and payload, and reports
//!   assignment changes; a [`Revocation`] holds the hand-over until the engine has drained.
//! - **Acknowledge** in any order: what is committed (Kafka, in-memory) is always the first
//!   offset of each partition not yet acknowledged, so nothing unacknowledged is ever skipped.
//! - **Dead-letter** a record to the DLQ destination with its key, value and headers kept and
//!   the `dlq-*` headers added.

// The helpers below the broker clients (trackers, status stamps) go unused in a build without
// them (the sandbox's, the schemas').
#![cfg_attr(not(all(feature = "kafka", feature = "nats")), allow(dead_code))]

// Reading the DLQ back needs a broker client: the in-memory bus has none to read from.
#[cfg(any(feature = "kafka", feature = "nats"))]
pub mod dlq;
pub mod headers;
pub mod inspect;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
mod metadata;
mod murmur2;
#[cfg(feature = "nats")]
pub mod nats;
mod record;
mod status;
mod tracker;

use std::time::{Duration, SystemTime};

pub use murmur2::{murmur2, partition_for_key};
pub use record::{AckHandle, Headers, InboundRecord, OutboundRecord, Position, StoredRecord};
pub use status::{BusReport, ConsumerStatus, Destination};

use crate::config::{BusConfig, BusKind};

/// A boxed error from a broker client, kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong on the bus. [`BusError::is_retryable`] drives retry versus give up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker did not acknowledge within the deadline.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker cannot be reached.
    #[error("the broker is unavailable")]
    Unavailable(#[source] BoxError),
    /// The record is larger than the broker accepts.
    #[error("the record is larger than the broker accepts")]
    TooLarge(#[source] BoxError),
    /// The topic or stream does not exist.
    #[error("unknown topic or stream `{name}`")]
    UnknownDestination {
        /// The topic or stream.
        name: String,
        /// The broker's error.
        #[source]
        source: BoxError,
    },
    /// The broker refused our credentials or permissions.
    #[error("the broker refused access")]
    Unauthorized(#[source] BoxError),
    /// The client could not be created (bad settings).
    #[error("cannot set up the bus client")]
    Setup(#[source] BoxError),
    /// Committing offsets failed; it is retried, and reported.
    #[error("committing offsets failed")]
    Commit(#[source] BoxError),
    /// Another broker error, assumed transient.
    #[error("broker error")]
    Broker(#[source] BoxError),
    /// The record cannot be carried by this bus (NATS: a key or header that is not UTF-8).
    #[error("the bus cannot carry this record: {0}")]
    Invalid(String),
    /// The consumer has been closed.
    #[error("the consumer is closed")]
    Closed,
}

impl BusError {
    /// Whether the same operation may succeed later (timeouts, unavailable brokers, transient
    /// broker errors), as opposed to failing again the same way (bad record, bad setup).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unavailable(_) | Self::Commit(_) | Self::Broker(_) => true,
            Self::TooLarge(_)
            | Self::UnknownDestination { .. }
            | Self::Unauthorized(_)
            | Self::Setup(_)
            | Self::Invalid(_)
            | Self::Closed => false,
        }
    }

    #[cfg(feature = "nats")]
    pub(crate) fn nats_ack(error: impl Into<BoxError>) -> Self {
        Self::Broker(error.into())
    }

    /// `BUS` names a broker this build has no client for.
    #[allow(dead_code)] // Unused when both clients are built.
    fn not_built(feature: &str) -> Self {
        Self::Setup(
            format!("this build has no {feature} client (the `{feature}` feature of `common`)")
                .into(),
        )
    }
}

/// Whether a record failed for good or ran out of attempts (the `dlq-error-class` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Failed every attempt with errors that might have passed.
    Transient,
    /// Failed with an error that no retry can fix.
    Permanent,
}

impl FailureClass {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// Why a record goes to the DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Transient (attempts exhausted) or permanent.
    pub class: FailureClass,
    /// The error, for people reading the DLQ: never a secret.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// The DLQ record for `record`: same key, value and headers, plus the `dlq-*` headers.
pub fn dead_letter_record(record: &InboundRecord, failure: &DeadLetter) -> OutboundRecord {
    let mut headers = record.headers.clone();
    headers.insert(headers::DLQ_ERROR_CLASS, failure.class.as_str());
    headers.insert(headers::DLQ_ERROR, failure.error.clone());
    headers.insert(headers::DLQ_ATTEMPTS, failure.attempts.to_string());
    headers.insert(headers::DLQ_SOURCE_TOPIC, record.source.to_string());
    headers.insert(
        headers::DLQ_SOURCE_PARTITION,
        record.position.partition.to_string(),
    );
    headers.insert(
        headers::DLQ_SOURCE_OFFSET,
        record.position.offset.to_string(),
    );
    headers.insert(headers::DLQ_FAILED_AT, rfc3339_now());
    OutboundRecord {
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers,
    }
}

/// The OpenTelemetry `messaging.system` and `messaging.destination.name` of the webhook
/// records on the configured bus: the Kafka topic, or the NATS stream.
pub fn messaging_destination(config: &crate::config::BusConfig) -> (&'static str, String) {
    match config.kind {
        BusKind::Kafka => ("kafka", config.kafka.topic.clone()),
        BusKind::Nats => ("nats", config.nats.stream.clone()),
        BusKind::Memory => ("memory", config.kafka.topic.clone()),
    }
}

/// The current time in RFC 3339 (UTC, milliseconds), as the `received-at` and
/// `dlq-failed-at` headers carry it.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a consumer yields.
// Records are by far the most common variant, so boxing them to shrink the rare ones would
// only add an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Delivery {
    /// A record to process.
    Record(InboundRecord),
    /// Partitions now owned by this consumer.
    Assigned(Vec<u32>),
    /// Partitions being taken away. The hand-over waits until the [`Revocation`] is dropped
    /// (or the drain deadline passes), then what is acknowledged is committed.
    Revoked(Revocation),
}

/// Partitions being revoked; drop it (or call [`Revocation::drained`]) once in-flight work on
/// them is finished.
#[derive(Debug)]
pub struct Revocation {
    /// The partitions going away.
    pub partitions: Vec<u32>,
    /// The group already gave them to other members (this one missed its session or poll
    /// deadline): nothing waits for a drain, and work on them must stop at once.
    pub lost: bool,
    _drained: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Revocation {
    pub(crate) fn new(
        partitions: Vec<u32>,
        lost: bool,
        drained: Option<std::sync::mpsc::SyncSender<()>>,
    ) -> Self {
        Self {
            partitions,
            lost,
            _drained: drained,
        }
    }

    /// Says in-flight work on these partitions is finished (same as dropping it): the bus
    /// commits what was acknowledged and lets the partitions go.
    pub fn drained(self) {}
}

/// Publishes records to the configured bus. Cheap to clone; clones share one connection.
// One per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Publisher {
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaPublisher),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(nats::NatsPublisher),
    /// In-memory.
    Memory(memory::MemoryBus),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "Publisher::Kafka",
            #[cfg(feature = "nats")]
            Self::Nats(_) => "Publisher::Nats",
            Self::Memory(_) => "Publisher::Memory",
        })
    }
}

impl Publisher {
    /// Connects the bus `config` names; `memory` is the process's in-memory bus, used when
    /// `BUS=memory`.
    pub async fn connect(config: &BusConfig, memory: &memory::MemoryBus) -> Result<Self, BusError> {
        Ok(match config.kind {
            #[cfg(feature = "kafka")]
            BusKind::Kafka => Self::Kafka(kafka::KafkaPublisher::connect(config).await?),
            #[cfg(not(feature = "kafka"))]
            BusKind::Kafka => return Err(BusError::not_built("kafka")),
            #[cfg(feature = "nats")]
            BusKind::Nats => Self::Nats(nats::NatsPublisher::connect(config).await?),
            #[cfg(not(feature = "nats"))]
            BusKind::Nats => return Err(BusError::not_built("nats")),
            BusKind::Memory => Self::Memory(memory.clone()),
        })
    }

    /// Publishes `record` and returns where the broker stored it, once it acknowledged.
    pub async fn publish(&self, record: OutboundRecord) -> Result<Position, BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(publisher) => publisher.publish(record).await,
            #[cfg(feature = "nats")]
            Self::Nats(publisher) => publisher.publish(record).await,
            Self::Memory(bus) => Ok(bus.publish(record)),
        }
    }

    /// Whether the broker answers now (for readiness probes): Kafka fetches the topic's
    /// metadata, NATS checks its connection; in-memory is always ready.
    pub async fn check_ready(&self) -> Result<(), BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(publisher) => publisher.check_ready().await,
            #[cfg(feature = "nats")]
            Self::Nats(publisher) => publisher.check_ready(),
            Self::Memory(_) => Ok(()),
        }
    }

    /// Publishes `record` to the DLQ with the `dlq-*` headers, once the broker acknowledged.
    pub async fn dead_letter(
        &self,
        record: &InboundRecord,
        failure: &DeadLetter,
    ) -> Result<Position, BusError> {
        let letter = dead_letter_record(record, failure);
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(publisher) => publisher.publish_dlq(letter).await,
            #[cfg(feature = "nats")]
            Self::Nats(publisher) => publisher.publish_dlq(letter).await,
            Self::Memory(bus) => Ok(bus.publish_dlq(letter)),
        }
    }
}

/// Consumes records from the configured bus.
pub enum Consumer {
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConsumer),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(nats::NatsConsumer),
    /// In-memory.
    Memory(memory::MemoryConsumer),
}

impl Consumer {
    /// Joins the bus `config` names as a consumer (Kafka: the consumer group; NATS: the owned
    /// partitions' durable consumers; in-memory: all partitions of `memory`).
    pub async fn connect(config: &BusConfig, memory: &memory::MemoryBus) -> Result<Self, BusError> {
        Ok(match config.kind {
            #[cfg(feature = "kafka")]
            BusKind::Kafka => Self::Kafka(kafka::KafkaConsumer::connect(config)?),
            #[cfg(not(feature = "kafka"))]
            BusKind::Kafka => return Err(BusError::not_built("kafka")),
            #[cfg(feature = "nats")]
            BusKind::Nats => Self::Nats(nats::NatsConsumer::connect(config).await?),
            #[cfg(not(feature = "nats"))]
            BusKind::Nats => return Err(BusError::not_built("nats")),
            BusKind::Memory => Self::Memory(memory.consumer(&config.kafka.group_id)),
        })
    }

    /// The next record or assignment change. Keep calling it (or
    /// [`Consumer::next_change_or_record`]) while work is in flight: a Kafka rebalance waits
    /// for the [`Revocation`] to be dropped (at most `BUS_DRAIN_TIMEOUT_MS`). Records of a
    /// revoked partition still held afterwards are no longer current
    /// ([`AckHandle::is_current`]); drop them unacknowledged, the next owner gets them again.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        self.next_change_or_record(true).await
    }

    /// The next assignment change, or (with `records`) the next record, changes first. An
    /// engine too full to take records still asks for changes: a revocation must reach it
    /// ahead of the records already fetched, and however full it is.
    pub async fn next_change_or_record(&mut self, records: bool) -> Result<Delivery, BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(consumer) => consumer.next(records).await,
            #[cfg(feature = "nats")]
            Self::Nats(consumer) => consumer.next(records).await,
            Self::Memory(consumer) => consumer.next(records).await,
        }
    }

    /// A handle on the consumer's poll age and per-partition lag, for health and metrics; it
    /// stays valid while the consumer is used elsewhere.
    pub fn status(&self) -> ConsumerStatus {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(consumer) => consumer.status(),
            #[cfg(feature = "nats")]
            Self::Nats(consumer) => consumer.status(),
            Self::Memory(consumer) => consumer.status(),
        }
    }

    /// Commits what is acknowledged now, rather than at the next periodic commit. NATS acks
    /// are final when sent, so there it only waits for nothing.
    pub async fn commit(&mut self) -> Result<(), BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(consumer) => consumer.commit().await,
            #[cfg(feature = "nats")]
            Self::Nats(_) => Ok(()),
            Self::Memory(consumer) => {
                consumer.commit();
                Ok(())
            }
        }
    }

    /// Commits what is acknowledged and leaves (the group, the subscriptions).
    pub async fn close(self) -> Result<(), BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Self::Kafka(consumer) => consumer.close().await,
            #[cfg(feature = "nats")]
            Self::Nats(consumer) => consumer.close().await,
            Self::Memory(consumer) => {
                drop(consumer);
                Ok(())
            }
        }
    }
}
