//! The ingest benchmark, in one run on this machine:
//!
//! - (a) the `ingest` process with RSA-2048 verification publishing to the real Kafka broker,
//!   and the same in HMAC mode;
//! - (b) the same HTTP stack answering 200 at once (`http-ceiling`): the HTTP ceiling;
//! - (c) our bus publisher alone at the same concurrency: the broker ceiling;
//! - (d) the same `ingest` on the in-memory bus: everything the gateway does but the broker
//!   round trip, so (a) - (d) is what the acknowledged Kafka publish costs (a few µs less:
//!   (d) also grows the heap to keep every record, which a broker would hold instead);
//!
//! then (a) again, paced at half its maximum rate, for the latency there. It reports requests/s,
//! p99, (a) / min(b, c) and the CPU time the ingest process spent per accepted webhook, as
//! medians over `ROUNDS` rounds (the CPU figure drifts by ±10 µs between single runs here).
//!
//! With `INGEST_BASELINE_BIN` naming another build of `ingest` (say, the previous commit's),
//! every round measures both, alternating which goes first, and the report ends with the ratio
//! of their CPU per webhook: how a change to the gateway is proven in one run.
//!
//! `./scripts/bench ingest [REQUESTS] [CONCURRENCY] [ROUNDS]` builds and runs it.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bench::load::{Load, Report, Signer, run};
use bench::{cpu_time, median, webhook_body};
use common::bus::{Headers, OutboundRecord, Publisher, memory::MemoryBus};
use common::config::Config;
use e2e_tests::process::{Process, free_port, spawn};
use futures::StreamExt as _;

const HMAC_SECRET: &[u8] = b"benchmark-hmac-secret-0123456789";

struct Server {
    process: Process,
    url: String,
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

async fn start_ingest(
    binary: &Path,
    brokers: Option<&str>,
    auth: (&str, String),
    extra: &[(&'static str, String)],
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let topic = format!("bench-ingest-{}", uuid::Uuid::new_v4().simple());
    let mut env: Vec<(&str, String)> = match brokers {
        Some(brokers) => vec![
            ("BUS", "kafka".into()),
            ("KAFKA_BROKERS", brokers.into()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
            ("KAFKA_CREATE_TOPICS", "true".into()),
            ("KAFKA_TOPIC_REPLICATION", "1".into()),
        ],
        // (d): the gateway's own cost, every step but the broker round trip.
        None => vec![("BUS", "memory".into())],
    };
    env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(auth);
    env.extend_from_slice(extra);
    // Tuning knobs under test pass through from the benchmark's environment.
    for key in ["INGEST_WORKER_THREADS", "KAFKA_PROPERTIES"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key, value));
        }
    }
    let process = spawn(binary, &env)?;
    let server = Server {
        process,
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
        process: Process::new(child),
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
    let before = cpu_time(server.process.id())?;
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
    let spent = cpu_time(server.process.id())?.saturating_sub(before);
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

fn micros(measured: &Measured) -> f64 {
    measured
        .cpu_per_accepted
        .map_or(f64::NAN, |cpu| cpu.as_secs_f64() * 1e6)
}

/// One build of the gateway (or one configuration of it) and what its rounds measured.
struct Contender {
    name: String,
    binary: PathBuf,
    /// Added to the gateway's environment (trace export, say).
    env: Vec<(&'static str, String)>,
    rsa_rate: Vec<f64>,
    rsa_p99_ms: Vec<f64>,
    rsa_cpu: Vec<f64>,
    hmac_rate: Vec<f64>,
    hmac_cpu: Vec<f64>,
}

impl Contender {
    fn new(name: &str, binary: PathBuf, env: Vec<(&'static str, String)>) -> Self {
        Self {
            name: name.to_owned(),
            binary,
            env,
            rsa_rate: Vec::new(),
            rsa_p99_ms: Vec::new(),
            rsa_cpu: Vec::new(),
            hmac_rate: Vec::new(),
            hmac_cpu: Vec::new(),
        }
    }
}

/// The key pair and settings every round shares.
struct Setup {
    brokers: String,
    private: Vec<u8>,
    public: String,
    requests: usize,
    concurrency: usize,
}

impl Setup {
    fn rsa_auth(&self) -> (&'static str, String) {
        ("FLUENT_WEBHOOK_PUBLIC_KEYS", self.public.clone())
    }

    fn hmac_auth() -> (&'static str, String) {
        (
            "WEBHOOK_HMAC_SECRETS",
            format!("whsec_{}", STANDARD.encode(HMAC_SECRET)),
        )
    }

    /// Starts `binary` on the broker (or, without one, the in-memory bus), warms it up with
    /// 1,000 requests, then measures `requests` of them.
    async fn measure(
        &self,
        binary: &Path,
        brokers: Option<&str>,
        auth: (&str, String),
        extra: &[(&'static str, String)],
        signer: impl Fn() -> anyhow::Result<Signer>,
    ) -> anyhow::Result<Measured> {
        let server = start_ingest(binary, brokers, auth, extra).await?;
        load(&server, signer()?, 1_000, self.concurrency, None).await?;
        load(&server, signer()?, self.requests, self.concurrency, None).await
    }

    /// Both modes of one contender, recorded.
    async fn round(&self, contender: &mut Contender) -> anyhow::Result<()> {
        let rsa = self
            .measure(
                &contender.binary,
                Some(&self.brokers),
                self.rsa_auth(),
                &contender.env,
                || rsa_signer(&self.private),
            )
            .await?;
        line(&format!("(a) {}, RSA-2048", contender.name), &rsa);
        let hmac = self
            .measure(
                &contender.binary,
                Some(&self.brokers),
                Self::hmac_auth(),
                &contender.env,
                || Ok(hmac_signer()),
            )
            .await?;
        line(&format!("(a) {}, HMAC", contender.name), &hmac);
        contender.rsa_rate.push(rsa.report.accepted_per_second());
        contender
            .rsa_p99_ms
            .push(rsa.report.latency(0.99).as_secs_f64() * 1e3);
        contender.rsa_cpu.push(micros(&rsa));
        contender.hmac_rate.push(hmac.report.accepted_per_second());
        contender.hmac_cpu.push(micros(&hmac));
        Ok(())
    }

    /// (d) `binary` with the in-memory bus, both modes: CPU per webhook (RSA, HMAC).
    async fn without_broker(&self, binary: &Path) -> anyhow::Result<(f64, f64)> {
        let rsa = self
            .measure(binary, None, self.rsa_auth(), &[], || {
                rsa_signer(&self.private)
            })
            .await?;
        line("(d) ingest, no broker, RSA", &rsa);
        let hmac = self
            .measure(binary, None, Self::hmac_auth(), &[], || Ok(hmac_signer()))
            .await?;
        line("(d) ingest, no broker, HMAC", &hmac);
        Ok((micros(&rsa), micros(&hmac)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args
        .first()
        .context("usage: ingest BROKERS [REQUESTS] [CONCURRENCY] [ROUNDS]")?
        .clone();
    let requests: usize = args.get(1).map_or(Ok(20_000), |n| n.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(64), |n| n.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |n| n.parse())?;
    let key = RsaKeyPair::generate(KeySize::Rsa2048)?;
    let setup = Setup {
        brokers,
        private: key.as_der()?.as_ref().to_vec(),
        public: STANDARD.encode(key.public_key().as_der()?.as_ref()),
        requests,
        concurrency,
    };
    let mut contenders = vec![Contender::new("ingest", sibling("ingest")?, Vec::new())];
    if let Some(baseline) = std::env::var_os("INGEST_BASELINE_BIN") {
        let baseline = PathBuf::from(baseline);
        ensure!(baseline.exists(), "{} missing", baseline.display());
        contenders.push(Contender::new("baseline", baseline, Vec::new()));
    }
    // BENCH_OTLP=http or grpc: the same build exporting every span to a receiver here.
    let receiver = bench::otlp_receiver().await?;
    if let Some(receiver) = &receiver {
        contenders.push(Contender::new("export", sibling("ingest")?, receiver.env()));
        // And with a sampler keeping a share of the traces (BENCH_OTLP_RATIO, default 0.1).
        let ratio = std::env::var("BENCH_OTLP_RATIO").unwrap_or_else(|_| "0.1".into());
        let mut sampled = receiver.env();
        sampled.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
        sampled.push(("OTEL_TRACES_SAMPLER_ARG", ratio));
        contenders.push(Contender::new(
            "sampled",
            sibling("ingest")?,
            sampled.clone(),
        ));
        // A change to the exporting path shows against the baseline build exporting too.
        if let Some(baseline) = std::env::var_os("INGEST_BASELINE_BIN") {
            let baseline = PathBuf::from(baseline);
            contenders.push(Contender::new(
                "base-export",
                baseline.clone(),
                receiver.env(),
            ));
            contenders.push(Contender::new("base-sampled", baseline, sampled));
        }
    }
    println!(
        "ingest benchmark: {requests} requests, {concurrency} in flight, ~600-byte bodies, \
         {rounds} rounds, broker {}",
        setup.brokers
    );

    let (mut ceiling_rate, mut ceiling_cpu, mut bus_rate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alone_rsa, mut alone_hmac) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        println!("-- round {}", round + 1);
        // Alternate which build goes first: the machine's drift hits both alike.
        if round % 2 == 1 {
            contenders.reverse();
        }
        for contender in &mut contenders {
            setup.round(contender).await?;
        }
        if round % 2 == 1 {
            contenders.reverse();
        }
        let ceiling = {
            let server = start_ceiling().await?;
            let signer = || rsa_signer(&setup.private);
            load(&server, signer()?, 1_000, concurrency, None).await?;
            load(&server, signer()?, requests, concurrency, None).await?
        };
        line("(b) HTTP ceiling", &ceiling);
        ceiling_rate.push(ceiling.report.accepted_per_second());
        ceiling_cpu.push(micros(&ceiling));
        let (rsa, hmac) = setup.without_broker(&contenders[0].binary).await?;
        alone_rsa.push(rsa);
        alone_hmac.push(hmac);
        let bus = publisher_alone(&setup.brokers, requests, concurrency).await?;
        println!("{:<28} {bus:.0} records/s", "(c) bus publisher alone");
        bus_rate.push(bus);
    }

    let current = &mut contenders[0];
    let max = median(&mut current.rsa_rate);
    let half = {
        let server = start_ingest(
            &current.binary,
            Some(&setup.brokers),
            setup.rsa_auth(),
            &current.env,
        )
        .await?;
        let count = ((max / 2.0) * 10.0) as usize; // ten seconds at half rate
        let signer = rsa_signer(&setup.private)?;
        load(&server, signer, count, concurrency, Some(max / 2.0)).await?
    };
    line("(a) RSA at half max rate", &half);

    println!("-- medians over {rounds} rounds");
    let floor = median(&mut ceiling_rate).min(median(&mut bus_rate));
    println!(
        "HTTP ceiling {:.0} req/s ({:.1} µs CPU per request), bus publisher alone {:.0} records/s",
        median(&mut ceiling_rate),
        median(&mut ceiling_cpu),
        median(&mut bus_rate),
    );
    for contender in &mut contenders {
        println!(
            "{:<9} RSA {:.0}/s p99 {:.1} ms CPU {:.1} µs per webhook | HMAC {:.0}/s CPU {:.1} µs",
            contender.name,
            median(&mut contender.rsa_rate),
            median(&mut contender.rsa_p99_ms),
            median(&mut contender.rsa_cpu),
            median(&mut contender.hmac_rate),
            median(&mut contender.hmac_cpu),
        );
    }
    let (alone_rsa, alone_hmac) = (median(&mut alone_rsa), median(&mut alone_hmac));
    let current = &mut contenders[0];
    let (with_rsa, with_hmac) = (median(&mut current.rsa_cpu), median(&mut current.hmac_cpu));
    println!(
        "ingest without a broker (d): RSA {alone_rsa:.1} µs, HMAC {alone_hmac:.1} µs per webhook; \
         so the acknowledged Kafka publish costs RSA {:.1} µs, HMAC {:.1} µs of it",
        with_rsa - alone_rsa,
        with_hmac - alone_hmac,
    );
    println!(
        "ratio (a) RSA / min(b, c): {:.3}; p99 at half the max rate {:.1} ms",
        max / floor,
        half.report.latency(0.99).as_secs_f64() * 1e3
    );
    if let [current, others @ ..] = contenders.as_mut_slice() {
        for other in others {
            println!(
                "{} / ingest: throughput RSA {:.3}, HMAC {:.3}; CPU per webhook RSA {:.3}, HMAC {:.3}",
                other.name,
                median(&mut other.rsa_rate) / median(&mut current.rsa_rate),
                median(&mut other.hmac_rate) / median(&mut current.hmac_rate),
                median(&mut other.rsa_cpu) / median(&mut current.rsa_cpu),
                median(&mut other.hmac_cpu) / median(&mut current.hmac_cpu),
            );
        }
    }
    if let Some(receiver) = &receiver {
        println!("spans received while exporting: {}", receiver.spans().len());
    }
    Ok(())
}
