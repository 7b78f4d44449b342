//! The records that travel on the bus, as published and as consumed.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::tracker::OffsetTracker;
use super::{BusError, headers};

/// Record headers: names with byte values, in order, duplicates allowed (as in Kafka).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }

    /// Appends a header, builder style.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// The value of the first header called `name`, when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True without headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        )
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    /// The partitioning key (the order ref): records with one key keep their order.
    pub key: Bytes,
    /// The value, carried byte for byte.
    pub payload: Bytes,
    /// Headers, carried byte for byte.
    pub headers: Headers,
}

/// Where a record sits: its partition and its offset there (for NATS: the partition subject's
/// index and the stream sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset (Kafka) or stream sequence (NATS) within it.
    pub offset: u64,
}

/// A consumed record, with the handle that acknowledges it.
#[derive(Debug)]
pub struct InboundRecord {
    /// The topic or stream it came from (for DLQ headers).
    pub source: Arc<str>,
    /// Its position.
    pub position: Position,
    /// The partitioning key.
    pub key: Bytes,
    /// The value exactly as published.
    pub payload: Bytes,
    /// The headers exactly as published.
    pub headers: Headers,
    /// How many times the broker has delivered it (1 on first delivery; NATS counts
    /// redeliveries, Kafka cannot and always says 1).
    pub delivery_count: u32,
    /// Acknowledges the record once it is done.
    pub ack: AckHandle,
}

/// Acknowledges one record. Acks may come in any order; what gets committed is always the
/// contiguous acknowledged prefix of each partition.
pub struct AckHandle(pub(super) AckInner);

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            AckInner::Tracked { offset, .. } => write!(f, "AckHandle(offset {offset})"),
            #[cfg(feature = "nats")]
            AckInner::Nats(_) => f.write_str("AckHandle(nats)"),
        }
    }
}

pub(super) enum AckInner {
    /// Kafka and in-memory: mark the offset done; the consumer commits the prefix.
    Tracked {
        tracker: Arc<Mutex<OffsetTracker>>,
        offset: u64,
    },
    /// NATS JetStream: acknowledge the message itself; dropping it unacknowledged gives it
    /// back to the server.
    #[cfg(feature = "nats")]
    Nats(Box<super::nats::NatsAck>),
}

impl AckHandle {
    /// Marks the record done. For Kafka and in-memory this is immediate and infallible (the
    /// commit follows); for NATS it sends the ack to the server.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.0 {
            AckInner::Tracked { tracker, offset } => {
                lock(&tracker).ack(offset);
                Ok(())
            }
            #[cfg(feature = "nats")]
            AckInner::Nats(ack) => ack.ack().await,
        }
    }

    /// Whether the record still belongs to this consumer: false once its partition was
    /// revoked (the next owner runs it), even if the partition was assigned back since (it is
    /// then delivered again). Work on a record that is not current must stop, never restart.
    pub fn is_current(&self) -> bool {
        match &self.0 {
            AckInner::Tracked { tracker, .. } => !lock(tracker).is_retired(),
            #[cfg(feature = "nats")]
            AckInner::Nats(ack) => ack.is_current(),
        }
    }

    /// Tells the broker work on the record goes on, so it is not redelivered meanwhile (NATS
    /// `ack_wait`; the consumer also does so on its own for every record it holds). A no-op
    /// where records are not redelivered while a consumer lives (Kafka).
    pub async fn in_progress(&self) -> Result<(), BusError> {
        match &self.0 {
            AckInner::Tracked { .. } => Ok(()),
            #[cfg(feature = "nats")]
            AckInner::Nats(ack) => ack.in_progress().await,
        }
    }
}

/// Locks a tracker. Its methods cannot panic halfway through an update, so a lock poisoned by
/// a panic elsewhere still guards a consistent tracker and is used as is.
pub(super) fn lock(tracker: &Mutex<OffsetTracker>) -> std::sync::MutexGuard<'_, OffsetTracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A dead letter as the DLQ holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Where it sits in the DLQ (NATS: partition 0 and the stream sequence).
    pub position: Position,
    /// The order ref.
    pub key: Bytes,
    /// The original headers plus the `dlq-*` ones.
    pub headers: Headers,
    /// The webhook body, byte for byte.
    pub payload: Bytes,
}

impl StoredRecord {
    /// The record to publish again to the webhook topic: the same key, value and headers,
    /// without the `dlq-*` headers (they described this failure, not the event), and with
    /// `replayed-from` naming this dead letter of `dlq` (the DLQ topic or stream).
    pub fn to_replay(&self, dlq: &str) -> OutboundRecord {
        let mut headers: Headers = self
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("dlq-") && *name != headers::REPLAYED_FROM)
            .map(|(name, value)| (name.to_owned(), value.clone()))
            .collect();
        headers.insert(headers::REPLAYED_FROM, self.replayed_from(dlq));
        OutboundRecord {
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers,
        }
    }

    /// The `replayed-from` value naming this dead letter of `dlq`.
    pub fn replayed_from(&self, dlq: &str) -> String {
        format!("{dlq}:{}:{}", self.position.partition, self.position.offset)
    }
}
