//! What exporting traces costs the gateway, counted in instructions: the `ingest` process runs
//! under `valgrind --tool=callgrind` with and without an OTLP endpoint (and with a sampler
//! keeping a tenth of the traces), under `RUST_LOG=warn` and `info`, and the report gives the
//! instructions it executed per webhook and each contender's ratio to the same build without
//! an endpoint.
//!
//! CPU time on these shared two-core machines varies by 15 % between runs of one build, more
//! than the cost being judged; an instruction count does not (two runs of one build agree
//! within 0.5 %). Per webhook is the difference between a run of `WARM` webhooks and one of
//! `WARM + REQUESTS`, so start-up and shutdown cancel out. HMAC-signed webhooks, on the real
//! broker; the receiver runs in this process, not under valgrind.
//!
//! Run it with `./scripts/bench trace-cost [REQUESTS=4000]`, or
//! `trace-cost BROKERS [REQUESTS]`.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bench::load::{Load, Signer, run};
use e2e_tests::otlp::{Receiver, Transport};
use e2e_tests::process::{free_port, spawn_with_args};

const HMAC_SECRET: &[u8] = b"trace-cost-benchmark-secret";
/// Webhooks of the shorter run, whose count is subtracted.
const WARM: usize = 500;

/// One configuration of the gateway under test.
struct Contender {
    name: &'static str,
    env: Vec<(&'static str, String)>,
}

fn valgrind() -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("valgrind");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("valgrind is not on PATH (Debian's package `valgrind`): it counts the instructions")
}

/// Instructions the gateway executed from start to exit, handling `webhooks` webhooks.
async fn instructions(
    broker: &str,
    contender: &Contender,
    log_filter: &str,
    webhooks: usize,
) -> anyhow::Result<u64> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the benchmark's directory")?
        .join("ingest");
    let out = tempfile::NamedTempFile::new()?;
    let port = free_port()?;
    let topic = format!("bench-trace-cost-{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("BUS", "kafka".to_owned()),
        ("KAFKA_BROKERS", broker.to_owned()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_CREATE_TOPICS", "true".into()),
        ("KAFKA_TOPIC_REPLICATION", "1".into()),
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
        (
            "WEBHOOK_HMAC_SECRETS",
            format!(
                "whsec_{}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, HMAC_SECRET)
            ),
        ),
        ("RUST_LOG", log_filter.to_owned()),
    ];
    env.extend(contender.env.iter().cloned());
    let args = [
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.path().display()),
        binary.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = spawn_with_args(&valgrind()?, &args, &env)?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // Under valgrind the gateway starts some fifty times slower.
    let until = Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{url}/health/ready"))
        .send()
        .await
        .is_ok_and(|answer| answer.status().is_success())
    {
        ensure!(Instant::now() < until, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = run(Load {
        url: format!("{url}/webhooks/fluent"),
        signer: Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            HMAC_SECRET,
        ))),
        concurrency: 16,
        count: webhooks,
        duration: Duration::from_secs(900),
        progress: false,
        rate: None,
    })
    .await;
    ensure!(
        report.accepted() == webhooks,
        "{} of {webhooks} accepted: {}",
        report.accepted(),
        report.summary()
    );
    // SIGTERM: the exporting contenders flush, as in production, and callgrind writes its
    // counts at the exit.
    tokio::task::spawn_blocking(move || process.terminate()).await??;
    let counts = std::fs::read_to_string(out.path())?;
    counts
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|total| total.trim().parse().ok())
        .context("no instruction total in callgrind's output")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let broker = args
        .first()
        .context("usage: trace-cost BROKERS [REQUESTS]")?;
    let requests: usize = args.get(1).map_or(Ok(4_000), |n| n.parse())?;
    let receiver = Receiver::start(Transport::Http).await?;
    let mut sampled = receiver.env();
    sampled.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
    sampled.push(("OTEL_TRACES_SAMPLER_ARG", "0.1".into()));
    let contenders = [
        Contender {
            name: "no export",
            env: Vec::new(),
        },
        Contender {
            name: "export",
            env: receiver.env(),
        },
        Contender {
            name: "10 % sampled",
            env: sampled,
        },
    ];
    println!(
        "trace cost: instructions per webhook of the gateway under callgrind, HMAC, \
         ({WARM} + {requests}) - {WARM} webhooks, 16 in flight, broker {broker}"
    );
    for log_filter in ["warn", "info"] {
        let mut per_webhook = Vec::new();
        for contender in &contenders {
            let short = instructions(broker, contender, log_filter, WARM).await?;
            let long = instructions(broker, contender, log_filter, WARM + requests).await?;
            let each = long.saturating_sub(short) as f64 / requests as f64;
            println!(
                "RUST_LOG={log_filter:<5} {:<13} {each:>9.0} instructions per webhook",
                contender.name
            );
            per_webhook.push(each);
        }
        for (contender, each) in contenders.iter().zip(&per_webhook).skip(1) {
            println!(
                "RUST_LOG={log_filter:<5} {} / no export: {:.3}",
                contender.name,
                each / per_webhook[0]
            );
        }
    }
    println!("spans received while exporting: {}", receiver.spans().len());
    Ok(())
}
