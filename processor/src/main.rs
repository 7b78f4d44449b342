//! The `processor` binary: load the configuration, start telemetry, run the engine with the
//! order-status handler until SIGTERM or Ctrl-C, then drain, commit and exit 0.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::bus::memory::MemoryBus;
use common::config::{Config, Needs};
use order_status::OrderStatusUpdate;
use processor::App;
use processor_engine::Registry;
use tokio_util::sync::CancellationToken;

/// Stage 2: Fluent order status events to commercetools order states.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file (same keys as the environment; the environment wins).
    #[arg(long, env = "CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Log the commercetools updates it would make and send none; consume as
    /// `<KAFKA_GROUP_ID>-dry-run` (NATS: `<NATS_CONSUMER_PREFIX>-dry-run`) and keep dead
    /// letters in memory, so the real group and DLQ are untouched.
    /// (`PROCESSOR_DRY_RUN` takes what every boolean setting does: true/false, 1/0, yes/no,
    /// on/off.)
    #[arg(
        long,
        env = "PROCESSOR_DRY_RUN",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Every missing API setting is reported with every other invalid value, at once.
    let config = Config::load_for(
        &Config::process_env(),
        args.config.as_deref(),
        Needs::ORDER_STATUS_APIS,
    )?;
    let telemetry = common::telemetry::init(&config.telemetry, "processor")?;
    let ran = run(&config, args.dry_run).await;
    // Spans of the last records, drained by then, reach the receiver before the exit, and the
    // spans of a failed start too.
    telemetry.shutdown().await;
    ran
}

async fn run(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    // The handler registers its metrics itself (`Handler::register_metrics`).
    let (handler, _metrics) = OrderStatusUpdate::from_config(config)?;
    let registry = Registry::new().with(handler.dry_run(dry_run));
    let memory = MemoryBus::default();
    let app = if dry_run {
        tracing::warn!(
            "dry run: commercetools updates are logged, not sent; dead letters stay in memory"
        );
        App::build_dry_run(config, &memory, registry).await?
    } else {
        App::build(config, &memory, registry).await?
    };
    let listener = tokio::net::TcpListener::bind(config.processor.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on METRICS_LISTEN={}",
                config.processor.metrics_listen
            )
        })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::signal::cancel_on_signal(shutdown.clone()));
    app.run(listener, shutdown).await?;
    Ok(())
}
