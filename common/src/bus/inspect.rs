//! What `processor check` asks of the bus: do the webhook topic and the DLQ (Kafka topics,
//! or the NATS stream) exist, and how far behind is the consumer group. Creates nothing.

use super::BusError;
use crate::config::{BusConfig, BusKind};

/// A topic or stream that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// What it is for (`webhook topic`, `DLQ topic`, `stream`).
    pub role: &'static str,
    /// Its name.
    pub name: String,
    /// Its partitions (NATS: the partition subjects configured).
    pub partitions: u32,
}

/// The bus as `processor check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusReport {
    /// The webhook topic and the DLQ (NATS: the stream holding both).
    pub destinations: Vec<Destination>,
    /// Per partition of the webhook topic, the records the group has yet to finish; `None`
    /// where it has no position there yet (Kafka: nothing committed; NATS: no consumer).
    pub lag: Vec<(u32, Option<u64>)>,
}

/// Looks at the bus `config` names. A missing topic or stream is
/// [`BusError::UnknownDestination`].
pub async fn inspect(config: &BusConfig) -> Result<BusReport, BusError> {
    match config.kind {
        #[cfg(feature = "kafka")]
        BusKind::Kafka => super::kafka::inspect(config).await,
        #[cfg(not(feature = "kafka"))]
        BusKind::Kafka => Err(BusError::not_built("kafka")),
        #[cfg(feature = "nats")]
        BusKind::Nats => super::nats::inspect(config).await,
        #[cfg(not(feature = "nats"))]
        BusKind::Nats => Err(BusError::not_built("nats")),
        BusKind::Memory => Ok(BusReport {
            destinations: Vec::new(),
            lag: Vec::new(),
        }),
    }
}
