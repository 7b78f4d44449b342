//! The NATS JetStream bus: one stream, subjects `<prefix>.<partition>` with the partition
//! chosen by Kafka's murmur2 of the key, and one durable pull consumer per owned partition with
//! explicit acks. The DLQ is subject `<prefix>.dlq` in the same stream.
//!
//! NATS messages have no key field, so the key travels in the `bus-key` header; keys and
//! header values must be UTF-8 here (order refs and our headers are). NATS keeps no order among
//! headers of different names; values arrive byte for byte.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::record::AckInner;
use super::{
    AckHandle, BusError, ConsumerStatus, Delivery, Headers, InboundRecord, OutboundRecord,
    Position, headers, partition_for_key,
};
use crate::config::{BusConfig, NatsConfig};

/// Records buffered between the partition tasks and the engine.
const CHANNEL_CAPACITY: usize = 1024;

async fn connect(config: &BusConfig) -> Result<(async_nats::Client, jetstream::Context), BusError> {
    let nats = &config.nats;
    let urls: Vec<_> = nats
        .urls
        .iter()
        .map(|url| url.expose().as_str().to_owned())
        .collect();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(config.publish_timeout)
        .connect(urls.join(","))
        .await
        .map_err(|error| match error.kind() {
            async_nats::ConnectErrorKind::Authentication
            | async_nats::ConnectErrorKind::AuthorizationViolation => {
                BusError::Unauthorized(error.into())
            }
            async_nats::ConnectErrorKind::ServerParse | async_nats::ConnectErrorKind::Tls => {
                BusError::Setup(error.into())
            }
            _ => BusError::Unavailable(error.into()),
        })?;
    let context = jetstream::new(client.clone());
    ensure_stream(&context, nats).await?;
    Ok((client, context))
}

/// Creates the stream, or updates it to this configuration: idempotent, so every instance
/// runs it at start.
async fn ensure_stream(context: &jetstream::Context, nats: &NatsConfig) -> Result<(), BusError> {
    let config = stream::Config {
        name: nats.stream.clone(),
        subjects: vec![format!("{}.*", nats.subject_prefix)],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    context
        .create_or_update_stream(config)
        .await
        .map_err(|error| match error.kind() {
            CreateStreamErrorKind::TimedOut => BusError::Unavailable(error.into()),
            _ => BusError::Setup(error.into()),
        })?;
    Ok(())
}

fn subject(prefix: &str, partition: u32) -> String {
    format!("{prefix}.{partition}")
}

/// Publishes to the partition subjects and the DLQ subject. Clones share one connection.
#[derive(Clone)]
pub struct NatsPublisher {
    context: jetstream::Context,
    prefix: Arc<str>,
    partitions: u32,
    deadline: Duration,
}

impl NatsPublisher {
    /// Connects and makes sure the stream exists.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        Ok(Self {
            context: connect(config).await?.1,
            prefix: config.nats.subject_prefix.as_str().into(),
            partitions: u32::from(config.nats.partitions),
            deadline: config.publish_timeout,
        })
    }

    /// Publishes to the key's partition subject; returns once the stream stored it.
    pub async fn publish(&self, record: OutboundRecord) -> Result<Position, BusError> {
        let partition = partition_for_key(&record.key, self.partitions);
        let sequence = self
            .send(subject(&self.prefix, partition), record, "")
            .await?;
        Ok(Position {
            partition,
            offset: sequence,
        })
    }

    /// Whether the connection to the server is up.
    pub fn check_ready(&self) -> Result<(), BusError> {
        match self.context.client().connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Unavailable(
                format!("NATS connection {state}").into(),
            )),
        }
    }

    /// Publishes to `<prefix>.dlq`.
    pub async fn publish_dlq(&self, record: OutboundRecord) -> Result<Position, BusError> {
        // Its own id space: the dead letter carries the original's event id, and the server
        // would otherwise drop it as a duplicate of the original.
        let sequence = self
            .send(format!("{}.dlq", self.prefix), record, "dlq:")
            .await?;
        Ok(Position {
            partition: 0,
            offset: sequence,
        })
    }

    async fn send(
        &self,
        subject: String,
        record: OutboundRecord,
        id_prefix: &str,
    ) -> Result<u64, BusError> {
        let headers = to_nats_headers(&record, id_prefix)?;
        let publish = async {
            let ack = self
                .context
                .publish_with_headers(subject, headers, record.payload)
                .await
                .map_err(|error| classify_publish(error.kind(), error.into(), self.deadline))?;
            ack.await
                .map_err(|error| classify_publish(error.kind(), error.into(), self.deadline))
        };
        let ack = tokio::time::timeout(self.deadline, publish)
            .await
            .map_err(|_| BusError::Timeout(self.deadline))??;
        Ok(ack.sequence)
    }
}

fn classify_publish(
    kind: PublishErrorKind,
    error: super::BoxError,
    deadline: Duration,
) -> BusError {
    match kind {
        PublishErrorKind::TimedOut => BusError::Timeout(deadline),
        PublishErrorKind::BrokenPipe => BusError::Unavailable(error),
        PublishErrorKind::StreamNotFound => BusError::UnknownDestination {
            name: "stream for subject".into(),
            source: error,
        },
        PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge(error),
        _ => BusError::Broker(error),
    }
}

/// The record's headers, its key, and a `Nats-Msg-Id` of `id_prefix` + event id.
fn to_nats_headers(record: &OutboundRecord, id_prefix: &str) -> Result<HeaderMap, BusError> {
    let text = |what: &str, bytes: &Bytes| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| BusError::Invalid(format!("{what} is not UTF-8")))
    };
    let mut map = HeaderMap::new();
    map.insert(headers::NATS_KEY, text("the key", &record.key)?.as_str());
    for (name, value) in record.headers.iter() {
        map.append(name, text(name, value)?.as_str());
    }
    // JetStream drops a second publish with the same id within its duplicate window: Fluent
    // retrying a webhook whose answer was lost then stores it once.
    if let Some(id) = record.headers.get(headers::EVENT_ID) {
        map.insert(
            "Nats-Msg-Id",
            format!("{id_prefix}{}", text("the event id", id)?).as_str(),
        );
    }
    Ok(map)
}

/// Consumes the owned partitions through one durable pull consumer each.
pub struct NatsConsumer {
    client: async_nats::Client,
    deliveries: mpsc::Receiver<Result<Delivery, BusError>>,
    owned: Option<Vec<u32>>,
    tasks: Vec<JoinHandle<()>>,
    status: ConsumerStatus,
}

impl NatsConsumer {
    /// Connects, makes sure the stream and the durable consumers exist, and starts pulling.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let nats = &config.nats;
        let (client, context) = connect(config).await?;
        let stream = context
            .get_stream(&nats.stream)
            .await
            .map_err(|error| BusError::Setup(error.into()))?;
        let source: Arc<str> = nats.stream.as_str().into();
        let (sender, deliveries) = mpsc::channel(CHANNEL_CAPACITY);
        let status = ConsumerStatus::unwatched();
        let mut tasks = Vec::new();
        for partition in &nats.owned_partitions {
            let partition = u32::from(*partition);
            let name = format!("{}-{partition}", nats.consumer_prefix);
            let consumer_config = pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject(&nats.subject_prefix, partition),
                ack_policy: AckPolicy::Explicit,
                ack_wait: nats.ack_wait,
                max_deliver: nats.max_deliver,
                ..Default::default()
            };
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(&name, consumer_config)
                .await
                .map_err(|error| BusError::Setup(error.into()))?;
            // The lag until the first delivery updates it: what the server still holds for us.
            if let Ok(info) = consumer.info().await {
                let unacknowledged = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                status.set_lag(partition, info.num_pending.saturating_add(unacknowledged));
            }
            let messages = consumer
                .messages()
                .await
                .map_err(|error| BusError::Unavailable(error.into()))?;
            let sender = sender.clone();
            let source = Arc::clone(&source);
            let status = status.clone();
            tasks.push(tokio::spawn(forward(
                messages, partition, source, sender, status,
            )));
        }
        let owned = nats
            .owned_partitions
            .iter()
            .map(|p| u32::from(*p))
            .collect();
        Ok(Self {
            client,
            deliveries,
            owned: Some(owned),
            tasks,
            status,
        })
    }

    /// The owned partitions first, then (with `records`) records as they arrive.
    pub async fn next(&mut self, records: bool) -> Result<Delivery, BusError> {
        if let Some(owned) = self.owned.take() {
            return Ok(Delivery::Assigned(owned));
        }
        if !records {
            return std::future::pending().await;
        }
        self.deliveries
            .recv()
            .await
            .unwrap_or(Err(BusError::Closed))
    }

    /// Per owned partition, the messages JetStream has not yet delivered to this consumer (as
    /// the newest delivered message reported it).
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// Stops pulling and flushes the acks sent so far: an ack still in the client's buffer
    /// when the connection closes is lost, and its message redelivered.
    pub async fn close(self) -> Result<(), BusError> {
        self.tasks.iter().for_each(JoinHandle::abort);
        self.client
            .flush()
            .await
            .map_err(|error| BusError::Unavailable(error.into()))
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        // Unacknowledged messages stay with the server and are redelivered after ack_wait.
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Pulls one partition's messages into the shared channel. A full channel stops the pulling,
/// which is the back-pressure: JetStream holds the rest.
async fn forward(
    mut messages: pull::Stream,
    partition: u32,
    source: Arc<str>,
    sender: mpsc::Sender<Result<Delivery, BusError>>,
    status: ConsumerStatus,
) {
    while let Some(message) = messages.next().await {
        let delivery = match message {
            Ok(message) => match inbound(message, partition, &source, &status) {
                Ok(record) => Ok(Delivery::Record(record)),
                Err(error) => {
                    warn!(%error, partition, "skipping a message that is not a bus record");
                    continue;
                }
            },
            Err(error) => {
                warn!(%error, partition, "JetStream pull failed; retrying");
                continue;
            }
        };
        if sender.send(delivery).await.is_err() {
            return;
        }
    }
}

fn inbound(
    message: jetstream::Message,
    partition: u32,
    source: &Arc<str>,
    status: &ConsumerStatus,
) -> Result<InboundRecord, BusError> {
    let info = message.info().map_err(BusError::Broker)?;
    status.set_lag(partition, info.pending);
    let (sequence, delivered) = (info.stream_sequence, info.delivered);
    let (message, acker) = message.split();
    let mut key = Bytes::new();
    let mut headers = Headers::new();
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            for value in values {
                let value = Bytes::copy_from_slice(HeaderValue::as_str(value).as_bytes());
                match name.as_ref() {
                    headers::NATS_KEY => key = value,
                    "Nats-Msg-Id" => {}
                    other => headers.insert(other, value),
                }
            }
        }
    }
    Ok(InboundRecord {
        source: Arc::clone(source),
        position: Position {
            partition,
            offset: sequence,
        },
        key,
        payload: message.payload,
        headers,
        delivery_count: u32::try_from(delivered).unwrap_or(u32::MAX),
        ack: AckHandle(AckInner::Nats(Box::new(acker))),
    })
}
