//! Processor processes against the real Kafka broker: killed mid-run and restarted. The
//! recording processor and its record files also serve the NATS process tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, ensure};
use common::bus::{Headers, OutboundRecord, headers};
use e2e_tests::bus::{Kind, PARTITIONS, TestBus, eventually};
use e2e_tests::process::{Process, spawn};

const RECORDS: usize = 3000;
const KEYS: usize = 50;

/// Publishes the test records (`RECORDS` over `KEYS` keys); returns their positions.
async fn publish_all(bus: &TestBus) -> anyhow::Result<BTreeSet<(u32, u64)>> {
    let publisher = bus.publisher().await?;
    let mut published = BTreeSet::new();
    for i in 0..RECORDS {
        let position = publisher
            .publish(OutboundRecord {
                key: format!("order-{}", i % KEYS).into(),
                payload: format!(r#"{{"i":{i}}}"#).into(),
                headers: Headers::new().with(headers::EVENT_NAME, "test"),
            })
            .await?;
        published.insert((position.partition, position.offset));
    }
    Ok(published)
}

/// Starts the recording processor on `bus` (5 ms per handler call), appending to `file`.
fn start(bus: &TestBus, file: &Path) -> anyhow::Result<Process> {
    start_with(bus, file, 5)
}

/// Starts the recording processor with `latency_ms` per handler call.
fn start_with(bus: &TestBus, file: &Path, latency_ms: u64) -> anyhow::Result<Process> {
    start_on(bus, file, latency_ms, &[])
}

/// Starts the recording processor on `bus` (Kafka or NATS, named as `bus` names them), with
/// `latency_ms` per handler call and `extra` settings on top.
pub(crate) fn start_on(
    bus: &TestBus,
    file: &Path,
    latency_ms: u64,
    extra: &[(&str, String)],
) -> anyhow::Result<Process> {
    let mut env: Vec<(&str, String)> = match bus.kind {
        Kind::Nats => {
            let nats = &bus.config.nats;
            vec![
                ("BUS", "nats".into()),
                ("NATS_URL", nats.urls[0].expose().to_string()),
                ("NATS_STREAM", nats.stream.clone()),
                ("NATS_SUBJECT_PREFIX", nats.subject_prefix.clone()),
                ("NATS_PARTITIONS", nats.partitions.to_string()),
                ("NATS_CONSUMER_PREFIX", nats.consumer_prefix.clone()),
                ("NATS_ACK_WAIT_SECS", nats.ack_wait.as_secs().to_string()),
                ("NATS_MAX_DELIVER", nats.max_deliver.to_string()),
                (
                    "NATS_PIN_TIMEOUT_SECS",
                    nats.pin_timeout.as_secs().to_string(),
                ),
                (
                    "NATS_STANDBY_DELAY_SECS",
                    nats.standby_delay.as_secs().to_string(),
                ),
            ]
        }
        Kind::Kafka | Kind::Memory => {
            let kafka = &bus.config.kafka;
            vec![
                ("BUS", "kafka".into()),
                ("KAFKA_BROKERS", kafka.brokers.join(",")),
                ("KAFKA_TOPIC", kafka.topic.clone()),
                ("KAFKA_DLQ_TOPIC", kafka.dlq_topic.clone()),
                ("KAFKA_GROUP_ID", kafka.group_id.clone()),
                ("KAFKA_COMMIT_INTERVAL_MS", "100".into()),
                // A killed member holds its partitions until its session times out: keep it
                // short.
                (
                    "KAFKA_PROPERTIES",
                    "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
                ),
            ]
        }
    };
    env.extend([
        ("PROCESSOR_MAX_IN_FLIGHT", "16".into()),
        ("RECORD_FILE", file.display().to_string()),
        ("HANDLER_LATENCY_MS", latency_ms.to_string()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    spawn(Path::new(env!("CARGO_BIN_EXE_recording-processor")), &env)
}

/// (partition, offset, key) per line of the record file.
pub(crate) fn calls(file: &Path) -> anyhow::Result<Vec<(u32, u64, String)>> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let (partition, offset, key) = (parts.next(), parts.next(), parts.next());
            Ok((
                partition.context("partition")?.parse()?,
                offset.context("offset")?.parse()?,
                key.context("key")?.to_owned(),
            ))
        })
        .collect()
}

/// Per key, offsets strictly increase within one process run.
pub(crate) fn in_key_order(run: &[(u32, u64, String)]) -> anyhow::Result<()> {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, offset, key) in run {
        if let Some(previous) = last.insert(key, *offset) {
            ensure!(
                previous < *offset,
                "key {key} saw offset {offset} after {previous}"
            );
        }
    }
    Ok(())
}

/// Per key, no record is handled for the first time after a newer one. Replays of records
/// already handled are allowed: a partition revoked and assigned again restarts at its
/// committed offset, the first record not yet acknowledged, and records of other keys behind
/// that gap that were already done run again (in order).
pub(crate) fn in_key_order_allowing_replays(run: &[(u32, u64, String)]) -> anyhow::Result<()> {
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen: BTreeSet<(&str, u64)> = BTreeSet::new();
    for (_, offset, key) in run {
        let first_time = seen.insert((key.as_str(), *offset));
        match newest.get(key.as_str()) {
            Some(previous) if *offset <= *previous => {
                ensure!(
                    !first_time,
                    "key {key} saw new offset {offset} after {previous}"
                );
            }
            _ => {
                newest.insert(key, *offset);
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_processor_loses_nothing_and_redoes_only_uncommitted_records() -> anyhow::Result<()>
{
    let bus = TestBus::new(Kind::Kafka, &[])?;
    let published = publish_all(&bus).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("calls.log");

    // First run: killed (SIGKILL) a third of the way through.
    let first = start(&bus, &file)?;
    eventually("a third of the records to be processed", || async {
        Ok(calls(&file)?.len() >= RECORDS / 3)
    })
    .await?;
    first.kill()?;
    let run1 = calls(&file)?;
    let mut committed = Vec::new();
    for partition in 0..PARTITIONS {
        committed.push(e2e_tests::kafka::committed_offset(
            &bus.config.kafka,
            partition,
        )?);
    }

    // Second run: from the committed offsets to the end, then a clean stop.
    let second = start(&bus, &file)?;
    eventually("every record to be processed", || async {
        let done: BTreeSet<(u32, u64)> =
            calls(&file)?.into_iter().map(|(p, o, _)| (p, o)).collect();
        Ok(done == published)
    })
    .await?;
    second.terminate()?;

    let all = calls(&file)?;
    let run2 = &all[run1.len()..];
    in_key_order(&run1)?;
    in_key_order(run2)?;
    // The second run starts exactly at what the first committed: nothing committed is redone,
    // and whatever was done twice lies after the commit.
    for (partition, offset, _) in run2 {
        ensure!(
            *offset >= committed[*partition as usize],
            "offset {offset} of partition {partition} was redone although committed ({})",
            committed[*partition as usize]
        );
    }
    let redone = run2
        .iter()
        .filter(|(p, o, _)| run1.iter().any(|(p1, o1, _)| p1 == p && o1 == o));
    let redone = redone.count();
    ensure!(
        redone < RECORDS / 3,
        "{redone} records redone: more than the uncommitted tail"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processors_share_the_work_and_a_leaving_one_hands_over_cleanly() -> anyhow::Result<()>
{
    let bus = TestBus::new(Kind::Kafka, &[])?;
    let published = publish_all(&bus).await?;
    let dir = tempfile::tempdir()?;
    let (file_a, file_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    // Slow enough that neither can finish alone before the other has joined.
    let a = start_with(&bus, &file_a, 20)?;
    let b = start_with(&bus, &file_b, 20)?;
    eventually("both instances to be working", || async {
        Ok(!calls(&file_a)?.is_empty() && !calls(&file_b)?.is_empty())
    })
    .await?;
    // A leaves: it drains and commits, and B takes over its partitions.
    a.terminate()?;
    eventually("every record to be processed", || async {
        let done: BTreeSet<(u32, u64)> = calls(&file_a)?
            .into_iter()
            .chain(calls(&file_b)?)
            .map(|(p, o, _)| (p, o))
            .collect();
        Ok(done == published)
    })
    .await?;
    b.terminate()?;
    // Group changes (joining, leaving) may replay the tail behind an unfinished record, but
    // never hand a key a new record older than one it has seen.
    in_key_order_allowing_replays(&calls(&file_a)?)?;
    in_key_order_allowing_replays(&calls(&file_b)?)?;
    Ok(())
}
