//! The bus contract (common::bus), one suite run against Kafka, NATS JetStream and the
//! in-memory bus.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;
use common::bus::{DeadLetter, FailureClass, Headers, OutboundRecord, Position, headers};
use e2e_tests::bus::{Kind, TestBus, index, next_record, record};

/// Generates one `#[tokio::test]` per implementation for a contract test.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn kafka() -> anyhow::Result<()> {
                super::$name(Kind::Kafka).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn nats() -> anyhow::Result<()> {
                super::$name(Kind::Nats).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn memory() -> anyhow::Result<()> {
                super::$name(Kind::Memory).await
            }
        }
    };
}

contract!(keeps_key_order_and_carries_records_untouched);
contract!(redelivers_only_unacknowledged_records_after_restart);
contract!(dead_letters_keep_the_record_and_add_the_dlq_headers);

async fn keeps_key_order_and_carries_records_untouched(kind: Kind) -> anyhow::Result<()> {
    let bus = TestBus::new(kind, &[])?;
    let publisher = bus.publisher().await?;
    let mut consumer = bus.consumer().await?;
    let count = 40;
    let mut partition_of_key = BTreeMap::new();
    for i in 0..count {
        let position = publisher.publish(record(i, 7)).await?;
        let previous = partition_of_key.insert(i % 7, position.partition);
        ensure!(
            previous.is_none_or(|p| p == position.partition),
            "key {} moved",
            i % 7
        );
    }
    let mut last_of_key: BTreeMap<usize, usize> = BTreeMap::new();
    for _ in 0..count {
        let received = next_record(&mut consumer).await?;
        let i = index(&received)?;
        let sent = record(i, 7);
        ensure!(received.key == sent.key, "key of {i} changed");
        ensure!(received.payload == sent.payload, "payload of {i} changed");
        // Values byte for byte; NATS keeps no header order, so compare as sorted lists.
        ensure!(
            sorted(&received.headers) == sorted(&sent.headers),
            "headers of {i}"
        );
        ensure!(
            received.position.partition == partition_of_key[&(i % 7)],
            "partition of {i}"
        );
        if let Some(previous) = last_of_key.insert(i % 7, i) {
            ensure!(previous < i, "key {} saw {i} after {previous}", i % 7);
        }
        received.ack.ack().await?;
    }
    consumer.close().await?;
    Ok(())
}

fn sorted(headers: &Headers) -> Vec<(&str, &[u8])> {
    let mut list: Vec<_> = headers
        .iter()
        .map(|(name, value)| (name, value.as_ref()))
        .collect();
    list.sort_unstable();
    list
}

async fn redelivers_only_unacknowledged_records_after_restart(kind: Kind) -> anyhow::Result<()> {
    let bus = TestBus::new(kind, &[])?;
    let publisher = bus.publisher().await?;
    for i in 0..18 {
        publisher.publish(record(i, 5)).await?;
    }
    // Acknowledge the first half of what each partition delivers: a committable prefix, so
    // every implementation must redeliver exactly the other half.
    let mut first = bus.consumer().await?;
    let mut per_partition: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for _ in 0..18 {
        let received = next_record(&mut first).await?;
        per_partition
            .entry(received.position.partition)
            .or_default()
            .push(received);
    }
    let mut unacked = BTreeSet::new();
    for records in per_partition.into_values() {
        let half = records.len() / 2;
        for (n, received) in records.into_iter().enumerate() {
            if n < half {
                received.ack.ack().await?;
            } else {
                unacked.insert(index(&received)?);
            }
        }
    }
    first.close().await?;

    let mut second = bus.consumer().await?;
    let mut redelivered = BTreeSet::new();
    while redelivered != unacked {
        let received = next_record(&mut second).await?;
        let i = index(&received)?;
        ensure!(
            unacked.contains(&i),
            "acknowledged record {i} was delivered again"
        );
        redelivered.insert(i);
        received.ack.ack().await?;
    }
    second.close().await?;
    Ok(())
}

async fn dead_letters_keep_the_record_and_add_the_dlq_headers(kind: Kind) -> anyhow::Result<()> {
    let bus = TestBus::new(kind, &[])?;
    let publisher = bus.publisher().await?;
    publisher.publish(record(7, 3)).await?;
    let mut consumer = bus.consumer().await?;
    let failed = next_record(&mut consumer).await?;
    let failure = DeadLetter {
        class: FailureClass::Permanent,
        error: "mapping setting has no value \"Shipped\"".into(),
        attempts: 3,
    };
    publisher.dead_letter(&failed, &failure).await?;
    let letter = read_dlq(&bus).await?;

    let sent = record(7, 3);
    ensure!(
        letter.key == sent.key && letter.payload == sent.payload,
        "record changed"
    );
    for (name, value) in sent.headers.iter() {
        ensure!(
            letter.headers.get(name) == Some(value),
            "header {name} lost"
        );
    }
    let header = |name: &str| letter.headers.get_str(name).unwrap_or_default().to_owned();
    ensure!(header(headers::DLQ_ERROR_CLASS) == "permanent");
    ensure!(header(headers::DLQ_ERROR) == failure.error);
    ensure!(header(headers::DLQ_ATTEMPTS) == "3");
    ensure!(header(headers::DLQ_SOURCE_TOPIC) == *failed.source);
    ensure!(header(headers::DLQ_SOURCE_PARTITION) == failed.position.partition.to_string());
    ensure!(header(headers::DLQ_SOURCE_OFFSET) == failed.position.offset.to_string());
    humantime::parse_rfc3339(&header(headers::DLQ_FAILED_AT))?;
    failed.ack.ack().await?;
    consumer.close().await?;
    Ok(())
}

async fn read_dlq(bus: &TestBus) -> anyhow::Result<OutboundRecord> {
    let mut letters = match bus.kind {
        Kind::Memory => bus.memory.dead_letters(),
        Kind::Kafka => {
            let kafka = bus.config.kafka.clone();
            tokio::task::spawn_blocking(move || {
                e2e_tests::kafka::read_topic(&kafka.brokers.join(","), &kafka.dlq_topic, 1)
            })
            .await??
        }
        Kind::Nats => e2e_tests::nats::read_subject(&bus.config.nats, "dlq").await?,
    };
    ensure!(letters.len() == 1, "{} dead letters", letters.len());
    Ok(letters.remove(0))
}

/// Kafka and in-memory commit offsets: out-of-order acks must commit exactly the contiguous
/// acknowledged prefix at every step.
mod out_of_order_acks_commit_the_contiguous_prefix {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn kafka() -> anyhow::Result<()> {
        check(Kind::Kafka).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory() -> anyhow::Result<()> {
        check(Kind::Memory).await
    }

    async fn check(kind: Kind) -> anyhow::Result<()> {
        let bus = TestBus::new(kind, &[])?;
        let publisher = bus.publisher().await?;
        // One key, so one partition with offsets o1..o5 in order.
        let mut positions = Vec::new();
        for i in 0..5 {
            positions.push(publisher.publish(record(i, 1)).await?);
        }
        let partition = positions[0].partition;
        let offset = |n: usize| positions[n - 1].offset;
        let mut consumer = bus.consumer().await?;
        let mut handles = BTreeMap::new();
        for _ in 0..5 {
            let received = next_record(&mut consumer).await?;
            handles.insert(received.position, received.ack);
        }
        let mut ack = |n: usize| {
            handles
                .remove(&Position {
                    partition,
                    offset: offset(n),
                })
                .unwrap()
        };
        for (acked, expected) in [
            (1, offset(2)),
            (3, offset(2)),
            (5, offset(2)),
            (4, offset(2)),
            (2, offset(5) + 1),
        ] {
            ack(acked).ack().await?;
            consumer.commit().await?;
            let committed = committed_offset(&bus, partition).await?;
            ensure!(
                committed == expected,
                "after ack {acked}: committed {committed}, expected {expected}"
            );
        }
        consumer.close().await?;
        Ok(())
    }

    async fn committed_offset(bus: &TestBus, partition: u32) -> anyhow::Result<u64> {
        match bus.kind {
            Kind::Memory => {
                Ok(bus.memory.committed(&bus.config.kafka.group_id)[partition as usize])
            }
            Kind::Kafka => e2e_tests::kafka::committed_offset(&bus.config.kafka, partition),
            Kind::Nats => unreachable!("NATS acknowledges messages, it has no offsets"),
        }
    }
}
