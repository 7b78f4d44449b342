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

/// The `curl` command `--serve` printed first: (url, signature, body).
fn first_curl(printed: &str) -> (String, String, String) {
    let after = |marker: &str| {
        let start = printed
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in\n{printed}"));
        printed[start + marker.len()..].to_owned()
    };
    let url = after("curl -s -X POST ");
    let url = url.split_whitespace().next().unwrap().to_owned();
    let signature = after("-H 'fluent-signature: ");
    let signature = signature.split('\'').next().unwrap().to_owned();
    let body = after("--data '");
    let body = body.split("'\n").next().unwrap().replace(r"'\''", "'");
    (url, signature, body)
}

/// Kills the child when a failed assertion unwinds past it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn serve_keeps_running_and_its_printed_commands_carry_valid_signatures() {
    use std::io::BufRead as _;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--orders", "3", "--seed", "5", "--no-faults", "--serve"])
        .env_remove("KAFKA_BROKERS")
        .env_remove("BUS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the demo binary runs");
    let mut guard = KillOnDrop(Some(child));
    let child = guard.0.as_mut().unwrap();
    // Reads what it prints until the last instruction line (the read ends if it exits).
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut printed = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("Processor metrics:") {
                break;
            }
        }
        printed
    })
    .await
    .unwrap();
    let (url, signature, body) = first_curl(&printed);
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("fluent-signature", &signature)
            .body(body.clone())
            .send()
    };
    let first: serde_json::Value = post()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "accepted", "{first}");
    assert!(first.get("replay").is_none(), "{first}");
    // Sent twice, as the instructions say: the second is a replay.
    let second: serde_json::Value = post().await.unwrap().json().await.unwrap();
    assert_eq!(second["replay"], true, "{second}");
    // A body changed after signing is refused.
    let forged = client
        .post(&url)
        .header("content-type", "application/json")
        .header("fluent-signature", &signature)
        .body(body.replace("BOOKED", "CANCELLED"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let metrics = printed
        .lines()
        .find_map(|line| line.strip_prefix("Processor metrics: curl -s "))
        .expect("the processor's metrics URL");
    let text = client
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("processor_records_total"), "{text}");
    // SIGTERM stops it cleanly; every order of the story ended right, so it exits 0.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = guard.0.take().unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
