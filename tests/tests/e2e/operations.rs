//! The `processor` operations subcommands as an operator runs them: `dlq list` and `dlq replay`
//! over the real brokers (a replay killed half-way included), `resync` and `check` against the
//! sandbox APIs on a real socket.

use std::collections::HashMap;
use std::process::Output;

use anyhow::{Context as _, ensure};
use common::bus::{Headers, OutboundRecord, Publisher, headers};
use common::config::Config;
use e2e_tests::process::{self, free_port};
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use sandbox::{CtOrder, FluentOrder, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Api, Bus, Running, setting};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a command printed, for failure messages.
fn shown(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `processor <args>` on `running`'s bus; it must exit 0.
async fn operate(running: &Running, args: &[&str]) -> anyhow::Result<String> {
    let output = running.operate(args).await?;
    ensure!(
        output.status.success(),
        "processor {args:?}: {}",
        shown(&output)
    );
    Ok(stdout(&output))
}

/// The `dlq list --json` lines.
async fn listed(running: &Running) -> anyhow::Result<Vec<Value>> {
    operate(running, &["dlq", "list", "--json"])
        .await?
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// Dead letters from a permanent failure (commercetools has no such order) are listed,
/// replayed once the orders exist (only each order's newest), and reach commercetools; a
/// second replay replays nothing.
async fn dead_letters_replayed_after_the_fix(bus: Bus) -> anyhow::Result<()> {
    let running = Running::start_with(bus, Api::Http, None, &[]).await?;
    let (walked, _) = running.order("3", false);
    let (booked, _) = running.order("3", false);
    running.send(&walked, "3", "RECEIVED").await?;
    running.send(&walked, "3", "BOOKED").await?;
    running.send(&booked, "3", "BOOKED").await?;
    let deadline = Instant::now() + DEADLINE;
    let letters = loop {
        let letters = listed(&running).await?;
        if letters.len() == 3 {
            break letters;
        }
        ensure!(
            Instant::now() < deadline,
            "3 dead letters expected: {letters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for letter in &letters {
        ensure!(
            letter["headers"][headers::DLQ_ERROR_CLASS] == "permanent",
            "{letter}"
        );
        ensure!(
            letter["headers"][headers::DLQ_ERROR]
                .as_str()
                .is_some_and(|error| error.contains("commercetools has no order")),
            "{letter}"
        );
        ensure!(letter["replayed"] == false, "{letter}");
    }
    let table = operate(&running, &["dlq", "list", "--order-ref", &walked]).await?;
    ensure!(
        table.contains(&walked) && !table.contains(&booked) && table.contains("2 dead letter(s)"),
        "{table}"
    );

    // A dry run twice: the first must have marked nothing replayed.
    for _ in 0..2 {
        let dry = operate(&running, &["dlq", "replay", "--dry-run"]).await?;
        ensure!(
            dry.contains("would replay 2 dead letter(s); 1 older version(s)"),
            "{dry}"
        );
    }
    // The webhook topic (or partition subjects) holds what was published, replays included.
    let config = bus_config(&running.processor_env)?;
    let on_topic = async |what: &str, count: usize| -> anyhow::Result<()> {
        let records = match bus {
            Bus::Kafka => e2e_tests::kafka::read_until_quiet(
                &kafka_brokers(),
                &config.kafka.topic,
                std::time::Duration::from_secs(1),
            )?,
            Bus::Nats => {
                let mut records = Vec::new();
                for partition in 0..config.nats.partitions {
                    records.extend(
                        e2e_tests::nats::read_subject(&config.nats, &partition.to_string()).await?,
                    );
                }
                records
            }
        };
        ensure!(records.len() == count, "{what}: {} records", records.len());
        Ok(())
    };
    on_topic("after the dry runs, only the three webhooks", 3).await?;

    // The fix: commercetools now has both orders.
    let ids: Vec<String> = [&walked, &booked]
        .iter()
        .map(|order_ref| {
            running.sandbox.put_ct_order(CtOrder {
                id: String::new(),
                order_number: Some((*order_ref).clone()),
                version: 1,
                order_state: "Open".into(),
                payment_state: None,
                shipment_state: None,
                custom: Default::default(),
            })
        })
        .collect();
    let replayed = operate(&running, &["dlq", "replay"]).await?;
    ensure!(
        replayed.contains("replayed 2 dead letter(s); 1 older version(s) passed over"),
        "{replayed}"
    );
    for id in &ids {
        running
            .until_states(id, ("Confirmed", Some("Paid"), Some("Pending")))
            .await?;
    }
    // The walked order got its newest status only: RECEIVED was passed over, not replayed.
    ensure!(
        running.sandbox.history(&ids[0]).len() == 1,
        "{:?}",
        running.sandbox.history(&ids[0])
    );
    on_topic("the three webhooks and two replays", 5).await?;

    let again = operate(&running, &["dlq", "replay"]).await?;
    ensure!(again.contains("replayed 0 dead letter(s)"), "{again}");
    on_topic("nothing more after the second replay", 5).await?;
    let after = listed(&running).await?;
    ensure!(
        after.len() == 3 && after.iter().all(|letter| letter["replayed"] == true),
        "{after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed_once_after_the_fault_is_fixed_on_kafka()
-> anyhow::Result<()> {
    dead_letters_replayed_after_the_fix(Bus::Kafka).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed_once_after_the_fault_is_fixed_on_nats()
-> anyhow::Result<()> {
    dead_letters_replayed_after_the_fix(Bus::Nats).await
}

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
            .with(headers::DLQ_ERROR, "commercetools has no order"),
    }
}

/// The bus configuration of a test environment, through the real loader.
fn bus_config(env: &[(&str, String)]) -> anyhow::Result<common::config::BusConfig> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    Ok(Config::from_sources(&map, None)?.bus)
}

/// Checks that every one of the [`LETTERS`] orders was replayed, without a `dlq-*` header;
/// returns the orders replayed more than once, with their counts.
fn every_order_replayed(replayed: &[OutboundRecord]) -> anyhow::Result<Vec<(String, usize)>> {
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
    let missing: Vec<usize> = (0..LETTERS)
        .filter(|i| !counts.contains_key(&format!("order-{i}")))
        .collect();
    ensure!(missing.is_empty(), "lost by the kill: {missing:?}");
    Ok(counts.into_iter().filter(|(_, n)| *n > 1).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_half_way_and_run_again_loses_no_dead_letter_and_repeats_at_most_the_one_in_flight()
-> anyhow::Result<()> {
    let topic = unique("replay-kill");
    let dlq = format!("{topic}.dlq");
    let group = unique("replay-kill-group");
    let env: Vec<(&str, String)> = vec![
        ("BUS", "kafka".into()),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", dlq.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("KAFKA_TOPIC_PARTITIONS", "1".into()),
    ];
    let config = bus_config(&env)?;
    common::bus::kafka::ensure_topics(&config).await?;
    // A publisher onto the DLQ topic, as the processor's dead-lettering writes it.
    let mut onto_dlq = config.clone();
    onto_dlq.kafka.topic = dlq.clone();
    let publisher = Publisher::connect(&onto_dlq, &Default::default()).await?;
    for i in 0..LETTERS {
        publisher.publish(dead_letter(i)).await?;
    }
    let processor = process::workspace_binary("processor")?;
    let mut replay_group = config.kafka.clone();
    replay_group.group_id = format!("{group}-dlq-replay");
    replay_group.topic = dlq.clone();

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
    // Kafka has no atomic publish-and-commit here: only a kill between the broker's
    // acknowledgement and the commit can repeat one record, the one in flight.
    ensure!(repeated.len() <= 1, "repeated: {repeated:?}");
    if let Some((key, _)) = repeated.first() {
        ensure!(
            *key == format!("order-{after_kill}"),
            "{key} repeated, but the kill left the replay at {after_kill}"
        );
    }

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
    let stream = unique("REPLAYKILL");
    let prefix = unique("replaykill");
    let consumers = unique("replaykill-processor");
    let env: Vec<(&str, String)> = vec![
        ("BUS", "nats".into()),
        ("NATS_URL", e2e_tests::nats_url()),
        ("NATS_STREAM", stream.clone()),
        ("NATS_SUBJECT_PREFIX", prefix.clone()),
        ("NATS_CONSUMER_PREFIX", consumers.clone()),
        ("NATS_PARTITIONS", "3".into()),
    ];
    let config = bus_config(&env)?;
    let Publisher::Nats(publisher) = Publisher::connect(&config, &Default::default()).await? else {
        anyhow::bail!("BUS=nats gave another publisher");
    };
    for i in 0..LETTERS {
        publisher.publish_dlq(dead_letter(i)).await?;
    }
    // The replay group's state, as the command stores it:
    // "<stream created> <next sequence> <handled beyond>".
    let client = async_nats::connect(e2e_tests::nats_url()).await?;
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
    let after_kill = progress().await;
    ensure!(
        after_kill <= LETTERS as u64,
        "the replay finished ({after_kill}) before it was killed: raise LETTERS"
    );

    let output = process::run(&processor, &["dlq", "replay"], &env).await?;
    ensure!(output.status.success(), "{}", shown(&output));
    let mut replayed = Vec::new();
    for partition in 0..3 {
        replayed.extend(e2e_tests::nats::read_subject(&config.nats, &partition.to_string()).await?);
    }
    eprintln!(
        "killed at sequence {after_kill}; {} replays",
        replayed.len()
    );
    // The message id comes from the DLQ sequence: the server stores a repeat once.
    let repeated = every_order_replayed(&replayed)?;
    ensure!(repeated.is_empty(), "repeated: {repeated:?}");
    Ok(())
}

/// The sandbox APIs on a real socket, seeded with the documented mapping, and the environment
/// that points the processor at them.
struct Apis {
    sandbox: Sandbox,
    stop: CancellationToken,
    env: Vec<(&'static str, String)>,
}

impl Drop for Apis {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Apis {
    async fn start() -> anyhow::Result<Self> {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop.clone()));
        sandbox.put_account_settings(&sandbox::seed::documented_mapping());
        let topic = unique("ops");
        let mut env = vec![
            ("BUS", "kafka".to_owned()),
            ("KAFKA_BROKERS", kafka_brokers()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
            ("KAFKA_GROUP_ID", unique("ops-group")),
            ("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ];
        env.extend(sandbox.config().client_env(&api));
        Ok(Self { sandbox, stop, env })
    }

    /// Runs `processor <args>` with the environment, `overrides` replacing settings.
    async fn processor(
        &self,
        args: &[&str],
        overrides: &[(&'static str, String)],
    ) -> anyhow::Result<Output> {
        let mut env = self.env.clone();
        env.retain(|(key, _)| overrides.iter().all(|(other, _)| other != key));
        env.extend_from_slice(overrides);
        process::run(&process::workspace_binary("processor")?, args, &env).await
    }

    /// A Fluent order at `status` and its commercetools twin at `Open`; the ct id.
    fn order(&self, status: &str) -> (String, String) {
        let order_ref = unique("HD");
        self.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.clone(),
            order_type: "HD".into(),
            status: status.into(),
            retailer_id: "3".into(),
            attributes: Vec::new(),
        });
        let id = self.sandbox.put_ct_order(CtOrder {
            id: String::new(),
            order_number: Some(order_ref.clone()),
            version: 1,
            order_state: "Open".into(),
            payment_state: None,
            shipment_state: None,
            custom: Default::default(),
        });
        (order_ref, id)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_sets_an_order_from_fluents_current_status_and_its_dry_run_changes_nothing()
-> anyhow::Result<()> {
    let apis = Apis::start().await?;
    let (order_ref, id) = apis.order("BOOKED");

    let dry = apis
        .processor(&["resync", "--order-ref", &order_ref, "--dry-run"], &[])
        .await?;
    let text = stdout(&dry);
    ensure!(dry.status.success(), "{}", shown(&dry));
    ensure!(
        text.contains("Fluent status:      BOOKED")
            && text.contains("commercetools held: orderState=Open")
            && text.contains("would change (dry run): orderState=Confirmed paymentState=Paid shipmentState=Pending"),
        "{text}"
    );
    ensure!(
        apis.sandbox.history(&id).is_empty(),
        "the dry run changed the order"
    );

    let done = apis
        .processor(&["resync", "--order-ref", &order_ref], &[])
        .await?;
    ensure!(done.status.success(), "{}", shown(&done));
    ensure!(
        stdout(&done).contains("changed: orderState=Confirmed"),
        "{}",
        shown(&done)
    );
    let order = apis.sandbox.ct_order(&id).context("the order")?;
    ensure!(
        (
            order.order_state.as_str(),
            order.payment_state.as_deref(),
            order.shipment_state.as_deref()
        ) == ("Confirmed", Some("Paid"), Some("Pending")),
        "{order:?}"
    );
    ensure!(apis.sandbox.history(&id).len() == 1);

    let again = apis
        .processor(&["resync", "--order-ref", &order_ref], &[])
        .await?;
    ensure!(
        stdout(&again).contains("nothing to change"),
        "{}",
        shown(&again)
    );
    ensure!(
        apis.sandbox.history(&id).len() == 1,
        "an update that changed nothing"
    );

    let unknown = apis
        .processor(&["resync", "--order-ref", "HD-NOBODY"], &[])
        .await?;
    ensure!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("Fluent has no order HD-NOBODY"),
        "{}",
        shown(&unknown)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_ready_and_fails_clearly_on_a_wrong_secret_a_bad_setting_and_a_missing_topic()
-> anyhow::Result<()> {
    let apis = Apis::start().await?;
    // The topics exist in a ready environment.
    let config = bus_config(&apis.env)?;
    common::bus::kafka::ensure_topics(&config).await?;

    let ready = apis.processor(&["check"], &[]).await?;
    let text = stdout(&ready);
    ensure!(
        ready.status.success() && text.contains("ready"),
        "{}",
        shown(&ready)
    );
    for line in [
        "Fluent token",
        "commercetools token",
        "mapping settings",
        "webhook topic",
        "DLQ topic",
        "consumer lag",
    ] {
        ensure!(text.contains(line), "no {line} line:\n{text}");
    }

    let wrong = "not-the-secret-at-all";
    let refused = apis
        .processor(&["check"], &[("CTP_CLIENT_SECRET", wrong.to_owned())])
        .await?;
    let text = stdout(&refused);
    ensure!(!refused.status.success(), "{}", shown(&refused));
    ensure!(
        text.lines()
            .any(|line| line.contains("commercetools token") && line.contains("FAILED"))
            && text.contains("not ready: 1 check(s) failed"),
        "{text}"
    );
    ensure!(!shown(&refused).contains(wrong), "the secret was echoed");

    apis.sandbox.put_setting(setting(
        sandbox::seed::ORDER_SETTING,
        "ACCOUNT",
        0,
        json!({"fluent": {"BOOKED": "Nope"}}),
    ));
    let bad = apis.processor(&["check"], &[]).await?;
    let text = stdout(&bad);
    ensure!(!bad.status.success(), "{}", shown(&bad));
    ensure!(
        text.contains("mapping settings")
            && text.contains(sandbox::seed::ORDER_SETTING)
            && text.contains("`Nope`"),
        "{text}"
    );

    let missing = apis
        .processor(&["check"], &[("KAFKA_TOPIC", unique("no-such-topic"))])
        .await?;
    let text = stdout(&missing);
    ensure!(!missing.status.success(), "{}", shown(&missing));
    ensure!(text.contains("unknown topic"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_on_nats_says_a_missing_stream_then_ready_once_it_exists() -> anyhow::Result<()> {
    let apis = Apis::start().await?;
    let nats: Vec<(&'static str, String)> = vec![
        ("BUS", "nats".into()),
        ("NATS_URL", e2e_tests::nats_url()),
        ("NATS_STREAM", unique("CHECK")),
        ("NATS_SUBJECT_PREFIX", unique("check")),
        ("NATS_CONSUMER_PREFIX", unique("check-processor")),
        ("NATS_PARTITIONS", "3".into()),
    ];
    let missing = apis.processor(&["check"], &nats).await?;
    let text = stdout(&missing);
    ensure!(!missing.status.success(), "{}", shown(&missing));
    ensure!(
        text.contains("unknown topic or stream") && text.contains("not ready: 1 check(s) failed"),
        "{text}"
    );
    // The first processor (or the gateway) creates the stream; `check` never does.
    let mut env = apis.env.clone();
    env.retain(|(key, _)| nats.iter().all(|(other, _)| other != key));
    env.extend(nats.iter().cloned());
    Publisher::connect(&bus_config(&env)?, &Default::default()).await?;
    let ready = apis.processor(&["check"], &nats).await?;
    let text = stdout(&ready);
    ensure!(ready.status.success(), "{}", shown(&ready));
    ensure!(
        text.contains("stream (webhooks and DLQ)")
            && text.contains("3 partition(s) without a position yet"),
        "{text}"
    );
    Ok(())
}
