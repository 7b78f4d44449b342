//! What `processor check` asks of the bus: do the webhook topic and the DLQ (Kafka topics,
//! or the NATS stream) exist, and how far behind is the consumer group ([`BusReport`]).
//! Creates nothing.

use super::{BusError, BusReport};
use crate::config::{BusConfig, BusKind};

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
