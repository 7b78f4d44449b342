//! The whole pipeline over real processes: the `ingest` and `processor` binaries, the real
//! Kafka broker, and the sandbox APIs on a real socket. Signed webhooks go in at the gateway;
//! commercetools order states come out, step by step through an order's life.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use sandbox::{CtOrder, FluentOrder, Sandbox, SandboxConfig, Setting};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"pipeline-test-secret";
const NAME: &str = "fc.connect.order.webhook.order-status-update";

/// A child process killed if the test ends early.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary next to the test binary's directory (`target/<profile>/<name>`).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .and_then(|deps| deps.parent())
        .context("no target directory")?
        .join(name);
    ensure!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, \
         which ./scripts/test does)",
        path.display()
    );
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(name: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    let mut command = Command::new(binary(name)?);
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(Process(
        command
            .spawn()
            .with_context(|| format!("starting {name}"))?,
    ))
}

/// Standard Webhooks headers for `body`.
fn signed(id: &str, body: &str) -> Vec<(&'static str, String)> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let signature = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            format!("v1,{}", STANDARD.encode(signature.as_ref())),
        ),
    ]
}

async fn until<F: FnMut() -> bool>(what: &str, mut check: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        ensure!(
            Instant::now() < deadline,
            "{what}: not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_through_both_processes_drive_commercetools_through_an_order_lifecycle()
-> anyhow::Result<()> {
    // The sandbox APIs, seeded with the documented mapping, one Fluent order and its twin.
    let sandbox = Sandbox::new(SandboxConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let stop_sandbox = CancellationToken::new();
    tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));
    let settings = [
        (
            "fc.connect.commercetools.order.order-status-mapping",
            json!({"fluent": {
            "RECEIVED": "Open", "BOOKED": "Confirmed", "PICK_PACK": "Confirmed",
            "AWAITING_COURIER_COLLECTION": "Confirmed", "COMPLETE": "Complete",
            "CANCELLED": "Cancelled"}}),
        ),
        (
            "fc.connect.commerce-tools.order.payment-status-mapping",
            json!({"fluent": {
            "RECEIVED": "pending", "BOOKED": "paid"}}),
        ),
        (
            "fc.connect.commerce-tools.order.shipping-status-mapping",
            json!({"fluent": {
            "RECEIVED": "Pending", "BOOKED": "Pending", "PICK_PACK": "Pending",
            "AWAITING_COURIER_COLLECTION": "Shipped", "COMPLETE": "Shipped"}}),
        ),
    ];
    for (name, value) in settings {
        sandbox.put_setting(Setting {
            name: name.into(),
            context: "ACCOUNT".into(),
            context_id: 0,
            lob_value: Some(value),
            value: None,
        });
    }
    let order_ref = unique("HD");
    sandbox.put_fluent_order(FluentOrder {
        id: String::new(),
        order_ref: order_ref.clone(),
        order_type: "HD".into(),
        status: "CREATED".into(),
        retailer_id: "3".into(),
        attributes: Vec::new(),
    });
    let ct_id = sandbox.put_ct_order(CtOrder {
        id: String::new(),
        order_number: Some(order_ref.clone()),
        version: 1,
        order_state: "Open".into(),
        payment_state: None,
        shipment_state: None,
        custom: Default::default(),
    });

    // Both processes on one fresh topic.
    let topic = unique("pipeline");
    let bus = [
        ("BUS", "kafka".to_owned()),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_CREATE_TOPICS", "true".into()),
        ("KAFKA_TOPIC_PARTITIONS", "3".into()),
        ("KAFKA_TOPIC_REPLICATION", "1".into()),
    ];
    let port = free_port()?;
    let mut ingest_env = bus.to_vec();
    ingest_env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
    ingest_env.push((
        "WEBHOOK_HMAC_SECRETS",
        format!("whsec_{}", STANDARD.encode(SECRET)),
    ));
    let _ingest = spawn("ingest", &ingest_env)?;
    let config = sandbox.config();
    let mut processor_env = bus.to_vec();
    processor_env.extend([
        ("KAFKA_GROUP_ID", unique("pipeline-group")),
        (
            "KAFKA_PROPERTIES",
            "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
        ),
        ("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("FLUENT_API_URL", format!("{api}/fluent")),
        ("FLUENT_CLIENT_ID", config.fluent_client_id.clone()),
        ("FLUENT_CLIENT_SECRET", config.fluent_client_secret.clone()),
        ("FLUENT_USERNAME", config.fluent_username.clone()),
        ("FLUENT_PASSWORD", config.fluent_password.clone()),
        ("CTP_API_URL", format!("{api}/ct")),
        ("CTP_AUTH_URL", format!("{api}/ct")),
        ("CTP_PROJECT_KEY", config.project_key.clone()),
        ("CTP_CLIENT_ID", config.ct_client_id.clone()),
        ("CTP_CLIENT_SECRET", config.ct_client_secret.clone()),
        (
            "CTP_SCOPES",
            format!("manage_orders:{}", config.project_key),
        ),
    ]);
    let _processor = spawn("processor", &processor_env)?;

    let client = reqwest::Client::new();
    let webhook = format!("http://127.0.0.1:{port}/webhooks/fluent");
    let ready = format!("http://127.0.0.1:{port}/health/ready");
    let deadline = Instant::now() + DEADLINE;
    while !client
        .get(&ready)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let steps = [
        ("RECEIVED", ("Open", Some("Pending"), Some("Pending"))),
        ("BOOKED", ("Confirmed", Some("Paid"), Some("Pending"))),
        ("NOT_MAPPED", ("Confirmed", Some("Paid"), Some("Pending"))),
        (
            "AWAITING_COURIER_COLLECTION",
            ("Confirmed", Some("Paid"), Some("Shipped")),
        ),
        ("COMPLETE", ("Complete", Some("Paid"), Some("Shipped"))),
    ];
    for (n, (status, (order, payment, shipment))) in steps.into_iter().enumerate() {
        let id = format!("{order_ref}-event-{n}");
        let body = json!({
            "id": id, "name": NAME, "accountId": "ACME", "retailerId": "3",
            "entityId": "1", "entityRef": order_ref, "entityType": "ORDER",
            "entityStatus": status, "type": "NORMAL", "attributes": {},
            "rootEntityId": "1", "rootEntityRef": order_ref, "rootEntityType": "ORDER"
        })
        .to_string();
        let mut request = client
            .post(&webhook)
            .header("content-type", "application/json");
        for (name, value) in signed(&id, &body) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await?;
        ensure!(
            response.status() == 200,
            "{status}: {}",
            response.text().await?
        );
        until(&format!("commercetools states after {status}"), || {
            sandbox.ct_order(&ct_id).is_some_and(|o| {
                o.order_state == order
                    && o.payment_state.as_deref() == payment
                    && o.shipment_state.as_deref() == shipment
            })
        })
        .await?;
    }
    // The unmapped status and nothing else was skipped: four updates in all.
    ensure!(
        sandbox.history(&ct_id).len() == 4,
        "{:?}",
        sandbox.history(&ct_id)
    );
    stop_sandbox.cancel();
    Ok(())
}
