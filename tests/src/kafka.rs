//! Kafka helpers: reading what a group has committed, as the broker reports it.

use std::time::Duration;

use anyhow::Context as _;
use common::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The offset the group of `config` has committed for `partition` of its topic (0 if none).
pub fn committed_offset(config: &KafkaConfig, partition: u32) -> anyhow::Result<u64> {
    // A plain client with the group id: OffsetFetch does not join the group.
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", &config.group_id)
        .create()?;
    let offset = {
        // Scoped: partition lists must be gone before their client is dropped.
        let mut list = TopicPartitionList::new();
        list.add_partition(&config.topic, i32::try_from(partition)?);
        let committed = client.committed_offsets(list, Duration::from_secs(10))?;
        let element = committed
            .find_partition(&config.topic, i32::try_from(partition)?)
            .context("partition missing from the answer")?;
        element.offset()
    };
    Ok(match offset {
        Offset::Offset(offset) => u64::try_from(offset)?,
        _ => 0,
    })
}

/// Reads the first `count` records of `topic` (all partitions, from the beginning) with a
/// plain client, as any other consumer of the topic would see them.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    count: usize,
) -> anyhow::Result<Vec<common::bus::OutboundRecord>> {
    let client = reader(brokers, topic)?;
    let until = std::time::Instant::now() + crate::DEADLINE;
    let mut records = Vec::new();
    while records.len() < count {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "{topic}: fewer than {count} records"
        );
        let Some(message) = client.poll(Duration::from_millis(200)) else {
            continue;
        };
        records.push(to_record(&message?));
    }
    Ok(records)
}

/// Every record of `topic` a plain client reads before `quiet` passes without one: for
/// counting what is there without trusting the high watermark (tansu 0.6's trails the log by a
/// record or so after a broker stall).
pub fn read_until_quiet(
    brokers: &str,
    topic: &str,
    quiet: Duration,
) -> anyhow::Result<Vec<common::bus::OutboundRecord>> {
    let client = reader(brokers, topic)?;
    let mut records = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        if let Some(message) = client.poll(Duration::from_millis(100)) {
            records.push(to_record(&message?));
            last = std::time::Instant::now();
        }
    }
    Ok(records)
}

/// A client of a group of its own, reading `topic` from the beginning. Its fetches may be
/// large enough for a whole test partition: a fetch that stops inside a record batch resumes
/// there, and tansu 0.6 answers that with the next batch, skipping the rest of this one
/// (docs/testing.md: "Known defects of the test broker"), so a reader limited to 1 MiB per partition
/// missed records of the soak's larger partitions.
fn reader(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.partition.fetch.bytes", "67108864")
        .set("fetch.max.bytes", "134217728")
        .set("receive.message.max.bytes", "134218752")
        .create()?;
    client.subscribe(&[topic])?;
    Ok(client)
}

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> common::bus::OutboundRecord {
    use rdkafka::message::{Headers as _, Message as _};
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    common::bus::OutboundRecord {
        key: message.key().unwrap_or_default().to_vec().into(),
        payload: message.payload().unwrap_or_default().to_vec().into(),
        headers,
    }
}

/// Per partition of `config`'s topic (0..`partitions`): the end of the log and what the group
/// has committed (0 where nothing), as the broker reports them.
pub fn ends_and_commits(config: &KafkaConfig, partitions: u32) -> anyhow::Result<Vec<(u64, u64)>> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", &config.group_id)
        .create()?;
    let mut result = Vec::new();
    {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&config.topic, i32::try_from(partition)?);
        }
        let committed = client.committed_offsets(list, Duration::from_secs(10))?;
        for partition in 0..partitions {
            let partition = i32::try_from(partition)?;
            let (_, high) =
                client.fetch_watermarks(&config.topic, partition, Duration::from_secs(10))?;
            let done = committed
                .find_partition(&config.topic, partition)
                .map(|element| element.offset());
            let done = match done {
                Some(Offset::Offset(offset)) => u64::try_from(offset)?,
                _ => 0,
            };
            result.push((u64::try_from(high)?, done));
        }
    }
    Ok(result)
}

/// The consumer group as the broker's coordinator describes it: its state and protocol, then
/// one line per member with the partitions of `topic` the coordinator says it was given. A
/// report on a stuck partition shows whether some member (alive or not) still holds it.
pub fn describe_group(config: &KafkaConfig) -> anyhow::Result<Vec<String>> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers.join(","))
        .create()?;
    let groups = client.fetch_group_list(Some(&config.group_id), Duration::from_secs(10))?;
    let mut lines = Vec::new();
    for group in groups.groups() {
        lines.push(format!(
            "group {} state {} protocol {}/{} members {}",
            group.name(),
            group.state(),
            group.protocol_type(),
            group.protocol(),
            group.members().len()
        ));
        for member in group.members() {
            let partitions = member
                .assignment()
                .map(|bytes| assigned_partitions(bytes, &config.topic));
            lines.push(format!(
                "  member {} ({} at {}): partitions {partitions:?}",
                member.id(),
                member.client_id(),
                member.client_host()
            ));
        }
    }
    Ok(lines)
}

/// The partitions of `topic` in a consumer protocol assignment (version, then per topic its
/// name and partitions, then user data), or why it does not parse.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Result<Vec<i32>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!(
                "assignment cut short ({} bytes left, {n} needed)",
                bytes.len()
            ));
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head)
    }
    fn int(bytes: &mut &[u8], n: usize) -> Result<i64, String> {
        Ok(take(bytes, n)?
            .iter()
            .fold(0_i64, |acc, byte| (acc << 8) | i64::from(*byte)))
    }
    let mut rest = bytes;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let _version = int(&mut rest, 2)?;
    let mut partitions = Vec::new();
    for _ in 0..int(&mut rest, 4)? {
        let name_len = usize::try_from(int(&mut rest, 2)?).map_err(|e| e.to_string())?;
        let name = take(&mut rest, name_len)?.to_vec();
        for _ in 0..int(&mut rest, 4)? {
            let partition = i32::try_from(int(&mut rest, 4)?).map_err(|e| e.to_string())?;
            if name == topic.as_bytes() {
                partitions.push(partition);
            }
        }
    }
    Ok(partitions)
}
