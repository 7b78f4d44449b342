//! The Kafka side of [`DlqReader`](crate::bus::dlq::DlqReader): a plain client assigned one
//! DLQ partition at a time (it never joins a group, so it cannot disturb one), reading up to
//! the high watermark it saw first; a replay group's state is its committed offsets and their
//! metadata.
//!
//! A replay publishes each dead letter with the gateway's idempotent publisher and commits the
//! replay group's new offsets once the broker acknowledged it. A replay killed between the two
//! leaves a published record the group does not know of: before replaying anything, a replay
//! reads the webhook topic from the oldest pending dead letter's time on and takes those whose
//! publish it finds there (their `replayed-from` header) as handled. One transaction for the
//! publish and the commit would spare that read; tansu 0.6, the test broker, has no `EndTxn`,
//! so that could not be tested here and is not done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaPublisher, classify, client_config, message_headers, partitions_of};
use crate::bus::{BusError, OutboundRecord, Position, StoredRecord, headers, metadata};
use crate::config::BusConfig;

/// How long a read may go without a record before it gives up.
const IDLE: Duration = Duration::from_secs(15);

/// The DLQ topic through a plain client.
pub struct KafkaDlq {
    client: Arc<BaseConsumer>,
    topic: Arc<str>,
    /// The webhook topic replays go to.
    webhook: Arc<str>,
    /// The client's settings, for the read of the webhook topic (a client of its own: no
    /// record or end-of-partition event of the DLQ's can reach that read).
    settings: rdkafka::ClientConfig,
    timeout: Duration,
    /// Publishes the replays (a replay only).
    replayer: Option<KafkaPublisher>,
}

impl KafkaDlq {
    /// A client for the DLQ topic, as `group` (it commits, never subscribes); with `replay`,
    /// also a publisher for the webhook topic.
    pub async fn open(config: &BusConfig, group: &str, replay: bool) -> Result<Self, BusError> {
        let mut client = client_config(&config.kafka);
        client
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // Offsets are always given; one out of range is an error, never a silent jump.
            .set("auto.offset.reset", "error")
            .set("group.id", group);
        let settings = client.clone();
        let client: BaseConsumer = client
            .create()
            .map_err(|error| BusError::Setup(error.into()))?;
        let timeout = config.publish_timeout.max(Duration::from_secs(5));
        let replayer = match replay {
            true => Some(KafkaPublisher::connect(config).await?),
            false => None,
        };
        Ok(Self {
            client: Arc::new(client),
            topic: config.kafka.dlq_topic.as_str().into(),
            webhook: config.kafka.topic.as_str().into(),
            settings,
            timeout,
            replayer,
        })
    }

    /// The DLQ topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The dead letters of this DLQ whose replay the webhook topic holds (by their
    /// `replayed-from` header), with the replay's event id, among its records written from
    /// `since` on (all it retains without one, or when the broker cannot look offsets up by
    /// time), up to each partition's end as it is now.
    pub async fn published_replays(
        &self,
        since: Option<SystemTime>,
    ) -> Result<HashMap<Position, Option<String>>, BusError> {
        let webhook = Arc::clone(&self.webhook);
        let settings = self.settings.clone();
        self.blocking(move |_, dlq, timeout| {
            let client: BaseConsumer = settings
                .create()
                .map_err(|error| BusError::Setup(error.into()))?;
            let client = &client;
            let prefix = format!("{dlq}:");
            let mut found = HashMap::new();
            for partition in partitions_of(client, &webhook, timeout)? {
                let (low, high) = client
                    .fetch_watermarks(&webhook, partition, timeout)
                    .map_err(|error| classify(error, &webhook, timeout))?;
                // Not `clamp`: a trailing high watermark may be below the low one.
                let start = since
                    .and_then(|since| first_offset_at(client, &webhook, partition, since, timeout))
                    .unwrap_or(low)
                    .max(low)
                    .min(high);
                if start >= high {
                    continue;
                }
                let mut list = TopicPartitionList::new();
                list.add_partition_offset(&webhook, partition, Offset::Offset(start))
                    .map_err(|error| BusError::Setup(error.into()))?;
                client
                    .assign(&list)
                    .map_err(|error| classify(error, &webhook, timeout))?;
                let end = to_u64(high);
                let read = poll_assigned(
                    client,
                    &webhook,
                    to_u32(partition),
                    end,
                    timeout,
                    |message| {
                        if let Some((position, event)) = replayed_from(message, &prefix) {
                            found.insert(position, event);
                        }
                    },
                );
                let _ = client.unassign();
                read?;
            }
            Ok(found)
        })
        .await
    }

    /// Publishes `record` to the webhook topic and, once the broker acknowledged it, commits
    /// the replay group's `stores` (partition, committed offset, handled offsets beyond) and
    /// waits for the broker to confirm; where the broker stored the record.
    pub async fn replay(
        &self,
        record: OutboundRecord,
        stores: Vec<(u32, u64, Vec<u64>)>,
    ) -> Result<Position, BusError> {
        let Some(publisher) = &self.replayer else {
            return Err(BusError::Setup("the DLQ reader was opened to list".into()));
        };
        let at = publisher.publish(record).await?;
        self.commit(stores).await?;
        Ok(at)
    }

    /// Commits the replay group's `stores` (partition, committed offset, handled offsets
    /// beyond, as metadata) and waits for the broker to confirm.
    pub async fn commit(&self, stores: Vec<(u32, u64, Vec<u64>)>) -> Result<(), BusError> {
        self.blocking(move |client, topic, _| {
            // Dropped inside: a list that outlives its client makes librdkafka's close wait
            // forever.
            let mut list = TopicPartitionList::new();
            for (partition, committed, done) in &stores {
                let mut element = list.add_partition(topic, to_i32(*partition));
                element
                    .set_offset(Offset::Offset(to_i64(*committed)))
                    .map_err(|error| BusError::Commit(error.into()))?;
                element.set_metadata(metadata::encode(*committed, done));
            }
            client
                .commit(&list, CommitMode::Sync)
                .map_err(|error| BusError::Commit(error.into()))
        })
        .await
    }

    /// Runs `work` on the client off the async workers (every call here blocks).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&BaseConsumer, &str, Duration) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        let (client, topic, timeout) = (
            Arc::clone(&self.client),
            Arc::clone(&self.topic),
            self.timeout,
        );
        tokio::task::spawn_blocking(move || work(&client, &topic, timeout))
            .await
            .map_err(|error| BusError::Broker(error.into()))?
    }

    /// Every partition of the DLQ topic with its low and high watermark.
    pub async fn partitions(&self) -> Result<Vec<(u32, u64, u64)>, BusError> {
        self.blocking(|client, topic, timeout| {
            let partitions = partitions_of(client, topic, timeout)?;
            partitions
                .into_iter()
                .map(|partition| {
                    let (low, high) = client
                        .fetch_watermarks(topic, partition, timeout)
                        .map_err(|error| classify(error, topic, timeout))?;
                    Ok((to_u32(partition), to_u64(low), to_u64(high)))
                })
                .collect()
        })
        .await
    }

    /// The group's committed offset of `partition` (0 when it has none) and the handled
    /// offsets beyond it that the commit's metadata carries.
    pub async fn load(&self, partition: u32) -> Result<(u64, Vec<u64>), BusError> {
        self.blocking(move |client, topic, timeout| {
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, to_i32(partition));
            let committed = client
                .committed_offsets(list, timeout)
                .map_err(|error| classify(error, topic, timeout))?;
            let Some(element) = committed.find_partition(topic, to_i32(partition)) else {
                return Ok((0, Vec::new()));
            };
            let Offset::Offset(offset) = element.offset() else {
                return Ok((0, Vec::new()));
            };
            let offset = to_u64(offset);
            // rdkafka panics on metadata that is not UTF-8 (another tool's commit).
            let text =
                std::panic::catch_unwind(|| element.metadata().to_owned()).unwrap_or_default();
            Ok((offset, metadata::decode(offset, &text)))
        })
        .await
    }

    /// The records of `partition` from offset `from` up to `end`, and the offset below which
    /// they came without a hole from `vouch_from` on (a DLQ written without transactions or
    /// compaction has none; tansu 0.6 can skip part of a batch a fetch resumes inside).
    pub async fn read(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        vouch_from: u64,
    ) -> Result<(Vec<StoredRecord>, u64), BusError> {
        self.blocking(move |client, topic, timeout| {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, to_i32(partition), Offset::Offset(to_i64(from)))
                .map_err(|error| BusError::Setup(error.into()))?;
            client
                .assign(&list)
                .map_err(|error| classify(error, topic, timeout))?;
            let read = read_assigned(client, topic, partition, end, timeout);
            let _ = client.unassign();
            let records = read?;
            let mut reached = vouch_from;
            for record in records.iter().filter(|r| r.position.offset >= vouch_from) {
                if record.position.offset != reached {
                    break;
                }
                reached += 1;
            }
            Ok((records, reached))
        })
        .await
    }
}

/// The first offset of `partition` whose record was written at `since` or later (the end
/// when none was); `None` when the broker could not say.
fn first_offset_at(
    client: &BaseConsumer,
    topic: &str,
    partition: i32,
    since: SystemTime,
    timeout: Duration,
) -> Option<i64> {
    let millis = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(
        topic,
        partition,
        Offset::Offset(i64::try_from(millis).ok()?),
    )
    .ok()?;
    let found = client.offsets_for_times(list, timeout).ok()?;
    let element = found.find_partition(topic, partition)?;
    if element.error().is_err() {
        return None;
    }
    match element.offset() {
        Offset::Offset(offset) => Some(offset),
        // No record that late: nothing to read.
        Offset::End => Some(i64::MAX),
        _ => None,
    }
}

/// The dead letter a webhook record is the replay of, when its `replayed-from` header names
/// one of the DLQ `prefix` (`<DLQ topic>:`) stands for, and the record's event id.
fn replayed_from(
    message: &BorrowedMessage<'_>,
    prefix: &str,
) -> Option<(Position, Option<String>)> {
    let headers = message.headers()?;
    let text = |name: &str| {
        let value = headers.iter().find(|header| header.key == name)?.value?;
        std::str::from_utf8(value).ok()
    };
    let (partition, offset) = text(headers::REPLAYED_FROM)?
        .strip_prefix(prefix)?
        .split_once(':')?;
    let position = Position {
        partition: partition.parse().ok()?,
        offset: offset.parse().ok()?,
    };
    Some((position, text(headers::EVENT_ID).map(str::to_owned)))
}

/// The records of the assigned partition up to `end` (or the partition's end).
fn read_assigned(
    client: &BaseConsumer,
    topic: &str,
    partition: u32,
    end: u64,
    timeout: Duration,
) -> Result<Vec<StoredRecord>, BusError> {
    let mut records = Vec::new();
    poll_assigned(client, topic, partition, end, timeout, |message| {
        records.push(StoredRecord {
            position: Position {
                partition,
                offset: to_u64(message.offset()),
            },
            key: Bytes::copy_from_slice(message.key().unwrap_or_default()),
            headers: message_headers(message),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        });
    })?;
    Ok(records)
}

/// Polls the assigned partition, handing `each` its records below `end`, until `end`, the
/// partition's end, or [`IDLE`] without a record.
fn poll_assigned(
    client: &BaseConsumer,
    topic: &str,
    partition: u32,
    end: u64,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), BusError> {
    let mut last_progress = Instant::now();
    loop {
        if last_progress.elapsed() > IDLE {
            return Err(BusError::Timeout(IDLE));
        }
        let message = match client.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(eof))) if eof == to_i32(partition) => {
                return Ok(());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(error)) => return Err(classify(error, topic, timeout)),
            // Left over from the previous assignment (another partition, or the other topic).
            Some(Ok(message))
                if message.partition() != to_i32(partition) || message.topic() != topic =>
            {
                continue;
            }
            Some(Ok(message)) => message,
        };
        last_progress = Instant::now();
        let offset = to_u64(message.offset());
        if offset >= end {
            return Ok(());
        }
        each(&message);
        if offset + 1 >= end {
            return Ok(());
        }
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_u32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
