//! The `processor` binary: load the configuration, start telemetry, run the engine with the
//! order-status handler until SIGTERM or Ctrl-C, then drain, commit and exit 0. Its
//! subcommands are the day-to-day operations (`check`, `dlq list`, `dlq replay`, `resync`):
//! exit 0 when they did their work (`check`: the environment is ready), 1 otherwise.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::bus::memory::MemoryBus;
use common::config::{Config, Needs};
use common::telemetry::LogOutput;
use order_status::OrderStatusUpdate;
use processor::App;
use processor::ops::{self, dlq::Selection};
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
    /// `<KAFKA_GROUP_ID>-dry-run` (NATS: `<NATS_CONSUMER_PREFIX>-dry-run`), first from the
    /// newest record, and keep dead letters in memory, so the real group and DLQ are
    /// untouched. Also makes `dlq replay` and `resync` dry runs.
    /// (`PROCESSOR_DRY_RUN` takes what every boolean setting does: true/false, 1/0, yes/no,
    /// on/off.)
    #[arg(
        long,
        env = "PROCESSOR_DRY_RUN",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    dry_run: bool,
    /// An operation instead of running the processor.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Checks this environment: configuration, both OAuth clients, the mapping settings, the
    /// topics (or stream) and the consumer group's lag. Exit 0 when ready.
    Check {
        /// Read this retailer's settings (RETAILER over ACCOUNT) rather than the ACCOUNT ones.
        #[arg(long)]
        retailer: Option<String>,
    },
    /// The dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Reads the order's current status in Fluent, maps it, and sets the commercetools
    /// states now.
    Resync {
        /// The Fluent order ref.
        #[arg(long)]
        order_ref: String,
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Subcommand)]
enum DlqCommand {
    /// Lists dead letters with their `dlq-*` headers and whether they were replayed.
    List {
        #[command(flatten)]
        selection: Selection,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publishes the selected dead letters again to the webhook topic (the newest of each
    /// order), each remembered as replayed once the broker acknowledged it.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Replay every selected dead letter of an order, oldest first, not only its newest.
        #[arg(long)]
        all_versions: bool,
        /// Say what would be replayed; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    // The DLQ commands need the bus alone; the rest the APIs too.
    let needs = match args.command {
        Some(Command::Dlq { .. }) => Needs::NOTHING,
        _ => Needs::ORDER_STATUS_APIS,
    };
    // Every missing API setting is reported with every other invalid value, at once.
    let config = Config::load_for(&Config::process_env(), args.config.as_deref(), needs)?;
    // A subcommand's report owns stdout; its log lines go to stderr.
    let output = match args.command {
        None => LogOutput::Stdout,
        Some(_) => LogOutput::Stderr,
    };
    let telemetry = common::telemetry::init_to(&config.telemetry, "processor", output)?;
    let ran = match args.command {
        None => run(&config, args.dry_run).await.map(|()| true),
        // Boxed: a replay's future holds the DLQ reader and its broker clients.
        Some(command) => Box::pin(operate(&config, command, args.dry_run)).await,
    };
    // Spans of the last records, drained by then, reach the receiver before the exit, and the
    // spans of a failed start too.
    telemetry.shutdown().await;
    Ok(if ran? {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Runs an operations subcommand, its report on stdout; whether it succeeded.
/// `PROCESSOR_DRY_RUN` makes every one that changes something a dry run too.
async fn operate(config: &Config, command: Command, dry_run_env: bool) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Check { retailer } => {
            Ok(ops::check::check(config, retailer.as_deref(), &mut out).await?)
        }
        Command::Dlq {
            command: DlqCommand::List { selection, json },
        } => {
            ops::dlq::list(&config.bus, &selection, json, &mut out).await?;
            Ok(true)
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    selection,
                    all_versions,
                    dry_run,
                },
        } => {
            Box::pin(ops::dlq::replay(
                &config.bus,
                &selection,
                all_versions,
                dry_run || dry_run_env,
                &mut out,
            ))
            .await?;
            Ok(true)
        }
        Command::Resync { order_ref, dry_run } => {
            ops::resync::resync(config, &order_ref, dry_run || dry_run_env, &mut out).await?;
            Ok(true)
        }
    }
}

async fn run(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    // The handler registers its metrics itself (`Handler::register_metrics`).
    let (handler, _metrics) = OrderStatusUpdate::from_config(config)?;
    let registry = Registry::new().with(handler);
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
