//! A processor process for crash and rebalance tests: the real engine and bus, with a handler
//! that waits `HANDLER_LATENCY_MS` per call, then appends `partition offset key started ended`
//! for every record to `RECORD_FILE` before acknowledging it (the times are microseconds since
//! the Unix epoch, so the files of several processes merge into one timeline). Stops on
//! SIGTERM.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Publisher};
use common::config::Config;
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry};
use tokio_util::sync::CancellationToken;

struct Recorder {
    file: Mutex<std::fs::File>,
    latency: Duration,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        let started = micros_now();
        tokio::time::sleep(self.latency).await;
        let ended = micros_now();
        let mut lines = String::new();
        for record in records {
            let key = String::from_utf8_lossy(&record.key);
            lines.push_str(&format!(
                "{} {} {key} {started} {ended}\n",
                record.position.partition, record.position.offset
            ));
        }
        // One append per call: the effect is on disk (in the page cache, which survives
        // SIGKILL) before the record is acknowledged.
        match self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_all(lines.as_bytes())
        {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Retry {
                reason: error.to_string(),
                delay: None,
            },
        }
    }
}

fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Config::process_env();
    let config = Config::load(&env, None)?;
    let _telemetry = common::telemetry::init(&config.telemetry, "recording-processor")?;
    let path = env.get("RECORD_FILE").context("RECORD_FILE is not set")?;
    let latency = env
        .get("HANDLER_LATENCY_MS")
        .map_or(Ok(5), |ms| ms.parse())?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let memory = MemoryBus::default();
    let consumer = Consumer::connect(&config.bus, &memory).await?;
    let publisher = Publisher::connect(&config.bus, &memory).await?;
    let recorder = Recorder {
        file: Mutex::new(file),
        latency: Duration::from_millis(latency),
    };
    let engine = Engine::new(
        consumer,
        publisher,
        Registry::new().with(recorder),
        EngineConfig::from_config(&config),
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        terminate.recv().await;
        signal.cancel();
    });
    engine.run(shutdown).await?;
    Ok(())
}
