//! The whole pipeline under load: the `ingest` and `processor` binaries on the real Kafka
//! broker, the sandbox APIs (in this process) adding a fixed latency to every call.
//!
//! Each order gets four status events that each change its commercetools states (RECEIVED,
//! BOOKED, AWAITING_COURIER_COLLECTION, COMPLETE), sent in order by `CONCURRENCY` senders, each
//! event after the previous one was accepted. Reported: webhooks/s end to end (first
//! acceptance to last commercetools update), the latency from each webhook's acceptance to the
//! first commercetools update that reflects it (p50/p99), and upstream calls per webhook.
//!
//! Run it with `./scripts/bench pipeline`, or
//! `pipeline-bench BROKERS [ORDERS=3000] [CONCURRENCY=64] [LATENCY_MS=20] [RATE=0]` (RATE paces
//! the senders to that many webhooks/s in all; 0 sends as fast as the gateway accepts).

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bench::load::Signer;
use bench::median;
use e2e_tests::process::{self, Process, free_port};
use sandbox::{CtOrder, Endpoint, Fault, FluentOrder, Sandbox, SandboxConfig, Setting};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"pipeline-bench-secret";
const NAME: &str = "fc.connect.order.webhook.order-status-update";
const STAGES: [&str; 4] = [
    "RECEIVED",
    "BOOKED",
    "AWAITING_COURIER_COLLECTION",
    "COMPLETE",
];

/// Starts the release binary `name`, next to this one, with `env`.
fn spawn(name: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    process::spawn(&std::env::current_exe()?.with_file_name(name), env)
}

/// Which of the four stages commercetools states show (`None`: the initial states).
fn stage(order: &str, shipment: Option<&str>) -> Option<usize> {
    match (order, shipment) {
        ("Open", Some("Pending")) => Some(0),
        ("Confirmed", Some("Pending")) => Some(1),
        ("Confirmed", Some("Shipped")) => Some(2),
        ("Complete", _) => Some(3),
        _ => None,
    }
}

fn seed(sandbox: &Sandbox, orders: usize, run: &str) -> Vec<(String, String)> {
    let settings = [
        (
            "fc.connect.commercetools.order.order-status-mapping",
            json!({"fluent": {
            "RECEIVED": "Open", "BOOKED": "Confirmed",
            "AWAITING_COURIER_COLLECTION": "Confirmed", "COMPLETE": "Complete"}}),
        ),
        (
            "fc.connect.commerce-tools.order.payment-status-mapping",
            json!({"fluent": {
            "RECEIVED": "pending", "BOOKED": "paid"}}),
        ),
        (
            "fc.connect.commerce-tools.order.shipping-status-mapping",
            json!({"fluent": {
            "RECEIVED": "Pending", "BOOKED": "Pending",
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
    (0..orders)
        .map(|i| {
            let order_ref = format!("HD_{run}_{i:06}");
            sandbox.put_fluent_order(FluentOrder {
                id: String::new(),
                order_ref: order_ref.clone(),
                order_type: "HD".into(),
                status: "CREATED".into(),
                retailer_id: "1".into(),
                attributes: Vec::new(),
            });
            let id = sandbox.put_ct_order(CtOrder {
                id: String::new(),
                order_number: Some(order_ref.clone()),
                version: 1,
                order_state: "Open".into(),
                payment_state: None,
                shipment_state: None,
                custom: Default::default(),
            });
            (order_ref, id)
        })
        .collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args
        .first()
        .context("usage: pipeline-bench BROKERS [ORDERS] [CONCURRENCY] [LATENCY_MS]")?
        .clone();
    let number = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |text| Ok(text.parse()?))
    };
    let (orders, concurrency, latency) = (number(1, 3000)?, number(2, 64)?, number(3, 20)?);
    // Webhooks/s over all senders; 0 sends as fast as the gateway accepts.
    let rate = number(4, 0)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let sandbox = Sandbox::new(SandboxConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(sandbox.clone().serve(listener, stop.clone()));
    // One more order than measured: the last one warms the pipeline up (group join, tokens,
    // settings cache) before the clock starts.
    let mut seeded = seed(&sandbox, orders + 1, &run);
    let warm_up = seeded.pop().context("seeded orders")?;
    let seeded = Arc::new(seeded);
    let delay = Fault {
        latency_ms: latency as u64,
        ..Fault::default()
    };
    for endpoint in [
        Endpoint::FluentToken,
        Endpoint::FluentGraphql,
        Endpoint::CtToken,
        Endpoint::CtGraphql,
    ] {
        sandbox.set_fault(endpoint, delay.clone());
    }

    let topic = format!("bench-pipeline-{run}");
    let bus = [
        ("BUS", "kafka".to_owned()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_CREATE_TOPICS", "true".into()),
        ("KAFKA_TOPIC_REPLICATION", "1".into()),
    ];
    let port = free_port()?;
    let mut ingest_env = bus.to_vec();
    ingest_env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
    ingest_env.push(("WEBHOOK_HMAC_SECRETS", format!("whsec_{}", base64_secret())));
    let _ingest = spawn("ingest", &ingest_env)?;
    let config = sandbox.config().clone();
    let mut processor_env = bus.to_vec();
    processor_env.extend([
        ("KAFKA_GROUP_ID", format!("bench-pipeline-{run}")),
        ("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
    ]);
    processor_env.extend(config.client_env(&api));
    // Tuning under test passes through from the benchmark's environment.
    if let Ok(properties) = std::env::var("KAFKA_PROPERTIES") {
        processor_env.push(("KAFKA_PROPERTIES", properties));
    }
    let _processor = spawn("processor", &processor_env)?;

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/fluent");
    let ready = format!("http://127.0.0.1:{port}/health/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(&ready)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "pipeline: {orders} orders x {} events, {concurrency} senders, {latency} ms per API call, {}",
        STAGES.len(),
        if rate > 0 {
            format!("paced at {rate} webhooks/s")
        } else {
            "unpaced".into()
        }
    );
    let signer = Arc::new(Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        SECRET,
    ))));
    let warm_body = event_body(&warm_up.0, "warm-up", "COMPLETE");
    let mut request = client.post(&url).header("content-type", "application/json");
    for (name, value) in signer.sign("warm-up", warm_body.as_bytes()) {
        request = request.header(name, value);
    }
    ensure!(
        request.body(warm_body).send().await?.status() == 200,
        "warm-up webhook refused"
    );
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while sandbox.history(&warm_up.1).is_empty() {
        ensure!(
            Instant::now() < warm_deadline,
            "the warm-up order never reached commercetools"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls_before = [
        Endpoint::FluentGraphql,
        Endpoint::CtGraphql,
        Endpoint::FluentToken,
        Endpoint::CtToken,
    ]
    .map(|endpoint| sandbox.calls(endpoint));

    // Acceptance times (sandbox clock, ms) per order and stage.
    let accepted: Arc<Mutex<HashMap<usize, [f64; 4]>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next, seeded, accepted, signer, sandbox) = (
            client.clone(),
            url.clone(),
            Arc::clone(&next),
            Arc::clone(&seeded),
            Arc::clone(&accepted),
            Arc::clone(&signer),
            sandbox.clone(),
        );
        senders.spawn(async move {
            let mut pace = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(concurrency as f64 / rate as f64);
                tokio::time::interval(period)
            });
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((order_ref, _)) = seeded.get(i) else {
                    return anyhow::Ok(());
                };
                let mut times = [0.0; 4];
                for (stage, status) in STAGES.iter().enumerate() {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    let id = format!("{order_ref}-{stage}");
                    let body = event_body(order_ref, &id, status);
                    let mut request = client.post(&url).header("content-type", "application/json");
                    for (name, value) in signer.sign(&id, body.as_bytes()) {
                        request = request.header(name, value);
                    }
                    let response = request.body(body).send().await?;
                    ensure!(
                        response.status() == 200,
                        "webhook refused: {}",
                        response.status()
                    );
                    times[stage] = sandbox.elapsed_ms();
                }
                accepted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(i, times);
            }
        });
    }
    while let Some(result) = senders.join_next().await {
        result??;
    }
    let sent_at = Instant::now();
    let done = |order: &Option<CtOrder>| {
        order.as_ref().is_some_and(|o| {
            o.order_state == "Complete" && o.shipment_state.as_deref() == Some("Shipped")
        })
    };
    loop {
        let pending = seeded
            .iter()
            .filter(|(_, id)| !done(&sandbox.ct_order(id)))
            .count();
        if pending == 0 {
            break;
        }
        ensure!(
            sent_at.elapsed() < Duration::from_secs(300),
            "{pending} orders never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let accepted = accepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut latencies = Vec::new();
    let (mut first, mut last, mut updates) = (f64::MAX, 0.0_f64, 0);
    for (i, (_, id)) in seeded.iter().enumerate() {
        let history = sandbox.history(id);
        updates += history.len();
        let times = accepted[&i];
        first = first.min(times[0]);
        for (event_stage, at) in times.iter().enumerate() {
            let reflected = history.iter().find(|update| {
                update.at_ms >= *at
                    && stage(&update.order_state, update.shipment_state.as_deref())
                        .is_some_and(|s| s >= event_stage)
            });
            if let Some(update) = reflected {
                latencies.push(update.at_ms - at);
            }
        }
        last = last.max(history.last().map_or(0.0, |update| update.at_ms));
    }
    let webhooks = orders * STAGES.len();
    latencies.sort_by(f64::total_cmp);
    let since = |i: usize, endpoint| sandbox.calls(endpoint) - calls_before[i];
    let (fluent, ct) = (
        since(0, Endpoint::FluentGraphql),
        since(1, Endpoint::CtGraphql),
    );
    let graphql = fluent + ct;
    let tokens = since(2, Endpoint::FluentToken) + since(3, Endpoint::CtToken);
    println!(
        "end to end: {:.0} webhooks/s ({webhooks} webhooks, {:.2} s from first acceptance to last update)",
        webhooks as f64 * 1000.0 / (last - first),
        (last - first) / 1000.0
    );
    println!(
        "acceptance -> commercetools update: p50 {:.1} ms, p99 {:.1} ms, median of all {:.1} ms ({} webhooks measured)",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        median(&mut latencies.clone()),
        latencies.len()
    );
    println!(
        "upstream calls per webhook in steady state: {:.2} GraphQL (Fluent {fluent} + commercetools {ct}) \
         and {tokens} token calls in all; {:.2} commercetools updates per webhook (target <= 3 calls)",
        graphql as f64 / webhooks as f64,
        updates as f64 / webhooks as f64
    );
    stop.cancel();
    Ok(())
}

fn event_body(order_ref: &str, id: &str, status: &str) -> String {
    json!({
        "id": id, "name": NAME, "accountId": "ACME", "retailerId": "1",
        "entityId": "1", "entityRef": order_ref, "entityType": "ORDER",
        "entityStatus": status, "type": "NORMAL", "attributes": {},
        "rootEntityId": "1", "rootEntityRef": order_ref, "rootEntityType": "ORDER"
    })
    .to_string()
}

fn base64_secret() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(SECRET)
}
