//! NATS helpers: reading a subject of a test stream as any other consumer would.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use common::bus::{Headers, OutboundRecord};
use common::config::NatsConfig;
use futures::StreamExt as _;

/// The test stream.
pub async fn stream(config: &NatsConfig) -> anyhow::Result<jetstream::stream::Stream> {
    let client = async_nats::connect(config.urls[0].expose().as_str()).await?;
    Ok(jetstream::new(client).get_stream(&config.stream).await?)
}

/// Every message on `<prefix>.<suffix>` of the test stream, via an ephemeral consumer.
pub async fn read_subject(
    config: &NatsConfig,
    suffix: &str,
) -> anyhow::Result<Vec<OutboundRecord>> {
    let stream = stream(config).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("{}.{suffix}", config.subject_prefix),
            ..Default::default()
        })
        .await?;
    let mut records = Vec::new();
    // A fetch ends at its expiry when fewer messages exist: everything there is, once a fetch
    // comes back short.
    loop {
        let before = records.len();
        read_batch(&consumer, &mut records).await?;
        if records.len() - before < BATCH {
            return Ok(records);
        }
    }
}

const BATCH: usize = 1000;

async fn read_batch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    records: &mut Vec<OutboundRecord>,
) -> anyhow::Result<()> {
    let mut batch = consumer
        .fetch()
        .max_messages(BATCH)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    while let Some(message) = batch.next().await {
        let message = message.map_err(|error| anyhow::anyhow!(error))?;
        let mut headers = Headers::new();
        let mut key = bytes::Bytes::new();
        for (name, values) in message.headers.iter().flat_map(|map| map.iter()) {
            for value in values {
                let value = bytes::Bytes::copy_from_slice(value.as_str().as_bytes());
                match name.as_ref() {
                    common::bus::headers::NATS_KEY => key = value,
                    "Nats-Msg-Id" => {}
                    other => headers.insert(other, value),
                }
            }
        }
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
        records.push(OutboundRecord {
            key,
            payload: message.payload.clone(),
            headers,
        });
    }
    Ok(())
}
