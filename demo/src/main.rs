//! `cargo run --release --bin demo`: the whole pipeline in one process against the sandbox
//! APIs (see the `demo` library). Exits 0 when every order ended in the states Fluent's
//! mapping gives it, 1 when one did not, 2 when the demo could not run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::config::Config;
use demo::{Demo, Options};
use tokio_util::sync::CancellationToken;

/// The connector end to end, on this machine, with nothing else running.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// How many orders walk through Fluent's statuses.
    #[arg(long, default_value_t = 40)]
    orders: usize,
    /// The story's seed (random when not given; printed at the end).
    #[arg(long)]
    seed: Option<u64>,
    /// No failing API calls, no version conflicts, no concurrent edits.
    #[arg(long)]
    no_faults: bool,
    /// Keep everything running afterwards, with ready-to-paste commands.
    #[arg(long)]
    serve: bool,
    /// Longest the processor may take after the last webhook, seconds.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Seed Fluent with a mapping other than the one orders are checked against (the demo's
    /// self-test: it must then exit 1).
    #[arg(long, hide = true)]
    wrong_mapping: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut env = Config::process_env();
    // Quiet by default: the table is the output. RUST_LOG=info shows the binaries' logs.
    env.entry("RUST_LOG".into())
        .or_insert_with(|| "error".into());
    let telemetry = match Config::from_sources(&env, None)
        .map_err(anyhow::Error::from)
        .and_then(|config| Ok(common::telemetry::init(&config.telemetry, "demo")?))
    {
        Ok(guard) => guard,
        Err(error) => return failed(&error),
    };
    let options = Options {
        orders: args.orders,
        seed: args.seed.unwrap_or_else(|| fastrand::u64(..1_000_000)),
        faults: !args.no_faults,
        wrong_mapping: args.wrong_mapping,
        settle_timeout: Duration::from_secs(args.settle_secs),
        env,
    };
    let code = match run(options, args.serve).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => failed(&error),
    };
    telemetry.shutdown().await;
    code
}

/// Runs the story; `Ok(true)` when every order ended right.
async fn run(options: Options, serve: bool) -> anyhow::Result<bool> {
    let demo = Demo::start(options).await?;
    let outcome = demo.play().await?;
    let mut out = std::io::stdout().lock();
    demo.print(&outcome, &mut out)?;
    if serve {
        demo::serve::print_instructions(demo.stack(), demo.signer(), &mut out)?;
        drop(out);
        let stop = CancellationToken::new();
        common::signal::cancel_on_signal(stop.clone()).await;
    } else {
        drop(out);
    }
    demo.stop().await?;
    Ok(outcome.all_right())
}

fn failed(error: &anyhow::Error) -> ExitCode {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "demo: {error:#}");
    ExitCode::from(2)
}
