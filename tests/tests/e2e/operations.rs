//! The `processor` operations subcommands as an operator runs them: `dlq list` and `dlq replay`
//! over the real brokers (a replay killed half-way included), `resync` and `check` against the
//! sandbox APIs on a real socket.

use std::collections::HashMap;
use std::process::Output;

use anyhow::{Context as _, ensure};
use common::bus::{Publisher, headers};
use common::config::Config;
use e2e_tests::process::{self, free_port};
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use sandbox::{CtOrder, FluentOrder, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Api, Bus, Running, setting};

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a command printed, for failure messages.
pub(crate) fn shown(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The bus configuration of a test environment, through the real loader.
pub(crate) fn bus_config(env: &[(&str, String)]) -> anyhow::Result<common::config::BusConfig> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    Ok(Config::from_sources(&map, None)?.bus)
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

    // Replayed before the fix, both fail again: two new dead letters, kept (on NATS the
    // server would drop a dead letter whose id repeats an earlier one's).
    let early = operate(&running, &["dlq", "replay"]).await?;
    ensure!(
        early.contains("replayed 2 dead letter(s); 1 older version(s) passed over"),
        "{early}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let letters = listed(&running).await?;
        let pending = letters.iter().filter(|l| l["replayed"] == false).count();
        if letters.len() == 5 && pending == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the replays that failed again were not dead-lettered again: {letters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // The fix: commercetools now has both orders.
    let ids: Vec<String> = [&walked, &booked]
        .iter()
        .map(|order_ref| running.sandbox.put_ct_order(CtOrder::open(order_ref)))
        .collect();
    let replayed = operate(&running, &["dlq", "replay"]).await?;
    ensure!(
        replayed.contains("replayed 2 dead letter(s); 0 older version(s) passed over"),
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
    on_topic("the three webhooks and two replays twice", 7).await?;

    let again = operate(&running, &["dlq", "replay"]).await?;
    ensure!(again.contains("replayed 0 dead letter(s)"), "{again}");
    on_topic("nothing more after the last replay", 7).await?;
    let after = listed(&running).await?;
    ensure!(
        after.len() == 5 && after.iter().all(|letter| letter["replayed"] == true),
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
        let id = self.sandbox.put_ct_order(CtOrder::open(&order_ref));
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
