//! The demo binary as a newcomer runs it: to completion, judged by its exit code and its
//! table, on the in-memory bus and on the real test brokers.

use std::process::{Command, Output};

/// Runs the demo binary with `args`, on the in-memory bus unless `env` names a broker.
fn demo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("BUS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "error");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the demo binary runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The table's row of `order_ref`.
fn row<'a>(stdout: &'a str, order_ref: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.contains(order_ref))
        .unwrap_or_else(|| panic!("no row for {order_ref} in\n{stdout}"))
}

/// Every order's row shows the states the documented mapping gives its last status.
fn assert_every_order_ended_right(stdout: &str, orders: usize) {
    for n in 1..=orders {
        let row = row(stdout, &format!("DEMO-{n:04}"));
        let cells: Vec<&str> = row.split(['│', '┆']).map(str::trim).collect();
        // "", order, Fluent status, orderState, paymentState, shipmentState, verdict, "".
        match cells[2] {
            "COMPLETE" => assert_eq!(&cells[3..7], ["Complete", "Paid", "Shipped", "ok"], "{row}"),
            "CANCELLED" => assert_eq!((cells[3], cells[6]), ("Cancelled", "ok"), "{row}"),
            other => panic!("an order ended at {other}: {row}"),
        }
    }
    assert!(
        stdout.contains(&format!("{orders} right, 0 wrong")),
        "{stdout}"
    );
}

#[test]
fn the_demo_runs_its_story_to_the_end_with_faults_and_every_order_ends_right() {
    let output = demo(&["--orders", "16", "--seed", "7"], &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_every_order_ended_right(&stdout, 16);
    // The story had its duplicates and its failures, and the summary says so.
    let count = |label: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|line| line.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in\n{stdout}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("duplicates answered as replays") > 0, "{stdout}");
    assert!(count("handler calls retried or waiting") > 0, "{stdout}");
    assert_eq!(count("dead-lettered"), 0, "{stdout}");
    assert!(stdout.contains("seed 7"), "{stdout}");
}

#[test]
fn a_mapping_other_than_the_one_orders_are_checked_against_makes_the_demo_fail() {
    let output = demo(
        &[
            "--orders",
            "8",
            "--seed",
            "3",
            "--no-faults",
            "--wrong-mapping",
        ],
        &[],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("WRONG"), "{stdout}");
    assert!(stdout.contains("Confirmed (want Complete)"), "{stdout}");
}

#[test]
fn the_demo_runs_over_a_real_kafka_broker_when_one_is_named() {
    let brokers = std::env::var("TEST_KAFKA_BROKERS")
        .expect("TEST_KAFKA_BROKERS must name the test broker (./scripts/test starts one)");
    let output = demo(
        &["--orders", "6", "--seed", "11", "--no-faults"],
        &[("KAFKA_BROKERS", &brokers), ("KAFKA_TOPIC_PARTITIONS", "3")],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("over Kafka at"), "{stdout}");
    assert_every_order_ended_right(&stdout, 6);
}

#[test]
fn the_demo_runs_over_nats_jetstream_when_asked() {
    let url = std::env::var("TEST_NATS_URL")
        .expect("TEST_NATS_URL must name the test NATS server (./scripts/test starts one)");
    let output = demo(
        &["--orders", "6", "--seed", "12", "--no-faults"],
        &[
            ("BUS", "nats"),
            ("NATS_URL", &url),
            ("NATS_PARTITIONS", "3"),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("over NATS JetStream"), "{stdout}");
    assert_every_order_ended_right(&stdout, 6);
}
