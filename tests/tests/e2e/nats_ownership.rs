//! NATS JetStream ownership against a real nats-server with priority groups: what an instance
//! holds is kept, what it gives up goes on at once, one partition has one owner at a time and
//! a new owner starts in stream order, and the operator's stream and consumer settings stay.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_nats::jetstream::consumer::{AckPolicy, PriorityPolicy, pull};
use async_nats::jetstream::{self, stream};
use common::bus::{Consumer, InboundRecord};
use e2e_tests::bus::{Kind, TestBus, index, next_record, next_record_within, record};
use e2e_tests::{DEADLINE, NatsServer};

/// The server's view of one partition's durable consumer.
async fn consumer_info(bus: &TestBus, partition: u32) -> anyhow::Result<jetstream::consumer::Info> {
    let nats = &bus.config.nats;
    let client = async_nats::connect(nats.urls[0].expose().as_str()).await?;
    let stream = jetstream::new(client).get_stream(&nats.stream).await?;
    Ok(stream
        .consumer_info(format!("{}-{partition}", nats.consumer_prefix))
        .await?)
}

/// Publishes records `range` on one key (so one partition), in order; returns the partition.
async fn publish_one_key(bus: &TestBus, range: std::ops::Range<usize>) -> anyhow::Result<u32> {
    let publisher = bus.publisher().await?;
    let mut partition = 0;
    for i in range {
        let mut one = record(i, 1);
        one.key = "the-order".into();
        partition = publisher.publish(one).await?.partition;
    }
    Ok(partition)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_record_is_neither_redelivered_nor_dropped_whatever_ack_wait_and_max_deliver()
-> anyhow::Result<()> {
    let bus = TestBus::new(
        Kind::Nats,
        &[("NATS_ACK_WAIT_SECS", "1"), ("NATS_MAX_DELIVER", "2")],
    )?;
    bus.publisher().await?.publish(record(1, 1)).await?;
    let mut consumer = bus.consumer().await?;
    let held = next_record(&mut consumer).await?;
    // Four times ack_wait, twice past max_deliver's reach, and nobody signals progress by hand.
    let again = next_record_within(&mut consumer, Duration::from_secs(4)).await;
    ensure!(
        again.is_err(),
        "redelivered while held: {:?}",
        again.map(|r| r.delivery_count)
    );
    let info = consumer_info(&bus, held.position.partition).await?;
    ensure!(
        info.num_redelivered == 0,
        "the server redelivered it: {info:?}"
    );
    ensure!(info.num_ack_pending == 1, "no longer pending: {info:?}");
    held.ack.ack().await?;
    consumer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_given_up_is_redelivered_at_once_not_after_ack_wait() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[("NATS_ACK_WAIT_SECS", "60")])?;
    bus.publisher().await?.publish(record(7, 1)).await?;
    let mut consumer = bus.consumer().await?;
    let first = next_record(&mut consumer).await?;
    drop(first);
    let again = next_record_within(&mut consumer, Duration::from_secs(10))
        .await
        .context("a record given up waited for ack_wait (60 s)")?;
    ensure!(index(&again)? == 7, "another record");
    ensure!(
        again.delivery_count == 2,
        "delivery {}",
        again.delivery_count
    );
    again.ack.ack().await?;
    consumer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_owner_starts_with_what_a_dead_owner_held_in_stream_order() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[("NATS_ACK_WAIT_SECS", "2")])?;
    publish_one_key(&bus, 0..3).await?;
    let mut first = bus.consumer().await?;
    for expected in 0..3 {
        ensure!(index(&next_record(&mut first).await?)? == expected, "order");
    }
    // Killed holding all three: nothing closes, nothing is given back.
    drop(first);
    publish_one_key(&bus, 3..6).await?;
    let mut next = bus.consumer().await?;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let received = next_record(&mut next).await?;
        seen.push(index(&received)?);
        received.ack.ack().await?;
    }
    ensure!(
        seen == [0, 1, 2, 3, 4, 5],
        "the new owner ran the order's events as {seen:?}"
    );
    next.close().await?;
    Ok(())
}

/// Collects records from several consumers at once, acknowledging each after `work`.
async fn consume_together(
    consumers: &mut [Consumer],
    wanted: usize,
    work: Duration,
) -> anyhow::Result<Vec<BTreeMap<u32, BTreeSet<usize>>>> {
    let mut got = vec![BTreeMap::<u32, BTreeSet<usize>>::new(); consumers.len()];
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut total = 0;
    while total < wanted {
        let next = consumers.iter_mut().enumerate().map(|(i, consumer)| {
            Box::pin(async move {
                (
                    i,
                    next_record_within(consumer, Duration::from_millis(200)).await,
                )
            })
        });
        let ((i, result), _, _) = tokio::time::timeout_at(until, futures::future::select_all(next))
            .await
            .with_context(|| format!("only {total} of {wanted} records arrived"))?;
        let Ok(received): anyhow::Result<InboundRecord> = result else {
            continue;
        };
        tokio::time::sleep(work).await;
        ensure!(
            got[i]
                .entry(received.position.partition)
                .or_default()
                .insert(index(&received)?),
            "consumer {i} got {} twice",
            index(&received)?
        );
        received.ack.ack().await?;
        total += 1;
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_instances_never_share_a_partition_and_a_survivor_takes_over()
-> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[])?;
    let publisher = bus.publisher().await?;
    // Two instances owning everything (the default), a third owning partition 1 only.
    let mut only_1 = bus.config.clone();
    only_1.nats.owned_partitions = vec![1];
    only_1.nats.owned_explicitly = true;
    let mut consumers = vec![
        bus.consumer().await?,
        bus.consumer().await?,
        Consumer::connect(&only_1, &bus.memory).await?,
    ];
    for i in 0..60 {
        publisher.publish(record(i, 20)).await?;
    }
    let got = consume_together(&mut consumers, 60, Duration::from_millis(5)).await?;
    for partition in 0..e2e_tests::bus::PARTITIONS {
        let holders: Vec<usize> = (0..got.len())
            .filter(|i| got[*i].contains_key(&partition))
            .collect();
        ensure!(
            holders.len() == 1,
            "partition {partition} was consumed by {holders:?}"
        );
    }
    // Kill whoever holds the most; the others take over its partitions.
    let busiest = (0..got.len())
        .max_by_key(|i| got[*i].len())
        .context("no consumer")?;
    drop(consumers.remove(busiest));
    let killed = tokio::time::Instant::now();
    for i in 60..120 {
        publisher.publish(record(i, 20)).await?;
    }
    let after = consume_together(&mut consumers, 60, Duration::ZERO).await?;
    let all: BTreeSet<usize> = after
        .iter()
        .flat_map(|m| m.values().flatten().copied())
        .collect();
    ensure!(all == (60..120).collect(), "lost after the kill: {all:?}");
    // The documented bound: the pin timeout (2 s here) plus what a fenced start waits for.
    let took = killed.elapsed();
    ensure!(took < Duration::from_secs(12), "hand-over took {took:?}");
    for consumer in consumers {
        consumer.close().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_keeps_the_operators_stream_and_consumer_settings() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[("NATS_ACK_WAIT_SECS", "30")])?;
    let nats = &bus.config.nats;
    let client = async_nats::connect(nats.urls[0].expose().as_str()).await?;
    let context = jetstream::new(client);
    let stream = context
        .create_stream(stream::Config {
            name: nats.stream.clone(),
            subjects: vec![format!("{}.*", nats.subject_prefix)],
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages: 1_000_000,
            ..Default::default()
        })
        .await?;
    let partition = publish_one_key(&bus, 0..1).await?;
    // The operator's consumer for that partition waits 2 s for acks, not our 30.
    stream
        .create_consumer(pull::Config {
            durable_name: Some(format!("{}-{partition}", nats.consumer_prefix)),
            filter_subject: format!("{}.{partition}", nats.subject_prefix),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(2),
            max_deliver: 5,
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec!["processors".into()],
            priority_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .await?;
    let mut consumer = bus.consumer().await?;
    let held = next_record(&mut consumer).await?;
    // Held past the operator's ack_wait: the in-progress signals follow the consumer's own.
    let again = next_record_within(&mut consumer, Duration::from_secs(5)).await;
    ensure!(again.is_err(), "redelivered after the operator's ack_wait");
    held.ack.ack().await?;
    consumer.close().await?;

    let kept = context
        .get_stream(&nats.stream)
        .await?
        .info()
        .await?
        .config
        .clone();
    ensure!(
        kept.max_age == Duration::from_secs(7 * 24 * 3600) && kept.max_messages == 1_000_000,
        "the stream's settings were overwritten: {kept:?}"
    );
    let info = consumer_info(&bus, partition).await?;
    ensure!(
        info.config.ack_wait == Duration::from_secs(2) && info.config.max_deliver == 5,
        "the consumer's settings were overwritten: {:?}",
        info.config
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_priority_groups_is_refused_unless_ownership_is_explicit()
-> anyhow::Result<()> {
    let server = NatsServer::start_legacy()?;
    let bus = TestBus::new(Kind::Nats, &[("NATS_URL", server.url.as_str())])?;
    let refused = match bus.consumer().await {
        Ok(_) => anyhow::bail!("overlapping ownership accepted on a server without pinning"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        refused.contains("no priority groups") && refused.contains("NATS_OWNED_PARTITIONS"),
        "unclear refusal: {refused}"
    );
    let explicit = TestBus::new(
        Kind::Nats,
        &[
            ("NATS_URL", server.url.as_str()),
            ("NATS_OWNED_PARTITIONS", "0-2"),
        ],
    )?;
    explicit.publisher().await?.publish(record(3, 1)).await?;
    let mut consumer = explicit.consumer().await?;
    let received = next_record(&mut consumer).await?;
    ensure!(index(&received)? == 3, "another record");
    received.ack.ack().await?;
    consumer.close().await?;
    Ok(())
}
