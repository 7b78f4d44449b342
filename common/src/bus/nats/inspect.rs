//! `processor check` on NATS: the stream, and each partition's durable consumer's pending
//! count.

use async_nats::jetstream::context::ConsumerInfoErrorKind;

use super::existing_stream;
use super::setup::consumer_name;
use crate::bus::{BusError, BusReport, Destination};
use crate::config::BusConfig;

/// See [`crate::bus::inspect::inspect`].
pub async fn inspect(config: &BusConfig) -> Result<BusReport, BusError> {
    let nats = &config.nats;
    let (_, stream) = existing_stream(config).await?;
    let mut lag = Vec::new();
    for partition in 0..u32::from(nats.partitions) {
        // A consumer not created yet has no position: the first processor creates it.
        let pending = match stream.consumer_info(consumer_name(nats, partition)).await {
            Ok(info) => Some(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0)),
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(error) => return Err(BusError::Broker(error.into())),
        };
        lag.push((partition, pending));
    }
    Ok(BusReport {
        destinations: vec![Destination {
            role: "stream (webhooks and DLQ)",
            name: nats.stream.clone(),
            partitions: u32::from(nats.partitions),
        }],
        lag,
    })
}
