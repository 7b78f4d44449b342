//! Kafka fetching paused under back-pressure, across a rebalance: a partition that leaves
//! while fetching is paused and comes back after it resumed must fetch again (librdkafka keeps
//! the application's pause of a partition across a revoke and a re-assign).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::ensure;
use common::bus::{Consumer, Delivery, Publisher, partition_for_key};
use e2e_tests::bus::{Kind, TestBus, eventually, index, record};
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;

const KEYS: usize = 1_000;

/// What a reader saw: its current assignment and the records it took.
#[derive(Default)]
struct Seen {
    assigned: BTreeSet<u32>,
    records: BTreeSet<usize>,
}

/// Reads a consumer in the background: assignment changes always, records only while
/// `take` says so (a consumer whose application fell behind).
struct Reader {
    seen: Arc<Mutex<Seen>>,
    take: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<Consumer>>,
}

impl Reader {
    fn start(mut consumer: Consumer, take: bool) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (take, taking) = watch::channel(take);
        let (stop, mut stopping) = watch::channel(false);
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut taking = taking;
            loop {
                let records = *taking.borrow();
                let delivery = tokio::select! {
                    delivery = consumer.next_change_or_record(records) => delivery?,
                    _ = taking.changed() => continue,
                    _ = stopping.changed() => return Ok(consumer),
                };
                match delivery {
                    Delivery::Record(received) => {
                        shared.lock().unwrap().records.insert(index(&received)?);
                        received.ack.ack().await?;
                    }
                    Delivery::Assigned(partitions) => {
                        shared.lock().unwrap().assigned.extend(partitions);
                    }
                    Delivery::Revoked(revocation) => {
                        let mut seen = shared.lock().unwrap();
                        for partition in &revocation.partitions {
                            seen.assigned.remove(partition);
                        }
                    }
                }
            }
        });
        Self {
            seen,
            take,
            stop,
            task,
        }
    }

    fn assigned(&self) -> BTreeSet<u32> {
        self.seen.lock().unwrap().assigned.clone()
    }

    async fn close(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        let consumer = self.task.await??;
        Ok(consumer.close().await?)
    }
}

async fn publish(publisher: &Publisher, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    let sends = range.map(|i| publisher.publish(record(i, KEYS)));
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_that_comes_back_after_a_pause_fetches_again() -> anyhow::Result<()> {
    let mock = MockCluster::new(1)?;
    mock.create_topic("webhooks", 2, 1)?;
    let bus = TestBus::new(
        Kind::Kafka,
        &[
            ("KAFKA_BROKERS", &mock.bootstrap_servers()),
            ("KAFKA_TOPIC", "webhooks"),
            ("KAFKA_CREATE_TOPICS", "false"),
            // librdkafka's mock cluster keeps a member that left until its session times out.
            (
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,heartbeat.interval.ms=500",
            ),
        ],
    )?;
    let publisher = bus.publisher().await?;
    // More than a consumer holds back before it pauses fetching.
    publish(&publisher, 0..7_000).await?;
    let first = bus.consumer().await?;
    let status = first.status();
    let first = Reader::start(first, false);
    eventually("the first member to pause fetching", || async {
        Ok(status.fetch_paused())
    })
    .await?;
    // A second member takes a partition while the first is paused.
    let second = Reader::start(bus.consumer().await?, true);
    eventually("one partition each", || async {
        Ok(first.assigned().len() == 1 && second.assigned().len() == 1)
    })
    .await?;
    let moved = *second.assigned().first().unwrap_or(&0);
    // The first catches up and resumes fetching (its one partition), then the second leaves
    // and the partition comes back to the first.
    first.take.send_replace(true);
    eventually("the first member to resume fetching", || async {
        Ok(!status.fetch_paused())
    })
    .await?;
    second.close().await?;
    eventually("the partition back with the first member", || async {
        Ok(first.assigned().len() == 2)
    })
    .await?;
    // New records of that partition must reach it.
    let fresh: Vec<usize> = (100_000..)
        .filter(|i| partition_for_key(record(*i, KEYS).key.as_ref(), 2) == moved)
        .take(20)
        .collect();
    for i in &fresh {
        publisher.publish(record(*i, KEYS)).await?;
    }
    eventually("the new records of the returned partition", || async {
        let seen = first.seen.lock().unwrap();
        Ok(fresh.iter().all(|i| seen.records.contains(i)))
    })
    .await?;
    let seen = first.seen.lock().unwrap().records.len();
    ensure!(seen > 20, "the first member saw only {seen} records");
    first.close().await?;
    Ok(())
}
