//! Publish throughput of our Kafka publisher against a raw `rdkafka` `FutureProducer` doing the
//! same work in the same run: keyed ~600-byte records, `acks=all`, idempotent, every
//! acknowledgement awaited with many records in flight.
//!
//! Run it with `./scripts/bench publish` (which starts a broker), or against any broker:
//! `cargo run --release -p bench --bin publish -- BROKERS [RECORDS] [IN_FLIGHT] [ROUNDS]`.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::kafka::{create_topic, records_held, webhook_record};
use bench::median;
use common::bus::{OutboundRecord, Publisher, memory::MemoryBus};
use common::config::Config;
use futures::StreamExt as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 12;

struct Settings {
    brokers: String,
    records: usize,
    in_flight: usize,
    rounds: usize,
}

fn settings() -> anyhow::Result<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize, default: usize| -> anyhow::Result<usize> {
        args.get(index)
            .map_or(Ok(default), |text| text.parse().context("a number"))
    };
    Ok(Settings {
        brokers: args
            .first()
            .cloned()
            .context("usage: publish BROKERS [RECORDS] [IN_FLIGHT] [ROUNDS]")?,
        records: number(1, 50_000)?,
        in_flight: number(2, 1_000)?,
        rounds: number(3, 3)?,
    })
}

fn records(count: usize) -> Vec<OutboundRecord> {
    (0..count).map(|i| webhook_record(i, 10_000)).collect()
}

/// Says so when the topic's watermarks disagree with what the broker acknowledged.
async fn report_held(brokers: &str, topic: &str, acknowledged: usize) -> anyhow::Result<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let held =
        tokio::task::spawn_blocking(move || records_held(&brokers, &topic, PARTITIONS)).await??;
    if held != acknowledged {
        // tansu 0.6.0's watermarks can trail what it stores (every record reads back).
        println!("  note: {acknowledged} records acknowledged, the watermarks span {held}");
    }
    Ok(())
}

/// Records per second through our publisher.
async fn ours(settings: &Settings, records: &[OutboundRecord]) -> anyhow::Result<f64> {
    let topic = create_topic(&settings.brokers, PARTITIONS).await?;
    let env: HashMap<String, String> = [
        ("KAFKA_BROKERS", settings.brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("BUS_PUBLISH_TIMEOUT_MS", "30000"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let config = Config::from_sources(&env, None)?.bus;
    let publisher = Publisher::connect(&config, &MemoryBus::default()).await?;
    let started = Instant::now();
    let mut results = futures::stream::iter(records.iter().cloned())
        .map(|record| publisher.publish(record))
        .buffer_unordered(settings.in_flight);
    while let Some(result) = results.next().await {
        result?;
    }
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    report_held(&settings.brokers, &topic, records.len()).await?;
    Ok(rate)
}

/// Records per second through a raw `FutureProducer` with the same guarantees.
async fn raw(settings: &Settings, records: &[OutboundRecord]) -> anyhow::Result<f64> {
    let topic = create_topic(&settings.brokers, PARTITIONS).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        // As our publisher: send at once, batch only behind requests in flight.
        .set("linger.ms", "0")
        .create()?;
    let started = Instant::now();
    let mut results = futures::stream::iter(records)
        .map(|record| {
            let headers =
                record
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, (key, value)| {
                        headers.insert(Header {
                            key,
                            value: Some(value.as_ref()),
                        })
                    });
            let future_record = FutureRecord::to(&topic)
                .key(record.key.as_ref())
                .payload(record.payload.as_ref())
                .headers(headers);
            producer.send(future_record, Duration::from_secs(30))
        })
        .buffer_unordered(settings.in_flight);
    while let Some(result) = results.next().await {
        result.map_err(|(error, _)| error)?;
    }
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    report_held(&settings.brokers, &topic, records.len()).await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = settings()?;
    let records = records(settings.records);
    let size = records.iter().map(|r| r.payload.len()).sum::<usize>() / records.len();
    println!(
        "publish: {} records of ~{size} bytes, {} in flight, {} rounds each, alternating",
        settings.records, settings.in_flight, settings.rounds
    );
    let (mut raw_rates, mut our_rates) = (Vec::new(), Vec::new());
    for round in 1..=settings.rounds {
        let raw_rate = raw(&settings, &records).await?;
        let our_rate = ours(&settings, &records).await?;
        println!("round {round}: raw {raw_rate:>9.0} records/s   ours {our_rate:>9.0} records/s");
        raw_rates.push(raw_rate);
        our_rates.push(our_rate);
    }
    let (raw_median, our_median) = (median(&mut raw_rates), median(&mut our_rates));
    println!("median: raw {raw_median:.0} records/s, ours {our_median:.0} records/s");
    println!(
        "ratio ours / raw: {:.3} (target >= 0.9)",
        our_median / raw_median
    );
    Ok(())
}
