//! The processor engine against the real Kafka broker, with its baselines in the same run.
//!
//! 1. Publishes a backlog of keyed webhook records (10,000 distinct order refs) to a fresh
//!    12-partition topic.
//! 2. The broker's consume ceiling: a raw `rdkafka` consumer reading records as fast as it can.
//! 3. `bench-processor` processes with a handler latency of 20 ms and 512 handler calls in
//!    flight, then with 12 in flight (the partition-serial baseline an ordinary consumer loop
//!    gives), each in a fresh consumer group.
//! 4. `bench-processor` drains the whole backlog with an instant handler: CPU per record and
//!    peak RSS of the process.
//!
//! With `BENCH_BASELINE_DIR` naming another build's release directory (say, the previous
//! commit's `target/release`), steps 3 (at 512 in flight) and 4 run that build's
//! `bench-processor` too, alternating which goes first in each of `ROUNDS` rounds, and end with
//! the medians' ratios: how a change to the engine is proven on a noisy machine.
//!
//! Run it with `./scripts/bench engine` (which starts a broker), or
//! `engine-bench BROKERS [BACKLOG] [WIDE_RECORDS] [SERIAL_RECORDS] [ROUNDS]`.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::kafka::{create_topic, records_held, webhook_record};
use bench::median;
use common::bus::{Publisher, memory::MemoryBus};
use common::config::Config;
use futures::StreamExt as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

const PARTITIONS: i32 = 12;
const KEYS: usize = 10_000;
const LATENCY_MS: u64 = 20;
const WIDE: u64 = 512;
const SERIAL: u64 = 12;

struct Settings {
    brokers: String,
    backlog: usize,
    wide_records: usize,
    serial_records: usize,
    rounds: usize,
}

fn settings() -> anyhow::Result<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize, default: usize| -> anyhow::Result<usize> {
        args.get(index)
            .map_or(Ok(default), |text| text.parse().context("a number"))
    };
    Ok(Settings {
        brokers: args.first().cloned().context(
            "usage: engine-bench BROKERS [BACKLOG] [WIDE_RECORDS] [SERIAL_RECORDS] [ROUNDS]",
        )?,
        backlog: number(1, 1_000_000)?,
        wide_records: number(2, 150_000)?,
        serial_records: number(3, 6_000)?,
        rounds: number(4, 1)?.max(1),
    })
}

async fn publish_backlog(settings: &Settings, topic: &str) -> anyhow::Result<f64> {
    let env: HashMap<String, String> = [
        ("KAFKA_BROKERS", settings.brokers.as_str()),
        ("KAFKA_TOPIC", topic),
        ("BUS_PUBLISH_TIMEOUT_MS", "60000"),
        // tansu 0.6.0 answers a fetch from an offset inside a record batch with the *next*
        // batch, silently skipping the rest of the one asked for (real Kafka returns the
        // batch and the client skips ahead). Consumers fetch mid-batch after a pause, a seek
        // or a restart from a committed offset, so the backlog is written one record per
        // batch to keep the drain honest on this broker.
        ("KAFKA_PROPERTIES", "batch.num.messages=1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let config = Config::from_sources(&env, None)?.bus;
    let publisher = Publisher::connect(&config, &MemoryBus::default()).await?;
    let started = Instant::now();
    let mut results = futures::stream::iter(0..settings.backlog)
        .map(|i| publisher.publish(webhook_record(i, KEYS)))
        .buffer_unordered(2_000);
    let mut done = 0;
    while let Some(result) = results.next().await {
        result?;
        done += 1;
        if done % 200_000 == 0 {
            println!("  published {done}");
        }
    }
    Ok(settings.backlog as f64 / started.elapsed().as_secs_f64())
}

/// Reads the whole topic with a bare consumer, to the end of every partition: how many records
/// a consumer can actually read, and at what rate (from its first record to its last).
fn consume_ceiling(brokers: &str, topic: &str) -> anyhow::Result<(usize, usize, f64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("ceiling-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    let mut last = Instant::now();
    let mut seen = 0;
    let mut positions = std::collections::HashSet::new();
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < PARTITIONS as usize {
        anyhow::ensure!(Instant::now() < deadline, "the ceiling run timed out");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                positions.insert((message.partition(), message.offset()));
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                seen += 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |first| last - first);
    Ok((seen, positions.len(), seen as f64 / elapsed.as_secs_f64()))
}

/// What one `bench-processor` run reported.
struct Run {
    rate: f64,
    cpu_us: f64,
    peak_rss_mib: f64,
    samples: Vec<f64>,
}

fn run_processor(
    exe: &Path,
    brokers: &str,
    topic: &str,
    in_flight: u64,
    latency_ms: u64,
    records: usize,
) -> anyhow::Result<Run> {
    let output = std::process::Command::new(exe)
        .env("KAFKA_BROKERS", brokers)
        .env("KAFKA_TOPIC", topic)
        .env(
            "KAFKA_GROUP_ID",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("PROCESSOR_MAX_IN_FLIGHT", in_flight.to_string())
        .env("BENCH_RECORDS", records.to_string())
        .env("BENCH_LATENCY_MS", latency_ms.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "bench-processor failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .last()
        .context("bench-processor printed nothing")?;
    let report: serde_json::Value = serde_json::from_str(line)?;
    let number = |name: &str| report[name].as_f64().unwrap_or_default();
    Ok(Run {
        rate: number("records_per_second"),
        cpu_us: number("cpu_us_per_record"),
        peak_rss_mib: number("peak_rss_mib"),
        samples: report["rss_samples_mib"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A build of `bench-processor` under test.
struct Build {
    label: &'static str,
    exe: PathBuf,
}

/// This build's `bench-processor`, and the baseline's when `BENCH_BASELINE_DIR` names one.
fn builds() -> anyhow::Result<Vec<Build>> {
    let mut builds = vec![Build {
        label: "this build",
        exe: std::env::current_exe()?.with_file_name("bench-processor"),
    }];
    if let Some(dir) = std::env::var_os("BENCH_BASELINE_DIR") {
        let exe = PathBuf::from(dir).join("bench-processor");
        anyhow::ensure!(
            exe.exists(),
            "BENCH_BASELINE_DIR has no bench-processor: {} (build it with \
             `cargo build --release -p bench` in the baseline's checkout)",
            exe.display()
        );
        builds.push(Build {
            label: "baseline",
            exe,
        });
    }
    Ok(builds)
}

/// The builds' indices in the order round `round` runs them: alternating, so neither build
/// always meets the broker (or the machine) in the same state.
fn round_order(round: usize, builds: usize) -> impl Iterator<Item = usize> {
    (0..builds).map(move |i| {
        if round.is_multiple_of(2) {
            i
        } else {
            builds - 1 - i
        }
    })
}

/// The median of one figure over runs.
fn median_of(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    median(&mut runs.iter().map(figure).collect::<Vec<_>>())
}

/// Each build's runs, in the order of `builds`.
type PerBuild = Vec<Vec<Run>>;

/// Every round's runs of every build: at 512 in flight, then draining the whole backlog.
fn run_rounds(
    settings: &Settings,
    builds: &[Build],
    topic: &str,
    readable: usize,
) -> anyhow::Result<(PerBuild, PerBuild)> {
    let mut wide: Vec<Vec<Run>> = builds.iter().map(|_| Vec::new()).collect();
    let mut drain: Vec<Vec<Run>> = builds.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for index in round_order(round, builds.len()) {
            let build = &builds[index];
            let run = run_processor(
                &build.exe,
                &settings.brokers,
                topic,
                WIDE,
                LATENCY_MS,
                settings.wide_records,
            )?;
            println!(
                "  round {}, {}: in flight {WIDE}, L = {LATENCY_MS} ms: {:.0} records/s",
                round + 1,
                build.label,
                run.rate
            );
            wide[index].push(run);
        }
        for index in round_order(round, builds.len()) {
            let build = &builds[index];
            let run = run_processor(&build.exe, &settings.brokers, topic, WIDE, 0, readable)?;
            println!(
                "  round {}, {}: drain, instant handler: {:.0} records/s, CPU {:.2} us/record, \
                 peak RSS {:.0} MiB",
                round + 1,
                build.label,
                run.rate,
                run.cpu_us,
                run.peak_rss_mib
            );
            drain[index].push(run);
        }
    }
    Ok((wide, drain))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = settings()?;
    let builds = builds()?;
    let topic = create_topic(&settings.brokers, PARTITIONS).await?;
    println!(
        "engine: {} records, {KEYS} keys, {PARTITIONS} partitions, handler latency {LATENCY_MS} ms, \
         {} round(s) of {}",
        settings.backlog,
        settings.rounds,
        builds
            .iter()
            .map(|b| b.label)
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let publish_rate = publish_backlog(&settings, &topic).await?;
    println!("backlog published at {publish_rate:.0} records/s");
    let (brokers, held_topic) = (settings.brokers.clone(), topic.clone());
    let held = tokio::task::spawn_blocking(move || records_held(&brokers, &held_topic, PARTITIONS))
        .await??;
    if held != settings.backlog {
        println!(
            "WARNING: the broker acknowledged {} records, its watermarks span {held}",
            settings.backlog
        );
    }

    let (brokers, ceiling_topic) = (settings.brokers.clone(), topic.clone());
    let (readable, distinct, ceiling) =
        tokio::task::spawn_blocking(move || consume_ceiling(&brokers, &ceiling_topic)).await??;
    println!(
        "consume ceiling (bare consumer reading the whole topic): {ceiling:.0} records/s; \
         it read {readable} records at {distinct} distinct offsets"
    );

    let (wide, drain) = run_rounds(&settings, &builds, &topic, readable)?;
    let serial = run_processor(
        &builds[0].exe,
        &settings.brokers,
        &topic,
        SERIAL,
        LATENCY_MS,
        settings.serial_records,
    )?;

    report(&settings, ceiling, readable, &serial, &wide, &drain);
    Ok(())
}

/// The medians of this build's runs against the bound, the ceiling and the serial baseline,
/// and their ratios to the baseline build's when there is one.
fn report(
    settings: &Settings,
    ceiling: f64,
    readable: usize,
    serial: &Run,
    wide: &[Vec<Run>],
    drain: &[Vec<Run>],
) {
    let wide_rate = median_of(&wide[0], |run| run.rate);
    let bound = WIDE as f64 * 1000.0 / LATENCY_MS as f64;
    let reference = bound.min(ceiling);
    println!(
        "in flight {WIDE}: {wide_rate:.0} records/s (median; {} records a run)",
        settings.wide_records
    );
    println!(
        "in flight {SERIAL}: {:.0} records/s ({} records), the partition-serial baseline",
        serial.rate, settings.serial_records
    );
    println!(
        "ratio to min(theoretical {bound:.0}/s, ceiling {ceiling:.0}/s): {:.3} (target >= 0.8)",
        wide_rate / reference
    );
    println!(
        "ratio to the partition-serial baseline: {:.1}x (target >= 10x)",
        wide_rate / serial.rate
    );

    let samples: Vec<f64> = drain[0]
        .iter()
        .flat_map(|run| run.samples.clone())
        .collect();
    let low = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let high = samples.iter().copied().fold(0.0, f64::max);
    println!(
        "drain of all {readable} readable records, instant handler (medians): {:.0} records/s, \
         CPU {:.2} us/record (target <= 20), peak RSS {:.0} MiB (target < 200), RSS during the \
         drains {low:.0}-{high:.0} MiB over {} samples",
        median_of(&drain[0], |run| run.rate),
        median_of(&drain[0], |run| run.cpu_us),
        median_of(&drain[0], |run| run.peak_rss_mib),
        samples.len()
    );
    if wide.len() > 1 {
        let ratio = |runs: &[Vec<Run>], figure: fn(&Run) -> f64| {
            median_of(&runs[0], figure) / median_of(&runs[1], figure)
        };
        println!(
            "this build / baseline (medians of {} rounds): records/s at {WIDE} in flight {:.3}; \
             drain records/s {:.3}, CPU per record {:.3}, peak RSS {:.3}",
            settings.rounds,
            ratio(wide, |run| run.rate),
            ratio(drain, |run| run.rate),
            ratio(drain, |run| run.cpu_us),
            ratio(drain, |run| run.peak_rss_mib),
        );
    }
}
