//! Recording processor processes on NATS JetStream: records held for longer than `ack_wait`
//! are handled once, a killed instance's records are finished by the next, and instances with
//! overlapping (and default) ownership never run one key in two places at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::bus::{Headers, OutboundRecord, headers};
use e2e_tests::bus::{Kind, TestBus, eventually};

use crate::processor_process::{calls, in_key_order_allowing_replays, start_on};

/// Publishes records `range`, keys `order-{i % keys}`; returns their positions.
async fn publish(
    bus: &TestBus,
    range: std::ops::Range<usize>,
    keys: usize,
) -> anyhow::Result<BTreeSet<(u32, u64)>> {
    let publisher = bus.publisher().await?;
    let mut published = BTreeSet::new();
    for i in range {
        let position = publisher
            .publish(OutboundRecord {
                key: format!("order-{}", i % keys).into(),
                payload: format!(r#"{{"i":{i}}}"#).into(),
                headers: Headers::new()
                    .with(headers::EVENT_NAME, "test")
                    .with(headers::EVENT_ID, format!("event-{i}")),
            })
            .await?;
        published.insert((position.partition, position.offset));
    }
    Ok(published)
}

/// Every (partition, offset) handled, over all files.
fn done(files: &[PathBuf]) -> anyhow::Result<BTreeSet<(u32, u64)>> {
    let mut all = BTreeSet::new();
    for file in files {
        all.extend(calls(file)?.into_iter().map(|(p, o, _)| (p, o)));
    }
    Ok(all)
}

/// One handler call of one process: its key, position and time span.
struct Span {
    process: usize,
    key: String,
    partition: u32,
    offset: u64,
    started: u128,
    ended: u128,
}

/// The record files merged into one timeline, by start time.
fn timeline(files: &[PathBuf]) -> anyhow::Result<Vec<Span>> {
    let mut spans = Vec::new();
    for (process, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            ensure!(parts.len() == 5, "record line {line:?}");
            spans.push(Span {
                process,
                partition: parts[0].parse()?,
                offset: parts[1].parse()?,
                key: parts[2].to_owned(),
                started: parts[3].parse()?,
                ended: parts[4].parse()?,
            });
        }
    }
    spans.sort_by_key(|span| span.started);
    Ok(spans)
}

/// No key is handled by two processes at once.
fn one_process_per_key_at_a_time(spans: &[Span]) -> anyhow::Result<()> {
    let mut last: BTreeMap<&str, &Span> = BTreeMap::new();
    for span in spans {
        if let Some(previous) = last.get(span.key.as_str()) {
            ensure!(
                previous.process == span.process || previous.ended <= span.started,
                "key {} ran in processes {} and {} at once (offsets {} and {})",
                span.key,
                previous.process,
                span.process,
                previous.offset,
                span.offset
            );
        }
        let keep = last
            .get(span.key.as_str())
            .is_some_and(|previous| previous.ended > span.ended);
        if !keep {
            last.insert(&span.key, span);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn records_held_past_ack_wait_are_handled_once_and_a_kill_loses_none() -> anyhow::Result<()> {
    let bus = TestBus::new(
        Kind::Nats,
        &[("NATS_ACK_WAIT_SECS", "1"), ("NATS_MAX_DELIVER", "3")],
    )?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("calls.log");
    let first_batch = publish(&bus, 0..20, 20).await?;
    // Every record takes five ack_waits; sixteen run at once, the rest wait their turn.
    let first = start_on(&bus, &file, 5000, &[])?;
    eventually("the first twenty records to be handled", || async {
        Ok(done(std::slice::from_ref(&file))? == first_batch)
    })
    .await?;
    let handled = calls(&file)?;
    ensure!(
        handled.len() == 20,
        "{} handler calls for 20 records: some were redelivered while held",
        handled.len()
    );
    let second_batch = publish(&bus, 20..40, 20).await?;
    eventually("the second batch to be under way", || async {
        Ok(calls(&file)?.len() > 20)
    })
    .await?;
    first.kill()?;
    let _second = start_on(&bus, &file, 5000, &[])?;
    let everything: BTreeSet<_> = first_batch.union(&second_batch).copied().collect();
    eventually("every record to be handled after the restart", || async {
        Ok(done(std::slice::from_ref(&file))? == everything)
    })
    .await?;
    in_key_order_allowing_replays(&calls(&file)?)?;
    Ok(())
}

/// Runs the recording processor with each of `ownerships` (`None`: the default, all) over one
/// stream, kills the busiest and checks the timeline.
async fn overlapping(ownerships: &[Option<&str>]) -> anyhow::Result<()> {
    let bus = TestBus::new(Kind::Nats, &[])?;
    let dir = tempfile::tempdir()?;
    let files: Vec<PathBuf> = (0..ownerships.len())
        .map(|i| dir.path().join(format!("{i}.log")))
        .collect();
    let mut processes = Vec::new();
    for (file, owned) in files.iter().zip(ownerships) {
        let extra: Vec<(&str, String)> = owned
            .map(|owned| vec![("NATS_OWNED_PARTITIONS", owned.to_owned())])
            .unwrap_or_default();
        processes.push(Some(start_on(&bus, file, 20, &extra)?));
    }
    let first = publish(&bus, 0..300, 30).await?;
    eventually("the first records to be handled", || async {
        Ok(done(&files)? == first)
    })
    .await?;
    let busiest = (0..files.len())
        .max_by_key(|i| calls(&files[*i]).map_or(0, |c| c.len()))
        .context("no process")?;
    processes[busiest].take().context("killed twice")?.kill()?;
    let killed = Instant::now();
    let second = publish(&bus, 300..600, 30).await?;
    let everything: BTreeSet<_> = first.union(&second).copied().collect();
    eventually("every record to be handled after the kill", || async {
        Ok(done(&files)? == everything)
    })
    .await?;
    // README's bound: the pin timeout (2 s here), then ack_wait (1 s) for what the killed one
    // held, plus the time to handle 300 records at 20 ms per key.
    let took = killed.elapsed();
    ensure!(took < Duration::from_secs(15), "hand-over took {took:?}");
    for process in processes.into_iter().flatten() {
        process.terminate()?;
    }
    let spans = timeline(&files)?;
    one_process_per_key_at_a_time(&spans)?;
    for file in &files {
        in_key_order_allowing_replays(&calls(file)?)?;
    }
    let merged: Vec<(u32, u64, String)> = spans
        .iter()
        .map(|s| (s.partition, s.offset, s.key.clone()))
        .collect();
    in_key_order_allowing_replays(&merged)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processors_with_overlapping_ownership_never_run_a_key_twice_at_once()
-> anyhow::Result<()> {
    overlapping(&[None, Some("0-1")]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processors_with_default_and_overlapping_ownership_hand_over_on_a_kill()
-> anyhow::Result<()> {
    overlapping(&[None, None, Some("1")]).await
}
