//! `processor dlq replay` killed half-way (SIGKILL) and run again, on Kafka and on NATS: no
//! dead letter is lost, and none is repeated; and, as a kill lands there only by chance, a
//! replay that starts from what a kill between the publish and its store leaves.

use std::collections::HashMap;

use anyhow::ensure;
use common::bus::{Headers, OutboundRecord, Position, Publisher, headers};
use e2e_tests::process;
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use tokio::time::Instant;

use crate::operations::{bus_config, shown, stdout};

/// The NATS test stream's duplicate window, the server's least: the test waits it out, so
/// a repeat is the replay's own doing.
const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Dead letters written straight to a fresh DLQ, distinct orders.
const LETTERS: usize = 400;

/// Dead letter `i` of the kill tests: order `order-{i}`.
fn dead_letter(i: usize) -> OutboundRecord {
    OutboundRecord {
        key: format!("order-{i}").into(),
        payload: format!(r#"{{"i":{i}}}"#).into(),
        headers: Headers::new()
            .with(headers::EVENT_ID, format!("event-{i}"))
            .with(headers::DLQ_ERROR_CLASS, "permanent")
            .with(headers::DLQ_ERROR, "commercetools has no order")
            .with(headers::DLQ_FAILED_AT, common::bus::rfc3339_now()),
    }
}

/// Checks that every one of the [`LETTERS`] orders was replayed, without a `dlq-*` header;
/// returns the orders replayed more than once, with their counts.
fn every_order_replayed(replayed: &[OutboundRecord]) -> anyhow::Result<Vec<(String, usize)>> {
    every_order_replayed_of(replayed, LETTERS)
}

/// [`every_order_replayed`] for the first `letters` orders.
fn every_order_replayed_of(
    replayed: &[OutboundRecord],
    letters: usize,
) -> anyhow::Result<Vec<(String, usize)>> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for record in replayed {
        ensure!(
            record
                .headers
                .iter()
                .all(|(name, _)| !name.starts_with("dlq-")),
            "a replay kept a dlq-* header"
        );
        *counts
            .entry(String::from_utf8_lossy(&record.key).into_owned())
            .or_default() += 1;
    }
    let missing: Vec<usize> = (0..letters)
        .filter(|i| !counts.contains_key(&format!("order-{i}")))
        .collect();
    ensure!(missing.is_empty(), "lost by the kill: {missing:?}");
    Ok(counts.into_iter().filter(|(_, n)| *n > 1).collect())
}

/// The settings of a Kafka replay test: a fresh topic with `partitions`, its DLQ topic and a
/// group, all named after `name`.
fn kafka_env(name: &str, partitions: u32) -> Vec<(&'static str, String)> {
    let topic = unique(name);
    vec![
        ("BUS", "kafka".into()),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_GROUP_ID", unique(&format!("{name}-group"))),
        ("KAFKA_TOPIC_PARTITIONS", partitions.to_string()),
    ]
}

/// Makes the topics of `env` and writes dead letters `0..count` onto its DLQ topic, as the
/// processor's dead-lettering does; their positions.
async fn onto_kafka_dlq(
    env: &[(&str, String)],
    count: usize,
) -> anyhow::Result<(common::config::BusConfig, Vec<Position>)> {
    let config = bus_config(env)?;
    common::bus::kafka::ensure_topics(&config).await?;
    let mut onto_dlq = config.clone();
    onto_dlq.kafka.topic = config.kafka.dlq_topic.clone();
    let publisher = Publisher::connect(&onto_dlq, &Default::default()).await?;
    let mut letters = Vec::new();
    for i in 0..count {
        letters.push(publisher.publish(dead_letter(i)).await?);
    }
    Ok((config, letters))
}

/// The settings of a NATS replay test: a fresh stream of three partitions, named after `name`.
fn nats_env(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BUS", "nats".into()),
        ("NATS_URL", e2e_tests::nats_url()),
        ("NATS_STREAM", unique(&name.to_uppercase())),
        ("NATS_SUBJECT_PREFIX", unique(name)),
        ("NATS_CONSUMER_PREFIX", unique(&format!("{name}-processor"))),
        ("NATS_PARTITIONS", "3".into()),
    ]
}

/// Writes dead letters `0..count` onto the DLQ subject of `config`'s stream; the publisher
/// and their positions.
async fn onto_nats_dlq(
    config: &common::config::BusConfig,
    count: usize,
) -> anyhow::Result<(common::bus::nats::NatsPublisher, Vec<Position>)> {
    let Publisher::Nats(publisher) = Publisher::connect(config, &Default::default()).await? else {
        anyhow::bail!("BUS=nats gave another publisher");
    };
    let mut letters = Vec::new();
    for i in 0..count {
        letters.push(publisher.publish_dlq(dead_letter(i)).await?);
    }
    Ok((publisher, letters))
}

/// Every record on the partition subjects of `config`'s stream.
async fn nats_replays(config: &common::config::BusConfig) -> anyhow::Result<Vec<OutboundRecord>> {
    let mut replayed = Vec::new();
    for partition in 0..3 {
        replayed.extend(e2e_tests::nats::read_subject(&config.nats, &partition.to_string()).await?);
    }
    Ok(replayed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_half_way_and_run_again_loses_and_repeats_no_dead_letter()
-> anyhow::Result<()> {
    let env = kafka_env("replay-kill", 1);
    let (config, _) = onto_kafka_dlq(&env, LETTERS).await?;
    let topic = config.kafka.topic.clone();
    let processor = process::workspace_binary("processor")?;
    let mut replay_group = config.kafka.clone();
    replay_group.group_id = format!("{}-dlq-replay", config.kafka.group_id);
    replay_group.topic = config.kafka.dlq_topic.clone();

    let first = process::spawn_with_args(&processor, &["dlq", "replay"], &env)?;
    let deadline = Instant::now() + DEADLINE;
    let at_kill = loop {
        let committed = e2e_tests::kafka::committed_offset(&replay_group, 0)?;
        if committed >= 20 {
            break committed;
        }
        ensure!(Instant::now() < deadline, "the replay made no progress");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    first.kill()?;
    let after_kill = e2e_tests::kafka::committed_offset(&replay_group, 0)?;
    ensure!(
        after_kill < LETTERS as u64,
        "the replay finished ({after_kill}) before it was killed (at {at_kill}): \
         raise LETTERS so the kill lands half-way"
    );

    let output = process::run(&processor, &["dlq", "replay"], &env).await?;
    ensure!(output.status.success(), "{}", shown(&output));
    let replayed = e2e_tests::kafka::read_until_quiet(
        &kafka_brokers(),
        &topic,
        std::time::Duration::from_secs(3),
    )?;
    let repeated = every_order_replayed(&replayed)?;
    eprintln!(
        "killed with {after_kill} of {LETTERS} replayed; repeated after the restart: {repeated:?}"
    );
    // A kill between the broker's acknowledgement and the commit leaves the one in flight
    // published but not committed: the second run finds it on the topic and does not
    // publish it again.
    ensure!(repeated.is_empty(), "repeated: {repeated:?}");

    let output = process::run(&processor, &["dlq", "replay"], &env).await?;
    ensure!(
        stdout(&output).contains("replayed 0 dead letter(s)"),
        "{}",
        shown(&output)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_over_nats_killed_half_way_and_run_again_loses_and_repeats_no_dead_letter()
-> anyhow::Result<()> {
    let env = nats_env("replaykill");
    let config = bus_config(&env)?;
    let (stream, prefix, consumers) = (
        &config.nats.stream,
        &config.nats.subject_prefix,
        &config.nats.consumer_prefix,
    );
    // A duplicate window too short to hide a repeat: the replay itself must not make one.
    let client = async_nats::connect(e2e_tests::nats_url()).await?;
    async_nats::jetstream::new(client.clone())
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.*")],
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
    onto_nats_dlq(&config, LETTERS).await?;
    // The replay group's state, as the command stores it:
    // "<stream created> <next sequence> <handled beyond>".
    let bucket = format!("{stream}-{consumers}-dlq-replay")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    let progress = || async {
        let Ok(store) = async_nats::jetstream::new(client.clone())
            .get_key_value(&bucket)
            .await
        else {
            return 0;
        };
        let text = store
            .get("handled")
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        String::from_utf8_lossy(&text)
            .split(' ')
            .nth(1)
            .and_then(|sequence| sequence.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let processor = process::workspace_binary("processor")?;
    let first = process::spawn_with_args(&processor, &["dlq", "replay"], &env)?;
    let deadline = Instant::now() + DEADLINE;
    while progress().await < 40 {
        ensure!(Instant::now() < deadline, "the replay made no progress");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.kill()?;
    let killed_at = Instant::now();
    let after_kill = progress().await;
    ensure!(
        after_kill <= LETTERS as u64,
        "the replay finished ({after_kill}) before it was killed: raise LETTERS"
    );
    // Not a wait for an event: the server's duplicate window is a span of time, and a
    // repeat published within it would be dropped by the server rather than avoided.
    tokio::time::sleep_until(killed_at + 2 * DUPLICATE_WINDOW).await;

    let output = process::run(&processor, &["dlq", "replay"], &env).await?;
    ensure!(output.status.success(), "{}", shown(&output));
    // The second run replayed at most what the first left (the first stored what it did),
    // less the one in flight at the kill when the first had published it.
    let left = LETTERS as u64 + 1 - after_kill;
    let text = stdout(&output);
    let second: u64 = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("replayed ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .filter(|_| text.contains("dead letter(s);"))
        .unwrap_or(u64::MAX);
    ensure!(
        second <= left,
        "the second run replayed {second}, the first left {left}:\n{text}"
    );
    let output = process::run(&processor, &["dlq", "replay"], &env).await?;
    ensure!(
        stdout(&output).contains("replayed 0 dead letter(s)"),
        "{}",
        shown(&output)
    );
    let replayed = nats_replays(&config).await?;
    eprintln!(
        "killed at sequence {after_kill}; {} replays",
        replayed.len()
    );
    let repeated = every_order_replayed(&replayed)?;
    ensure!(repeated.is_empty(), "repeated: {repeated:?}");
    Ok(())
}

/// What a replay killed between the broker's acknowledgement and its store leaves: dead letter
/// 1 of three published (with `replayed-from`), nothing stored. Kills land there only by
/// chance; this puts the state there on purpose.
fn published_but_not_stored(dlq: &str, of: Position) -> OutboundRecord {
    let mut record = dead_letter(1);
    record.headers = Headers::new().with(headers::EVENT_ID, "event-1").with(
        headers::REPLAYED_FROM,
        format!("{dlq}:{}:{}", of.partition, of.offset),
    );
    record
}

/// Runs `dlq replay` twice on `env` and checks the webhook records `read` returns afterwards
/// hold each of the three orders once: the first run finds order 1's publish and replays
/// the other two, the second replays nothing.
async fn replays_the_rest_once<F>(
    env: &[(&str, String)],
    read: impl Fn() -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<Vec<OutboundRecord>>>,
{
    let processor = process::workspace_binary("processor")?;
    let output = process::run(&processor, &["dlq", "replay"], env).await?;
    ensure!(
        output.status.success() && stdout(&output).contains("replayed 2 dead letter(s)"),
        "{}",
        shown(&output)
    );
    let output = process::run(&processor, &["dlq", "replay"], env).await?;
    ensure!(
        stdout(&output).contains("replayed 0 dead letter(s)"),
        "{}",
        shown(&output)
    );
    let replayed = read().await?;
    let repeated = every_order_replayed_of(&replayed, 3)?;
    ensure!(repeated.is_empty(), "repeated: {repeated:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_finds_what_an_interrupted_run_published_on_kafka_and_does_not_publish_it_again()
-> anyhow::Result<()> {
    let env = kafka_env("replay-found", 2);
    let (config, letters) = onto_kafka_dlq(&env, 3).await?;
    let (topic, dlq) = (&config.kafka.topic, &config.kafka.dlq_topic);
    let onto_topic = Publisher::connect(&config, &Default::default()).await?;
    onto_topic
        .publish(published_but_not_stored(dlq, letters[1]))
        .await?;
    replays_the_rest_once(&env, || async {
        e2e_tests::kafka::read_until_quiet(
            &kafka_brokers(),
            topic,
            std::time::Duration::from_secs(3),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_finds_what_an_interrupted_run_published_on_nats_and_does_not_publish_it_again()
-> anyhow::Result<()> {
    let env = nats_env("replayfound");
    let config = bus_config(&env)?;
    let (publisher, letters) = onto_nats_dlq(&config, 3).await?;
    let prefix = &config.nats.subject_prefix;
    publisher
        .publish(published_but_not_stored(
            &format!("{prefix}.dlq"),
            letters[1],
        ))
        .await?;
    replays_the_rest_once(&env, || nats_replays(&config)).await
}
