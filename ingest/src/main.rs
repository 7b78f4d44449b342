//! The `ingest` binary: load the configuration, start telemetry, serve until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::bus::memory::MemoryBus;
use common::config::Config;
use tokio_util::sync::CancellationToken;

// mimalloc rather than glibc's allocator: a webhook makes some 60 short-lived allocations
// across the async workers, librdkafka's threads and, while traces are exported, the batch
// processor's thread, which frees every span the workers allocated. glibc's arenas serialise
// those frees on a lock (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Fluent webhook gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file (same keys as the environment; the environment wins).
    #[arg(long, env = "CONFIG_FILE")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&Config::process_env(), args.config.as_deref())?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.ingest.worker_threads {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = common::telemetry::init_direct(&config.telemetry, "ingest")?;
    let served = run(config).await;
    // Spans of the last requests, drained by then, reach the receiver before the exit, and
    // the spans of a failed start too.
    telemetry.shutdown().await;
    served
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = ingest::App::build(&config, &MemoryBus::default()).await?;
    let listener = tokio::net::TcpListener::bind(config.ingest.listen)
        .await
        .with_context(|| format!("cannot listen on INGEST_LISTEN={}", config.ingest.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::signal::cancel_on_signal(shutdown.clone()));
    app.run(listener, shutdown).await?;
    Ok(())
}
