//! `processor check` on NATS: the stream, and each partition's durable consumer's pending
//! count.

use async_nats::jetstream;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};

use super::connect_only;
use super::setup::consumer_name;
use crate::bus::{BusError, BusReport, Destination};
use crate::config::BusConfig;

/// See [`crate::bus::inspect::inspect`].
pub async fn inspect(config: &BusConfig) -> Result<BusReport, BusError> {
    let nats = &config.nats;
    let (_, context) = connect_only(config).await?;
    let stream = context
        .get_stream(&nats.stream)
        .await
        .map_err(|error| match error.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                BusError::UnknownDestination {
                    name: nats.stream.clone(),
                    source: error.into(),
                }
            }
            _ => BusError::Broker(error.into()),
        })?;
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
