//! The NATS JetStream bus: one stream, subjects `<prefix>.<partition>` with the partition
//! chosen by Kafka's murmur2 of the key, and one durable pull consumer per partition with
//! explicit acks, shared by every instance: JetStream's priority group with the pinned-client
//! policy hands each partition to one instance at a time ([`consumer`]). The DLQ is subject
//! `<prefix>.dlq` in the same stream.
//!
//! NATS messages have no key field, so the key travels in the `bus-key` header; keys and
//! header values must be UTF-8 here (order refs and our headers are). NATS keeps no order among
//! headers of different names; values arrive byte for byte.

mod consumer;
mod dlq;
mod held;
mod inspect;
mod partition;
mod setup;

pub use consumer::NatsConsumer;
pub use dlq::NatsDlq;
pub(crate) use held::NatsAck;
pub use inspect::inspect;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;

use super::{BusError, OutboundRecord, Position, headers, partition_for_key};
use crate::config::BusConfig;

/// Connects and makes sure the stream exists (creating it when missing).
async fn connect(config: &BusConfig) -> Result<(async_nats::Client, jetstream::Context), BusError> {
    let (client, context) = connect_only(config).await?;
    setup::ensure_stream(&context, &config.nats).await?;
    Ok((client, context))
}

/// Connects and opens the configured stream, creating nothing: a missing stream is
/// [`BusError::UnknownDestination`].
async fn existing_stream(
    config: &BusConfig,
) -> Result<(jetstream::Context, jetstream::stream::Stream), BusError> {
    let name = &config.nats.stream;
    let (_, context) = connect_only(config).await?;
    let stream = context
        .get_stream(name)
        .await
        .map_err(|error| match error.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                BusError::UnknownDestination {
                    name: name.clone(),
                    source: error.into(),
                }
            }
            _ => BusError::Broker(error.into()),
        })?;
    Ok((context, stream))
}

/// Connects, creating nothing.
async fn connect_only(
    config: &BusConfig,
) -> Result<(async_nats::Client, jetstream::Context), BusError> {
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
    Ok((client, context))
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

    /// Publishes a replayed dead letter (read at DLQ sequence `from`) to its key's partition.
    pub async fn replay(
        &self,
        record: OutboundRecord,
        from: Position,
    ) -> Result<Position, BusError> {
        let partition = partition_for_key(&record.key, self.partitions);
        let prefix = format!("replay:{}:", from.offset);
        let sequence = self
            .send(subject(&self.prefix, partition), record, &prefix)
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
        // would otherwise drop it as a duplicate of the original. The id names the record it
        // came from: a redelivery of that record is one dead letter, but the same event failing
        // again from another record (a replay, a Fluent retry) is a new one, kept.
        let source = |name| record.headers.get_str(name).unwrap_or_default().to_owned();
        let prefix = format!(
            "dlq:{}:{}:",
            source(headers::DLQ_SOURCE_PARTITION),
            source(headers::DLQ_SOURCE_OFFSET)
        );
        let sequence = self
            .send(format!("{}.dlq", self.prefix), record, &prefix)
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
///
/// NATS headers are text lines: async-nats panics on a value holding CR or LF. A key with one
/// is refused (the gateway refuses such identifiers before publishing); other values, such as
/// a `dlq-error` quoting an API's multi-line answer, travel with the line breaks escaped.
fn to_nats_headers(record: &OutboundRecord, id_prefix: &str) -> Result<HeaderMap, BusError> {
    fn text<'a>(what: &str, bytes: &'a Bytes) -> Result<&'a str, BusError> {
        std::str::from_utf8(bytes).map_err(|_| BusError::Invalid(format!("{what} is not UTF-8")))
    }
    let key = text("the key", &record.key)?;
    if key.contains(['\r', '\n']) {
        return Err(BusError::Invalid(
            "the key holds a line break, which a NATS header cannot carry".into(),
        ));
    }
    let mut map = HeaderMap::new();
    map.insert(headers::NATS_KEY, key);
    for (name, value) in record.headers.iter() {
        map.append(name, one_line(text(name, value)?).as_ref());
    }
    // JetStream drops a second publish with the same id within its duplicate window: Fluent
    // retrying a webhook whose answer was lost then stores it once.
    // A replay's prefix names its DLQ position: it is the id even without an event id.
    match record.headers.get(headers::EVENT_ID) {
        Some(id) => {
            let id = one_line(text("the event id", id)?);
            map.insert("Nats-Msg-Id", format!("{id_prefix}{id}").as_str());
        }
        None if id_prefix.starts_with("replay:") => map.insert("Nats-Msg-Id", id_prefix),
        None => {}
    }
    Ok(map)
}

/// The key (from `bus-key`) and the record's headers of a message, leaving out the server's
/// own (`Nats-Msg-Id`, `Nats-Pin-Id`). Values arrive as sent (line breaks stay escaped).
fn key_and_headers(map: Option<&HeaderMap>) -> (Bytes, super::Headers) {
    let mut key = Bytes::new();
    let mut record = super::Headers::new();
    for (name, values) in map.iter().flat_map(|map| map.iter()) {
        for value in values {
            let value = Bytes::copy_from_slice(value.as_str().as_bytes());
            match name.as_ref() {
                headers::NATS_KEY => key = value,
                "Nats-Msg-Id" | "Nats-Pin-Id" => {}
                other => record.insert(other, value),
            }
        }
    }
    (key, record)
}

/// `value` with CR and LF escaped (`\\r`, `\\n`), borrowed when it has none.
fn one_line(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\r', '\n']) {
        value.replace('\r', "\\r").replace('\n', "\\n").into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Headers;

    fn record(key: &str, error: &str) -> OutboundRecord {
        OutboundRecord {
            key: key.to_owned().into(),
            payload: Bytes::from_static(b"{}"),
            headers: Headers::new()
                .with(headers::EVENT_ID, "e-1")
                .with("dlq-error", error.to_owned()),
        }
    }

    #[test]
    fn a_header_value_with_line_breaks_travels_escaped_and_a_key_with_one_is_refused() {
        let map = to_nats_headers(&record("O-1", "status 400: <html>\r\n<b>no</b>\n"), "p-")
            .expect("escaped, not refused");
        assert_eq!(
            map.get("dlq-error").map(|value| value.as_str()),
            Some("status 400: <html>\\r\\n<b>no</b>\\n")
        );
        assert_eq!(map.get("Nats-Msg-Id").map(|v| v.as_str()), Some("p-e-1"));
        assert!(matches!(
            to_nats_headers(&record("O-1\nO-2", "x"), "p-"),
            Err(BusError::Invalid(_))
        ));
    }
}
