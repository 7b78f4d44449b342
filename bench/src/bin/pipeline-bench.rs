//! The whole pipeline under load: the `ingest` and `processor` binaries on the real Kafka
//! broker, the sandbox APIs (in this process) adding a fixed latency to every call.
//!
//! Each order gets four status events that each change its commercetools states (RECEIVED,
//! BOOKED, AWAITING_COURIER_COLLECTION, COMPLETE), sent in order by `CONCURRENCY` senders, each
//! event after the previous one was accepted. Reported: webhooks/s end to end (first
//! acceptance to last commercetools update), the latency from each webhook's acceptance to the
//! first commercetools update that reflects it (p50/p99), upstream calls per webhook, and the
//! CPU time both processes used per webhook (user + system, from the first webhook sent to the
//! last update seen; the processes are stopped with SIGTERM after, as in production, so that a
//! build exporting traces flushes them).
//!
//! Every trial gets its own topic, consumer group, orders and pair of processes. With
//! `BENCH_BASELINE_DIR` naming another build's release directory (holding its `ingest` and
//! `processor`), each of `ROUNDS` rounds runs a trial of both builds, alternating which goes
//! first, and the report ends with the medians' ratios.
//!
//! Run it with `./scripts/bench pipeline`, or
//! `pipeline-bench BROKERS [ORDERS=3000] [CONCURRENCY=64] [LATENCY_MS=20] [RATE=0] [ROUNDS=1]`
//! (RATE paces the senders to that many webhooks/s in all; 0 sends as fast as the gateway
//! accepts).

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bench::load::Signer;
use bench::median;
use e2e_tests::process::{self, Process, free_port};
use sandbox::{CtOrder, Endpoint, Fault, FluentOrder, Sandbox, SandboxConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"pipeline-bench-secret";
const STAGES: [&str; 4] = [
    "RECEIVED",
    "BOOKED",
    "AWAITING_COURIER_COLLECTION",
    "COMPLETE",
];

/// Starts the binary `name` of the build in `dir` with `env`.
fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    process::spawn(&dir.join(name), env)
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

/// Fluent's mapping settings: each of the four stages changes the commercetools states.
fn seed_settings(sandbox: &Sandbox) {
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
    sandbox.put_account_settings(&settings);
}

/// `orders` orders of run `run`, in Fluent and commercetools: (order ref, commercetools id).
fn seed_orders(sandbox: &Sandbox, orders: usize, run: &str) -> Vec<(String, String)> {
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
            let id = sandbox.put_ct_order(CtOrder::open(&order_ref));
            (order_ref, id)
        })
        .collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// What the benchmark was asked to do.
struct Options {
    brokers: String,
    orders: usize,
    concurrency: usize,
    latency_ms: usize,
    /// Webhooks/s over all senders; 0 sends as fast as the gateway accepts.
    rate: usize,
    rounds: usize,
}

fn options() -> anyhow::Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |text| Ok(text.parse()?))
    };
    Ok(Options {
        brokers: args
            .first()
            .context(
                "usage: pipeline-bench BROKERS [ORDERS] [CONCURRENCY] [LATENCY_MS] [RATE] [ROUNDS]",
            )?
            .clone(),
        orders: number(1, 3000)?,
        concurrency: number(2, 64)?,
        latency_ms: number(3, 20)?,
        rate: number(4, 0)?,
        rounds: number(5, 1)?.max(1),
    })
}

/// A build under test: the directory holding its `ingest` and `processor`.
struct Build {
    label: &'static str,
    dir: PathBuf,
    /// Added to both processes' environment (trace export, say).
    env: Vec<(&'static str, String)>,
}

/// This build, and the baseline when `BENCH_BASELINE_DIR` names one.
fn builds() -> anyhow::Result<Vec<Build>> {
    let here = std::env::current_exe()?;
    let mut builds = vec![Build {
        label: "this build",
        dir: here
            .parent()
            .context("the benchmark's directory")?
            .to_owned(),
        env: Vec::new(),
    }];
    if let Some(dir) = std::env::var_os("BENCH_BASELINE_DIR") {
        let dir = PathBuf::from(dir);
        for name in ["ingest", "processor"] {
            ensure!(
                dir.join(name).exists(),
                "BENCH_BASELINE_DIR has no {name}: {} (build it with `cargo build --release` in \
                 the baseline's checkout)",
                dir.display()
            );
        }
        builds.push(Build {
            label: "baseline",
            dir,
            env: Vec::new(),
        });
    }
    Ok(builds)
}

/// The figures of one trial.
struct Trial {
    webhooks_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    graphql_per_webhook: f64,
    updates_per_webhook: f64,
    /// Of the gateway and the processor together, µs.
    cpu_per_webhook_us: f64,
}

/// The sandbox APIs of one trial, served from this process. Each trial gets its own: the
/// sandbox's state grows with every order, and trials must meet the same APIs.
struct Apis {
    sandbox: Sandbox,
    url: String,
    stop: CancellationToken,
}

impl Apis {
    async fn start(latency_ms: usize) -> anyhow::Result<Self> {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop.clone()));
        seed_settings(&sandbox);
        let delay = Fault {
            latency_ms: latency_ms as u64,
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
        Ok(Self { sandbox, url, stop })
    }
}

impl Drop for Apis {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut builds = builds()?;
    // BENCH_OTLP=http or grpc: this build again, both processes exporting every span to a
    // receiver here.
    let receiver = bench::otlp_receiver().await?;
    if let Some(receiver) = &receiver {
        let dir = builds[0].dir.clone();
        builds.push(Build {
            label: "export",
            dir,
            env: receiver.env(),
        });
    }
    println!(
        "pipeline: {} orders x {} events, {} senders, {} ms per API call, {}, {} round(s) of {}",
        options.orders,
        STAGES.len(),
        options.concurrency,
        options.latency_ms,
        if options.rate > 0 {
            format!("paced at {} webhooks/s", options.rate)
        } else {
            "unpaced".into()
        },
        options.rounds,
        builds
            .iter()
            .map(|b| b.label)
            .collect::<Vec<_>>()
            .join(" and ")
    );

    let mut trials: Vec<Vec<Trial>> = builds.iter().map(|_| Vec::new()).collect();
    for round in 0..options.rounds {
        for offset in 0..builds.len() {
            // Alternating, so neither build always runs first.
            let index = if round.is_multiple_of(2) {
                offset
            } else {
                builds.len() - 1 - offset
            };
            let apis = Apis::start(options.latency_ms).await?;
            let trial = run_trial(&apis, &options, &builds[index]).await?;
            println!(
                "  round {}, {}: {:.0} webhooks/s, acceptance -> update p50 {:.1} ms, p99 {:.1} ms, \
                 {:.2} GraphQL calls and {:.2} updates per webhook, CPU {:.0} µs per webhook",
                round + 1,
                builds[index].label,
                trial.webhooks_per_second,
                trial.p50_ms,
                trial.p99_ms,
                trial.graphql_per_webhook,
                trial.updates_per_webhook,
                trial.cpu_per_webhook_us
            );
            trials[index].push(trial);
        }
    }
    report(&builds, &trials);
    if let Some(receiver) = &receiver {
        println!("spans received while exporting: {}", receiver.spans().len());
    }
    Ok(())
}

/// One figure of a trial.
type Figure = fn(&Trial) -> f64;

/// The medians of this build's trials, and their ratios to each other contender's.
fn report(builds: &[Build], trials: &[Vec<Trial>]) {
    let median_of =
        |runs: &[Trial], figure: Figure| median(&mut runs.iter().map(figure).collect::<Vec<_>>());
    let figures: [(&str, Figure); 6] = [
        ("webhooks/s end to end", |t| t.webhooks_per_second),
        ("p50 acceptance -> update (ms)", |t| t.p50_ms),
        ("p99 acceptance -> update (ms)", |t| t.p99_ms),
        ("GraphQL calls per webhook (target <= 3)", |t| {
            t.graphql_per_webhook
        }),
        ("commercetools updates per webhook", |t| {
            t.updates_per_webhook
        }),
        ("CPU per webhook, gateway + processor (µs)", |t| {
            t.cpu_per_webhook_us
        }),
    ];
    for (name, figure) in figures {
        let ours = median_of(&trials[0], figure);
        let others: Vec<String> = builds
            .iter()
            .zip(trials)
            .skip(1)
            .map(|(build, runs)| {
                let theirs = median_of(runs, figure);
                format!(
                    "{} {theirs:.2}, this build / {} {:.3}",
                    build.label,
                    build.label,
                    ours / theirs
                )
            })
            .collect();
        if others.is_empty() {
            println!("{name}: {ours:.2}");
        } else {
            println!("{name}: {ours:.2} ({})", others.join("; "));
        }
    }
}

/// One trial: a fresh topic, group and set of orders through `build`'s two processes.
async fn run_trial(apis: &Apis, options: &Options, build: &Build) -> anyhow::Result<Trial> {
    let sandbox = &apis.sandbox;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // One more order than measured: the last one warms the pipeline up (group join, tokens,
    // settings cache) before the clock starts.
    let mut seeded = seed_orders(sandbox, options.orders + 1, &run);
    let warm_up = seeded.pop().context("seeded orders")?;
    let seeded = Arc::new(seeded);
    let (port, ingest, processor) = start_pipeline(apis, options, build, &run)?;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/fluent");
    await_ready(&client, port).await?;
    let signer = Arc::new(Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        SECRET,
    ))));
    let warm_body = event_body(&warm_up.0, &format!("warm-up-{run}"), "COMPLETE");
    let mut request = client.post(&url).header("content-type", "application/json");
    for (name, value) in signer.sign(&format!("warm-up-{run}"), warm_body.as_bytes()) {
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
    let calls_before =
        [Endpoint::FluentGraphql, Endpoint::CtGraphql].map(|endpoint| sandbox.calls(endpoint));
    let cpu_before = bench::cpu_time(ingest.id())? + bench::cpu_time(processor.id())?;
    let accepted = send_all(&client, &url, &seeded, signer, sandbox, options).await?;
    await_completion(sandbox, &seeded).await?;
    let graphql = sandbox.calls(Endpoint::FluentGraphql) - calls_before[0]
        + sandbox.calls(Endpoint::CtGraphql)
        - calls_before[1];
    // Until their exit: an exporting build's last flush is part of what it costs.
    let cpu_spent = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let spent = bench::cpu_time_at_exit(&[ingest.id(), processor.id()])?;
        for (name, process) in [("gateway", ingest), ("processor", processor)] {
            if let Err(error) = process.terminate() {
                println!("  note: the {name} did not stop cleanly: {error:#}");
            }
        }
        Ok(spent)
    })
    .await??
    .saturating_sub(cpu_before);
    Ok(summarise(sandbox, &seeded, &accepted, graphql, cpu_spent))
}

/// Starts `build`'s gateway and processor on a topic and group of their own.
fn start_pipeline(
    apis: &Apis,
    options: &Options,
    build: &Build,
    run: &str,
) -> anyhow::Result<(u16, Process, Process)> {
    let topic = format!("bench-pipeline-{run}");
    let bus = [
        ("BUS", "kafka".to_owned()),
        ("KAFKA_BROKERS", options.brokers.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_CREATE_TOPICS", "true".into()),
        ("KAFKA_TOPIC_REPLICATION", "1".into()),
    ];
    let port = free_port()?;
    let mut ingest_env = bus.to_vec();
    ingest_env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
    ingest_env.push(("WEBHOOK_HMAC_SECRETS", format!("whsec_{}", base64_secret())));
    ingest_env.extend(build.env.iter().cloned());
    let ingest = spawn(&build.dir, "ingest", &ingest_env)?;
    let mut processor_env = bus.to_vec();
    processor_env.extend([
        ("KAFKA_GROUP_ID", format!("bench-pipeline-{run}")),
        ("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
    ]);
    processor_env.extend(apis.sandbox.config().client_env(&apis.url));
    // Tuning under test passes through from the benchmark's environment.
    if let Ok(properties) = std::env::var("KAFKA_PROPERTIES") {
        processor_env.push(("KAFKA_PROPERTIES", properties));
    }
    processor_env.extend(build.env.iter().cloned());
    let processor = spawn(&build.dir, "processor", &processor_env)?;
    Ok((port, ingest, processor))
}

async fn await_ready(client: &reqwest::Client, port: u16) -> anyhow::Result<()> {
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
    Ok(())
}

/// Acceptance times (sandbox clock, ms) per order and stage.
type Accepted = HashMap<usize, [f64; 4]>;

/// Sends every order's four events from `options.concurrency` senders, each event of an order
/// after the previous one was accepted.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    seeded: &Arc<Vec<(String, String)>>,
    signer: Arc<Signer>,
    sandbox: &Sandbox,
    options: &Options,
) -> anyhow::Result<Accepted> {
    let accepted: Arc<Mutex<Accepted>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let (concurrency, rate) = (options.concurrency, options.rate);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next, seeded, accepted, signer, sandbox) = (
            client.clone(),
            url.to_owned(),
            Arc::clone(&next),
            Arc::clone(seeded),
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
    let accepted = accepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(accepted)
}

/// Waits until every order shows its last stage in commercetools.
async fn await_completion(sandbox: &Sandbox, seeded: &[(String, String)]) -> anyhow::Result<()> {
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
            return Ok(());
        }
        ensure!(
            sent_at.elapsed() < Duration::from_secs(300),
            "{pending} orders never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The trial's figures from the orders' update histories and the acceptance times.
fn summarise(
    sandbox: &Sandbox,
    seeded: &[(String, String)],
    accepted: &Accepted,
    graphql_calls: u64,
    cpu_spent: Duration,
) -> Trial {
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
    let webhooks = (seeded.len() * STAGES.len()) as f64;
    latencies.sort_by(f64::total_cmp);
    Trial {
        webhooks_per_second: webhooks * 1000.0 / (last - first),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        graphql_per_webhook: graphql_calls as f64 / webhooks,
        updates_per_webhook: updates as f64 / webhooks,
        cpu_per_webhook_us: cpu_spent.as_secs_f64() * 1e6 / webhooks,
    }
}

fn event_body(order_ref: &str, id: &str, status: &str) -> String {
    sandbox::seed::order_status_event(id, order_ref, "1", status)
}

fn base64_secret() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(SECRET)
}
