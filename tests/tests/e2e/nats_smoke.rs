//! Proves the NATS test infrastructure: a JetStream stream, publishes acknowledged by the
//! server, and a durable pull consumer with explicit acks that redelivers only what was not
//! acknowledged.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use e2e_tests::{DEADLINE, nats_url, unique};
use futures::StreamExt as _;

/// async-nats reports some errors as boxed trait objects, which `?` cannot turn into anyhow.
fn boxed(error: Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error {
    anyhow::anyhow!(error)
}

async fn fetch(consumer: &PullConsumer, count: usize) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .fetch()
        .max_messages(count)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while messages.len() < count {
        let next = tokio::time::timeout_at(deadline, batch.next())
            .await
            .context("fetch deadline")?;
        match next {
            Some(message) => messages.push(message.map_err(boxed)?),
            None => {
                batch = consumer
                    .fetch()
                    .max_messages(count - messages.len())
                    .messages()
                    .await?;
            }
        }
    }
    Ok(messages)
}

fn index_of(message: &jetstream::Message) -> anyhow::Result<usize> {
    let index: usize = std::str::from_utf8(&message.payload)?.parse()?;
    let headers = message
        .headers
        .as_ref()
        .context("message without headers")?;
    let event_id = headers.get("fluent-event-id").context("header lost")?;
    ensure!(
        event_id.as_str() == format!("event-{index}"),
        "header of {index} changed"
    );
    Ok(index)
}

#[tokio::test]
async fn jetstream_redelivers_only_unacknowledged_messages() -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url())
        .await
        .context("connecting to TEST_NATS_URL")?;
    let js = jetstream::new(client);
    let prefix = unique("smoke");
    let stream = js
        .create_stream(stream::Config {
            name: unique("SMOKE"),
            subjects: vec![format!("{prefix}.*")],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await?;

    for index in 0..5 {
        let mut headers = HeaderMap::new();
        headers.insert("fluent-event-id", format!("event-{index}").as_str());
        let ack = js
            .publish_with_headers(
                format!("{prefix}.{}", index % 2),
                headers,
                index.to_string().into(),
            )
            .await?
            .await?;
        ensure!(
            ack.sequence == index as u64 + 1,
            "server stored {index} at {}",
            ack.sequence
        );
    }

    let config = pull::Config {
        durable_name: Some("processor".into()),
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    let consumer: PullConsumer = stream.create_consumer(config).await?;
    for message in fetch(&consumer, 5).await? {
        let index = index_of(&message)?;
        if index < 3 {
            message.double_ack().await.map_err(boxed)?;
        } else {
            message.ack_with(AckKind::Nak(None)).await.map_err(boxed)?;
        }
    }
    drop(consumer);

    // The durable consumer, looked up again as a restarted processor would.
    let consumer: PullConsumer = stream.get_consumer("processor").await.map_err(boxed)?;
    let redelivered = fetch(&consumer, 2).await?;
    let mut indexes = BTreeSet::new();
    for message in &redelivered {
        indexes.insert(index_of(message)?);
        ensure!(
            message.info().map_err(boxed)?.delivered == 2,
            "not a redelivery"
        );
        message.double_ack().await.map_err(boxed)?;
    }
    ensure!(indexes == BTreeSet::from([3, 4]), "redelivered {indexes:?}");
    let mut consumer = consumer;
    let info = consumer.info().await?;
    ensure!(
        info.num_pending == 0 && info.num_ack_pending == 0,
        "left over: {info:?}"
    );

    js.delete_stream(&stream.cached_info().config.name).await?;
    Ok(())
}
