//! `processor --dry-run` over real processes and both brokers: it starts at the newest record,
//! reads and maps, sends nothing, and leaves the real group where it was.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use e2e_tests::DEADLINE;
use e2e_tests::process::{self, free_port};
use tokio::time::Instant;

use crate::pipeline::{Api, Bus, Running, spawn};

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_starts_at_the_newest_record_reads_and_maps_and_sends_no_update()
-> anyhow::Result<()> {
    dry_run_story(Bus::Kafka).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_over_nats_starts_at_the_newest_record_and_sends_no_update() -> anyhow::Result<()>
{
    dry_run_story(Bus::Nats).await
}

/// An order handled by the real processor, then a dry run: it never sees that order, and
/// for the orders sent once it runs it reads, maps and says what it would send, sending none.
async fn dry_run_story(bus: Bus) -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let mut running = Running::start_with(bus, Api::Http, Some(logs.path()), &[]).await?;
    // Before the dry run: an order the real processor handles.
    let (before, before_id) = running.order("3", true);
    running.send(&before, "3", "BOOKED").await?;
    running
        .until_states(&before_id, ("Confirmed", Some("Paid"), Some("Pending")))
        .await?;
    if let Some(processor) = running.processor.take() {
        processor.terminate()?;
    }
    // Set back by hand: a dry run that read this record would now say it would update it.
    let mut edited = running.sandbox.ct_order(&before_id).context("the order")?;
    edited.order_state = "Open".into();
    edited.payment_state = None;
    edited.shipment_state = None;
    running.sandbox.put_ct_order(edited);
    let metrics_port = free_port()?;
    let mut env = running.processor_env.clone();
    env.retain(|(key, _)| *key != "METRICS_LISTEN");
    env.extend([
        ("METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("PROCESSOR_DRY_RUN", "true".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    let log = logs.path().join("dry-run.log");
    let dry_run = process::spawn_logged(&process::workspace_binary("processor")?, &env, &log)?;
    // It starts at the newest record once it has its partitions: send new orders until it
    // has finished one.
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + DEADLINE;
    let mut sent = Vec::new();
    loop {
        let (order_ref, id) = running.order("3", true);
        running.send(&order_ref, "3", "BOOKED").await?;
        sent.push((order_ref, id));
        let text = match running.client.get(&metrics).send().await {
            Ok(response) => response.text().await?,
            Err(_) => String::new(),
        };
        if text.contains(r#"processor_records_total{outcome="done"}"#)
            && !text.contains(r#"processor_records_total{outcome="done"} 0"#)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the dry run finished no record:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    dry_run.terminate()?;
    // It read from both APIs and changed nothing.
    for (_, id) in &sent {
        ensure!(running.sandbox.history(id).is_empty(), "an update was sent");
    }
    // The real group's position did not move: the real processor, back, applies them all.
    running.processor = Some(spawn("processor", &running.processor_env)?);
    for (_, id) in &sent {
        running
            .until_states(id, ("Confirmed", Some("Paid"), Some("Pending")))
            .await?;
    }
    // It said what it would have sent, and never saw what came before it started.
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("dry run: would update the commercetools order"))
        .collect();
    ensure!(
        lines.iter().any(|line| sent
            .iter()
            .any(|(order_ref, _)| line.contains(order_ref.as_str()))
            && line.contains("Confirmed")
            && line.contains("Paid")),
        "no dry-run line for the orders sent after it started in\n{text}"
    );
    ensure!(
        !text.contains(&before),
        "the dry run handled a record from before it started:\n{text}"
    );
    Ok(())
}
