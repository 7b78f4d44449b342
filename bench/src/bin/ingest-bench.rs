//! The ingest benchmark, in one run on this machine:
//!
//! - (a) the `ingest` process with RSA-2048 verification publishing to the real Kafka broker,
//!   and the same in HMAC mode;
//! - (b) the same HTTP stack answering 200 at once (`http-ceiling`): the HTTP ceiling;
//! - (c) our bus publisher alone at the same concurrency: the broker ceiling;
//!
//! then (a) again, paced at half its maximum rate, for the latency there. It reports requests/s,
//! p99, (a) / min(b, c) and the CPU time the ingest process spent per accepted webhook.
//!
//! `./scripts/bench ingest [REQUESTS] [CONCURRENCY]` builds and runs it.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bench::load::{Load, Report, Signer, run};
use bench::{cpu_time, webhook_body};
use common::bus::{Headers, OutboundRecord, Publisher, memory::MemoryBus};
use common::config::Config;
use futures::StreamExt as _;

const HMAC_SECRET: &[u8] = b"benchmark-hmac-secret-0123456789";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} missing: cargo build --release -p ingest -p bench",
        path.display()
    );
    Ok(path)
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        ensure!(Instant::now() < until, "{url} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_ingest(brokers: &str, auth: (&str, String)) -> anyhow::Result<Server> {
    let port = free_port()?;
    let topic = format!("bench-ingest-{}", uuid::Uuid::new_v4().simple());
    let child = Command::new(sibling("ingest")?)
        .env_clear()
        .env("BUS", "kafka")
        .env("KAFKA_BROKERS", brokers)
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
        .env("KAFKA_CREATE_TOPICS", "true")
        .env("KAFKA_TOPIC_REPLICATION", "1")
        .env("INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env(auth.0, auth.1)
        // Tuning knobs under test pass through from the benchmark's environment.
        .envs(
            std::env::vars()
                .filter(|(key, _)| key == "INGEST_WORKER_THREADS" || key == "KAFKA_PROPERTIES"),
        )
        .stdout(Stdio::null())
        .spawn()
        .context("starting ingest")?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(&format!("{}/health/ready", server.url)).await?;
    Ok(server)
}

async fn start_ceiling() -> anyhow::Result<Server> {
    let port = free_port()?;
    let child = Command::new(sibling("http-ceiling")?)
        .arg(format!("127.0.0.1:{port}"))
        .spawn()
        .context("starting http-ceiling")?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < until, "http-ceiling did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(server)
}

fn rsa_signer(der: &[u8]) -> anyhow::Result<Signer> {
    Ok(Signer::Rsa(RsaKeyPair::from_pkcs8(der)?))
}

fn hmac_signer() -> Signer {
    Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        HMAC_SECRET,
    )))
}

struct Measured {
    report: Report,
    cpu_per_accepted: Option<Duration>,
}

async fn load(
    server: &Server,
    signer: Signer,
    requests: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> anyhow::Result<Measured> {
    let url = format!("{}/webhooks/fluent", server.url);
    let before = cpu_time(server.child.id())?;
    let report = run(Load {
        url,
        signer,
        concurrency,
        count: requests,
        duration: Duration::from_secs(300),
        progress: false,
        rate,
    })
    .await;
    let spent = cpu_time(server.child.id())?.saturating_sub(before);
    let accepted = u32::try_from(report.accepted()).unwrap_or(u32::MAX);
    let cpu_per_accepted = (accepted > 0).then(|| spent / accepted);
    Ok(Measured {
        report,
        cpu_per_accepted,
    })
}

async fn publisher_alone(
    brokers: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let topic = format!("bench-bus-{}", uuid::Uuid::new_v4().simple());
    let env: HashMap<String, String> = [
        ("KAFKA_BROKERS", brokers),
        ("KAFKA_TOPIC", &topic),
        ("KAFKA_CREATE_TOPICS", "true"),
        ("KAFKA_TOPIC_REPLICATION", "1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let publisher = Publisher::connect(
        &Config::from_sources(&env, None)?.bus,
        &MemoryBus::default(),
    )
    .await?;
    let records: Vec<OutboundRecord> = (0..requests)
        .map(|i| OutboundRecord {
            key: format!("HD_{i:08}").into(),
            payload: webhook_body(i),
            headers: Headers::new().with("fluent-event-id", format!("{i}")),
        })
        .collect();
    // Warm-up, as for the servers: metadata and connections before the clock starts.
    for record in records.iter().take(1_000) {
        publisher.publish(record.clone()).await?;
    }
    let started = Instant::now();
    let mut results = futures::stream::iter(records)
        .map(|record| publisher.publish(record))
        .buffer_unordered(concurrency);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

fn line(name: &str, measured: &Measured) {
    let cpu = measured.cpu_per_accepted.map_or("-".into(), |cpu| {
        format!("{:.1} µs", cpu.as_secs_f64() * 1e6)
    });
    println!(
        "{name:<28} {}  | ingest CPU per accepted webhook: {cpu}",
        measured.report.summary()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args
        .first()
        .context("usage: ingest BROKERS [REQUESTS] [CONCURRENCY]")?
        .clone();
    let requests: usize = args.get(1).map_or(Ok(20_000), |n| n.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(64), |n| n.parse())?;
    let key = RsaKeyPair::generate(KeySize::Rsa2048)?;
    let (private, public) = (
        key.as_der()?.as_ref().to_vec(),
        STANDARD.encode(key.public_key().as_der()?.as_ref()),
    );
    println!(
        "ingest benchmark: {requests} requests, {concurrency} in flight, ~600-byte bodies, broker {brokers}"
    );

    let rsa = {
        let server = start_ingest(&brokers, ("FLUENT_WEBHOOK_PUBLIC_KEYS", public.clone())).await?;
        load(&server, rsa_signer(&private)?, 1_000, concurrency, None).await?; // warm-up
        load(&server, rsa_signer(&private)?, requests, concurrency, None).await?
    };
    line("(a) ingest, RSA-2048", &rsa);
    let hmac = {
        let secret = format!("whsec_{}", STANDARD.encode(HMAC_SECRET));
        let server = start_ingest(&brokers, ("WEBHOOK_HMAC_SECRETS", secret)).await?;
        load(&server, hmac_signer(), 1_000, concurrency, None).await?;
        load(&server, hmac_signer(), requests, concurrency, None).await?
    };
    line("(a) ingest, HMAC", &hmac);
    let ceiling = {
        let server = start_ceiling().await?;
        load(&server, rsa_signer(&private)?, 1_000, concurrency, None).await?;
        load(&server, rsa_signer(&private)?, requests, concurrency, None).await?
    };
    line("(b) HTTP ceiling", &ceiling);
    let bus = publisher_alone(&brokers, requests, concurrency).await?;
    println!("{:<28} {bus:.0} records/s", "(c) bus publisher alone");

    let max = rsa.report.accepted_per_second();
    let half = {
        let server = start_ingest(&brokers, ("FLUENT_WEBHOOK_PUBLIC_KEYS", public)).await?;
        let count = ((max / 2.0) * 10.0) as usize; // ten seconds at half rate
        load(
            &server,
            rsa_signer(&private)?,
            count,
            concurrency,
            Some(max / 2.0),
        )
        .await?
    };
    line("(a) RSA at half max rate", &half);
    let floor = ceiling.report.accepted_per_second().min(bus);
    println!("ratio (a) RSA / min(b, c): {:.3}", max / floor);
    Ok(())
}
