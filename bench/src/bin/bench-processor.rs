//! A processor process for the engine benchmark: the real engine and Kafka consumer with a
//! synthetic handler that waits `BENCH_LATENCY_MS` (simulated I/O) and succeeds.
//!
//! It runs until `BENCH_RECORDS` records are done, then prints one JSON line: records, the
//! seconds from the first handler call to the last record done, the process's CPU time per
//! record over that span (user + system, from `/proc/self/stat`), its peak RSS (`VmHWM`) and
//! RSS samples taken every 250 ms; then it shuts down cleanly. The bus settings come from
//! the usual environment (`KAFKA_BROKERS`, `KAFKA_TOPIC`, `KAFKA_GROUP_ID`,
//! `PROCESSOR_MAX_IN_FLIGHT`, ...). Driven by `engine-bench`.

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::bus::memory::MemoryBus;
use processor_engine::{Context, Handler, Outcome, Record, Registry};
use tokio_util::sync::CancellationToken;

/// When the first handler call started, and the CPU time used by then.
static FIRST_CALL: OnceLock<(Instant, Duration)> = OnceLock::new();

struct Synthetic {
    latency: Duration,
}

#[async_trait::async_trait]
impl Handler for Synthetic {
    fn names(&self) -> Vec<String> {
        vec!["fc.connect.order.webhook.order-status-update".into()]
    }

    async fn handle(&self, _records: &[Record], _context: &Context) -> Outcome {
        FIRST_CALL.get_or_init(|| (Instant::now(), own_cpu_time()));
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Outcome::Done
    }
}

fn own_cpu_time() -> Duration {
    bench::cpu_time(std::process::id()).unwrap_or_default()
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(field)?.trim().trim_end_matches(" kB");
                value.trim().parse::<f64>().ok()
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = common::config::Config::process_env();
    let config = common::config::Config::load(&env, None)?;
    let _telemetry = common::telemetry::init(&config.telemetry, "bench-processor")?;
    let number = |name: &str| -> anyhow::Result<u64> {
        env.get(name)
            .with_context(|| format!("{name} is not set"))?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    let records = number("BENCH_RECORDS")?;
    let latency = Duration::from_millis(number("BENCH_LATENCY_MS")?);
    let registry = Registry::new().with(Synthetic { latency });
    let app = processor::App::build(&config, &MemoryBus::default(), registry).await?;
    let engine_stats = app.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(listener, shutdown.clone()));

    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    let (mut last_done, mut last_progress) = (0, Instant::now());
    loop {
        let done = engine_stats.done.load(Ordering::Relaxed);
        if done >= records {
            break;
        }
        if done != last_done {
            (last_done, last_progress) = (done, Instant::now());
        }
        anyhow::ensure!(
            last_progress.elapsed() < Duration::from_secs(60),
            "stalled: {done} of {records} records done, none for a minute"
        );
        if last_sample.elapsed() >= Duration::from_millis(250) {
            samples.push((status_mib("VmRSS:") * 10.0).round() / 10.0);
            last_sample = Instant::now();
        }
        if running.is_finished() {
            anyhow::bail!("the processor stopped early: {:?}", running.await?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first, cpu_at_first) = *FIRST_CALL.get().context("no handler call was made")?;
    let seconds = first.elapsed().as_secs_f64();
    let cpu = own_cpu_time().saturating_sub(cpu_at_first);
    let report = serde_json::json!({
        "records": records,
        "seconds": seconds,
        "records_per_second": records as f64 / seconds,
        "cpu_us_per_record": cpu.as_secs_f64() * 1e6 / records as f64,
        "peak_rss_mib": status_mib("VmHWM:"),
        "rss_samples_mib": samples,
    });
    println!("{report}");
    shutdown.cancel();
    running.await??;
    Ok(())
}
