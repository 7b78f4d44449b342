//! Bus behaviour under faults and group changes: brokers down, commit errors, rebalances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::bus::{Consumer, Delivery, Publisher};
use e2e_tests::NatsServer;
use e2e_tests::bus::{Kind, TestBus, eventually, index, next_record, record};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::sync::oneshot;

const DEADLINE_MS: u64 = 1500;
/// Room for the scheduler beyond the publish deadline.
const SLACK: Duration = Duration::from_secs(2);

fn mock_kafka(
    topic: &str,
) -> anyhow::Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
    let mock = MockCluster::new(1)?;
    mock.create_topic(topic, 3, 1)?;
    Ok(mock)
}

/// One publish, which must fail within the publish deadline with a retryable error.
async fn publish_fails_in_time_as_retryable(publisher: &Publisher) -> anyhow::Result<()> {
    let started = Instant::now();
    let error = publisher
        .publish(record(1, 1))
        .await
        .expect_err("the broker is unreachable");
    let elapsed = started.elapsed();
    ensure!(error.is_retryable(), "not retryable: {error:?}");
    ensure!(
        elapsed < Duration::from_millis(DEADLINE_MS) + SLACK,
        "took {elapsed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_publish_to_a_down_broker_fails_within_its_deadline_as_retryable()
-> anyhow::Result<()> {
    let mock = mock_kafka("webhooks")?;
    let bus = TestBus::new(
        Kind::Kafka,
        &[
            ("KAFKA_BROKERS", &mock.bootstrap_servers()),
            ("KAFKA_TOPIC", "webhooks"),
            ("KAFKA_CREATE_TOPICS", "false"),
            ("BUS_PUBLISH_TIMEOUT_MS", &DEADLINE_MS.to_string()),
        ],
    )?;
    let publisher = bus.publisher().await?;
    publisher
        .publish(record(0, 1))
        .await
        .context("publish while the broker is up")?;

    mock.broker_down(1)?;
    publish_fails_in_time_as_retryable(&publisher).await?;

    mock.broker_up(1)?;
    eventually("publishing again once the broker is back", || async {
        Ok(publisher.publish(record(2, 1)).await.is_ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_publish_to_a_stopped_server_fails_within_its_deadline_as_retryable()
-> anyhow::Result<()> {
    let mut server = NatsServer::start()?;
    let bus = TestBus::new(
        Kind::Nats,
        &[
            ("NATS_URL", &server.url),
            ("BUS_PUBLISH_TIMEOUT_MS", &DEADLINE_MS.to_string()),
        ],
    )?;
    let publisher = bus.publisher().await?;
    publisher
        .publish(record(0, 1))
        .await
        .context("publish while the server runs")?;

    server.stop()?;
    publish_fails_in_time_as_retryable(&publisher).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_commit_failures_are_counted_and_retried() -> anyhow::Result<()> {
    let mock = mock_kafka("webhooks")?;
    let bus = TestBus::new(
        Kind::Kafka,
        &[
            ("KAFKA_BROKERS", &mock.bootstrap_servers()),
            ("KAFKA_TOPIC", "webhooks"),
            ("KAFKA_CREATE_TOPICS", "false"),
            ("KAFKA_COMMIT_INTERVAL_MS", "100"),
        ],
    )?;
    let publisher = bus.publisher().await?;
    let position = publisher.publish(record(0, 1)).await?;
    let mut consumer = bus.consumer().await?;
    let received = next_record(&mut consumer).await?;

    // The next three commits fail; the periodic commit must keep trying and count them.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    received.ack.ack().await?;
    let Consumer::Kafka(kafka) = &consumer else {
        unreachable!("a Kafka bus")
    };
    eventually(
        "the commit to succeed after the injected failures",
        || async {
            let committed =
                e2e_tests::kafka::committed_offset(&bus.config.kafka, position.partition)?;
            Ok(committed == position.offset + 1)
        },
    )
    .await?;
    ensure!(
        kafka.commit_failures() >= 3,
        "failures not surfaced: {}",
        kafka.commit_failures()
    );
    consumer.close().await?;
    Ok(())
}

/// Runs a consumer until told to stop: counts each record it sees in `seen`, acknowledges it,
/// and reports its assignment and revocations.
struct Member {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    state: Arc<Mutex<MemberState>>,
}

#[derive(Default)]
struct MemberState {
    assigned: Vec<u32>,
    revocations: usize,
}

impl Member {
    fn start(mut consumer: Consumer, seen: Arc<Mutex<BTreeMap<usize, usize>>>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let state = Arc::new(Mutex::new(MemberState::default()));
        let shared = Arc::clone(&state);
        let done = tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = &mut stopped => break,
                    delivery = consumer.next() => delivery?,
                };
                match delivery {
                    Delivery::Record(received) => {
                        *seen.lock().unwrap().entry(index(&received)?).or_default() += 1;
                        received.ack.ack().await?;
                    }
                    Delivery::Assigned(partitions) => shared.lock().unwrap().assigned = partitions,
                    Delivery::Revoked(revocation) => {
                        // Everything delivered was acknowledged at once: nothing to drain.
                        let mut state = shared.lock().unwrap();
                        state.revocations += 1;
                        state
                            .assigned
                            .retain(|p| !revocation.partitions.contains(p));
                        revocation.drained();
                    }
                }
            }
            consumer.close().await?;
            Ok(())
        });
        Self { stop, done, state }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.done.await?
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_group_members_split_partitions_and_hand_over_without_duplicates()
-> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Kafka, &[])?;
    let publisher = bus.publisher().await?;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let count_seen = |seen: &Arc<Mutex<BTreeMap<usize, usize>>>| seen.lock().unwrap().len();

    let first = Member::start(bus.consumer().await?, Arc::clone(&seen));
    for i in 0..30 {
        publisher.publish(record(i, 11)).await?;
    }
    eventually("the first member to take every record", || async {
        Ok(count_seen(&seen) == 30)
    })
    .await?;

    let second = Member::start(bus.consumer().await?, Arc::clone(&seen));
    eventually("the group to split the partitions", || async {
        let (a, b) = (first.state.lock().unwrap(), second.state.lock().unwrap());
        Ok(!a.assigned.is_empty() && !b.assigned.is_empty() && a.revocations > 0)
    })
    .await?;
    for i in 30..60 {
        publisher.publish(record(i, 11)).await?;
    }
    eventually("both members to take the rest", || async {
        Ok(count_seen(&seen) == 60)
    })
    .await?;

    first.stop().await?;
    second.stop().await?;
    let seen = seen.lock().unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(
        twice.is_empty(),
        "processed more than once after a clean hand-over: {twice:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_revoke_waits_for_in_flight_records_and_commits_them() -> anyhow::Result<()> {
    // Incremental (cooperative-sticky, the default) moves one of three partitions to the new
    // member; eager rebalancing, still available, revokes all three first.
    for (strategy, moved) in [(None, 1), (Some("range"), 3)] {
        revoke_waits_for_in_flight_records(strategy, moved)
            .await
            .with_context(|| format!("assignment strategy {strategy:?}"))?;
    }
    Ok(())
}

async fn revoke_waits_for_in_flight_records(
    strategy: Option<&str>,
    moved: usize,
) -> anyhow::Result<()> {
    let properties = strategy.map(|s| format!("partition.assignment.strategy={s}"));
    let extra: Vec<(&str, &str)> = properties
        .iter()
        .map(|p| ("KAFKA_PROPERTIES", p.as_str()))
        .collect();
    let bus = TestBus::new(Kind::Kafka, &extra)?;
    let publisher = bus.publisher().await?;
    for i in 0..12 {
        publisher.publish(record(i, 12)).await?;
    }
    // The first member takes everything and acknowledges nothing yet: all 12 are in flight.
    let mut first = bus.consumer().await?;
    let mut in_flight = Vec::new();
    while in_flight.len() < 12 {
        in_flight.push(next_record(&mut first).await?);
    }
    // A second member joins; the first must be told before its partitions go.
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let second = Member::start(bus.consumer().await?, Arc::clone(&seen));
    let revocation = loop {
        match tokio::time::timeout(e2e_tests::DEADLINE, first.next()).await?? {
            Delivery::Revoked(revocation) => break revocation,
            Delivery::Assigned(_) => {}
            Delivery::Record(received) => in_flight.push(received),
        }
    };
    ensure!(
        revocation.partitions.len() == moved,
        "revoked {:?}, expected {moved} partitions",
        revocation.partitions
    );
    // The hand-over waits for this: finish the work, then say so.
    for received in in_flight {
        received.ack.ack().await?;
    }
    revocation.drained();

    // Whoever owns each partition now must start after what was acknowledged during the drain:
    // only the new record may show up.
    let first = Member::start(first, Arc::clone(&seen));
    publisher.publish(record(100, 12)).await?;
    eventually("the new record to be consumed", || async {
        Ok(seen.lock().unwrap().contains_key(&100))
    })
    .await?;
    first.stop().await?;
    second.stop().await?;
    let old: Vec<usize> = seen
        .lock()
        .unwrap()
        .keys()
        .copied()
        .filter(|i| *i < 100)
        .collect();
    ensure!(
        old.is_empty(),
        "records acknowledged during the drain came back: {old:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_instances_consume_only_their_owned_partitions() -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[("NATS_OWNED_PARTITIONS", "0")])?;
    let mut rest_config = bus.config.clone();
    rest_config.nats.owned_partitions = vec![1, 2];
    let publisher = bus.publisher().await?;
    let mut expected: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
    for i in 0..30 {
        let position = publisher.publish(record(i, 10)).await?;
        expected.entry(position.partition).or_default().insert(i);
    }
    let mut owner_of_0 = bus.consumer().await?;
    let mut owner_of_rest = Consumer::connect(&rest_config, &bus.memory).await?;
    for (consumer, partitions) in [(&mut owner_of_0, vec![0]), (&mut owner_of_rest, vec![1, 2])] {
        let wanted: BTreeSet<usize> = partitions
            .iter()
            .flat_map(|p| expected.get(p).cloned().unwrap_or_default())
            .collect();
        let mut got = BTreeSet::new();
        while got.len() < wanted.len() {
            let received = next_record(consumer).await?;
            ensure!(
                partitions.contains(&received.position.partition),
                "foreign partition"
            );
            got.insert(index(&received)?);
            received.ack.ack().await?;
        }
        ensure!(got == wanted, "partitions {partitions:?}: got {got:?}");
    }
    owner_of_0.close().await?;
    owner_of_rest.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_in_progress_signals_hold_off_redelivery_of_long_work() -> anyhow::Result<()> {
    // The server redelivers after two seconds without an ack...
    let bus = TestBus::new(Kind::Nats, &[("NATS_ACK_WAIT_SECS", "2")])?;
    let publisher = bus.publisher().await?;
    publisher.publish(record(1, 1)).await?;
    let mut consumer = bus.consumer().await?;
    let received = next_record(&mut consumer).await?;
    // ...so nearly four seconds of work must keep telling it the work goes on.
    let work = async {
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            received.ack.in_progress().await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = work => result?,
        redelivery = next_record(&mut consumer) => {
            anyhow::bail!("redelivered during the work: {:?}", redelivery.map(|r| r.position));
        }
    }
    received.ack.ack().await?;
    consumer.close().await?;
    Ok(())
}
