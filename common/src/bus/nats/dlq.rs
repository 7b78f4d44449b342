//! The NATS side of [`DlqReader`](crate::bus::dlq::DlqReader): the DLQ subject read with an
//! ordered consumer (ephemeral, no acks: reading changes nothing on the server), up to the
//! DLQ's last sequence as it was first seen. JetStream has no consumer offsets to commit, so a
//! replay group keeps its state (the same text Kafka keeps in commit metadata) in a key-value
//! bucket named after the stream and the group (buckets belong to the account, streams do not
//! share them), and each store waits for the server's acknowledgement. A store names the
//! revision it read, so a second replay running at the same time fails instead of both
//! publishing everything.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt as _;

use super::existing_stream;
use crate::bus::{BusError, OutboundRecord, Position, StoredRecord, headers, metadata};
use crate::config::BusConfig;

/// How long a read may go without a message before it gives up.
const IDLE: Duration = Duration::from_secs(15);
/// The most text a state may take: NATS's default payload limit is 1 MiB, and DLQ sequences
/// are sparse in the stream, so each handled one beyond a pending one is a run of its own.
const STATE_BYTES: usize = 512 * 1024;
/// The key holding a replay group's state in its bucket.
const STATE_KEY: &str = "handled";

/// The DLQ subject of the stream.
pub struct NatsDlq {
    stream: jetstream::stream::Stream,
    subject: String,
    /// The replay group's bucket (none yet for a list, when no replay ever ran).
    state: Option<kv::Store>,
    /// The state's revision when read (`None`: no state yet).
    revision: std::sync::Mutex<Option<u64>>,
    /// Publishes the replays (a replay only).
    publisher: Option<super::NatsPublisher>,
    deadline: Duration,
}

impl NatsDlq {
    /// Connects (creating no stream: a missing one is reported) and opens the bucket of
    /// `group`, creating it when `create` (a replay; a list creates nothing).
    pub async fn open(config: &BusConfig, group: &str, create: bool) -> Result<Self, BusError> {
        let nats = &config.nats;
        let (context, stream) = existing_stream(config).await?;
        let replicas = stream.cached_info().config.num_replicas;
        let name = format!("{}-{group}", nats.stream);
        let state = bucket(&context, &name, create, replicas).await?;
        let publisher = match create {
            true => Some(super::NatsPublisher::connect(config).await?),
            false => None,
        };
        Ok(Self {
            stream,
            subject: format!("{}.dlq", nats.subject_prefix),
            state,
            revision: std::sync::Mutex::new(None),
            publisher,
            deadline: config.publish_timeout.max(Duration::from_secs(5)),
        })
    }

    /// The DLQ subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The dead letters of this DLQ whose replay the stream's partition subjects hold (by
    /// their `replayed-from` header), with the replay's event id, among the messages stored
    /// from `since` on (all the stream retains without one), up to the stream's last message
    /// as it is now.
    pub async fn published_replays(
        &self,
        since: Option<SystemTime>,
    ) -> Result<HashMap<Position, Option<String>>, BusError> {
        let broker = |error: &dyn std::fmt::Display| BusError::Broker(error.to_string().into());
        let last = self
            .stream
            .clone()
            .info()
            .await
            .map_err(|error| broker(&error))?
            .state
            .last_sequence;
        let deliver_policy = match since.and_then(|since| {
            let nanos = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::try_from(nanos).ok()?).ok()
        }) {
            Some(start_time) => DeliverPolicy::ByStartTime { start_time },
            None => DeliverPolicy::All,
        };
        let prefix = self.subject.strip_suffix("dlq").unwrap_or_default();
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{prefix}*"),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|error| broker(&error))?;
        // Nothing matched when the consumer was made: no message will come to say so.
        if consumer.cached_info().num_pending == 0 {
            return Ok(HashMap::new());
        }
        let mut messages = consumer.messages().await.map_err(|error| broker(&error))?;
        let name = format!("{}:", self.subject);
        let mut found = HashMap::new();
        loop {
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                Err(_) => return Err(BusError::Timeout(IDLE)),
                Ok(None) => break,
                Ok(Some(message)) => message.map_err(|error| broker(&error))?,
            };
            // What the server says is left, per message: an ordered consumer that made itself
            // again (after missed heartbeats, say) may start over from another sequence, and
            // messages may expire meanwhile, so a count taken at the start could stop short
            // or wait for ever.
            let info = message.info().map_err(BusError::Broker)?;
            let (sequence, left) = (info.stream_sequence, info.pending);
            if sequence > last {
                break;
            }
            if message.subject.as_str() != self.subject {
                let header = |key| message.headers.as_ref()?.get(key).map(|v| v.as_str());
                let replayed = header(headers::REPLAYED_FROM)
                    .and_then(|value| value.strip_prefix(&name)?.split_once(':'))
                    .and_then(|(partition, offset)| {
                        Some(Position {
                            partition: partition.parse().ok()?,
                            offset: offset.parse().ok()?,
                        })
                    });
                if let Some(position) = replayed {
                    found.insert(position, header(headers::EVENT_ID).map(str::to_owned));
                }
            }
            if left == 0 || sequence >= last {
                break;
            }
        }
        Ok(found)
    }

    /// One partition: from the stream's first sequence to one past the DLQ's last.
    pub async fn partitions(&self) -> Result<Vec<(u32, u64, u64)>, BusError> {
        let end = match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(last) => last.sequence + 1,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(error) => return Err(BusError::Broker(error.into())),
        };
        let first = self.stream.cached_info().state.first_sequence.max(1);
        Ok(vec![(0, first, end)])
    }

    /// The group's stored state: the first unhandled sequence and the handled ones beyond
    /// (without a state, sequence 1: the stream's first).
    pub async fn load(&self) -> Result<(u64, Vec<u64>), BusError> {
        let Some(state) = &self.state else {
            return Ok((1, Vec::new()));
        };
        let entry = state
            .entry(STATE_KEY)
            .await
            .map_err(|error| BusError::Broker(error.into()))?
            .filter(|entry| entry.operation == kv::Operation::Put);
        *self.revision_lock() = entry.as_ref().map(|entry| entry.revision);
        let Some(entry) = entry else {
            return Ok((1, Vec::new()));
        };
        // `<stream created, unix ns> <next sequence> <handled beyond>`.
        let text = String::from_utf8_lossy(&entry.value).into_owned();
        let mut parts = text.splitn(3, ' ');
        let created = parts.next().unwrap_or_default();
        if created != self.created() {
            return Err(BusError::Setup(
                format!(
                    "the replay group's state was written for stream {} as created at {created} \
                     (unix ns); it was made again since: delete the key-value bucket of the \
                     replay group to replay it from the start",
                    self.stream.cached_info().config.name
                )
                .into(),
            ));
        }
        let committed = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok((
            committed,
            metadata::decode(committed, parts.next().unwrap_or("")),
        ))
    }

    /// When the stream was created, as the state records it.
    fn created(&self) -> String {
        self.stream
            .cached_info()
            .created
            .unix_timestamp_nanos()
            .to_string()
    }

    /// The DLQ messages from sequence `from` up to `end`, and `end` (the ordered consumer
    /// delivers every message of the subject, in order, or fails).
    pub async fn read(&self, from: u64, end: u64) -> Result<(Vec<StoredRecord>, u64), BusError> {
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|error| BusError::Broker(error.into()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| BusError::Broker(error.into()))?;
        let mut records = Vec::new();
        loop {
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                Err(_) => return Err(BusError::Timeout(IDLE)),
                Ok(None) => {
                    return Err(BusError::Broker(
                        "the DLQ subscription ended before the DLQ's last message".into(),
                    ));
                }
                Ok(Some(message)) => message.map_err(|error| BusError::Broker(error.into()))?,
            };
            let sequence = message.info().map_err(BusError::Broker)?.stream_sequence;
            if sequence >= end {
                return Ok((records, end));
            }
            records.push(stored(sequence, message.message));
            if sequence + 1 >= end {
                return Ok((records, end));
            }
        }
    }

    /// Publishes `record` (read at DLQ position `from`) to its partition subject, then stores
    /// the group's new state. A crash between the two publishes it again on the next run,
    /// which the server drops within its duplicate window: the message id comes from `from`.
    pub async fn replay(
        &self,
        record: OutboundRecord,
        from: Position,
        committed: u64,
        done: &[u64],
    ) -> Result<Position, BusError> {
        let Some(publisher) = &self.publisher else {
            return Err(BusError::Setup("the DLQ reader was opened to list".into()));
        };
        let at = publisher.replay(record, from).await?;
        self.store(committed, done).await?;
        Ok(at)
    }

    /// Stores the group's state and waits for the server to acknowledge it.
    pub async fn store(&self, committed: u64, done: &[u64]) -> Result<(), BusError> {
        let Some(state) = &self.state else {
            return Err(BusError::Setup("the DLQ reader was opened to list".into()));
        };
        let text = Bytes::from(format!(
            "{} {committed} {}",
            self.created(),
            metadata::encode_within(committed, done, STATE_BYTES)
        ));
        let read = *self.revision_lock();
        let stored = async {
            match read {
                Some(revision) => state
                    .update(STATE_KEY, text, revision)
                    .await
                    .map_err(|error| error.to_string()),
                None => state
                    .create(STATE_KEY, text)
                    .await
                    .map_err(|error| error.to_string()),
            }
        };
        let revision = tokio::time::timeout(self.deadline, stored)
            .await
            .map_err(|_| BusError::Timeout(self.deadline))?
            .map_err(|error| {
                BusError::Broker(
                    format!(
                        "the replay group's state changed since this replay read it (is another \
                         replay running?), or could not be stored: {error}"
                    )
                    .into(),
                )
            })?;
        *self.revision_lock() = Some(revision);
        Ok(())
    }

    fn revision_lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.revision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bucket `name` (letters, digits, `-` and `_` kept, the rest `_`), created when missing
/// and `create`, with the stream's `replicas` (it must survive what the stream survives).
async fn bucket(
    context: &jetstream::Context,
    name: &str,
    create: bool,
    replicas: usize,
) -> Result<Option<kv::Store>, BusError> {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(store) = context.get_key_value(&name).await {
        return Ok(Some(store));
    }
    if !create {
        return Ok(None);
    }
    context
        .create_key_value(kv::Config {
            bucket: name,
            description: "what `processor dlq replay` has handled".into(),
            history: 1,
            num_replicas: replicas.max(1),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map(Some)
        .map_err(|error| BusError::Broker(error.into()))
}

/// The dead letter of a DLQ message: the key from `bus-key`, the other headers as they are.
fn stored(sequence: u64, message: async_nats::Message) -> StoredRecord {
    let (key, record_headers) = super::key_and_headers(message.headers.as_ref());
    StoredRecord {
        position: Position {
            partition: 0,
            offset: sequence,
        },
        key,
        headers: record_headers,
        payload: message.payload,
    }
}
