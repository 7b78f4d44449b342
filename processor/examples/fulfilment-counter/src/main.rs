//! A processor built with the partner's handler registered beside the built-in order-status
//! one: the same configuration as `processor`, plus `FULFILMENT_EVENT_NAMES` (comma-separated;
//! default [`DEFAULT_NAMES`]).

use anyhow::Context as _;
use common::bus::memory::MemoryBus;
use common::config::{Config, Needs};
use fulfilment_counter::{DEFAULT_NAMES, FulfilmentCounter};
use order_status::OrderStatusUpdate;
use processor::App;
use processor_engine::Registry;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Config::process_env();
    let config = Config::load_for(&env, None, Needs::ORDER_STATUS_APIS)?;
    let _telemetry = common::telemetry::init(&config.telemetry, "fulfilment-processor")?;
    let names = env.get("FULFILMENT_EVENT_NAMES").map_or_else(
        || {
            DEFAULT_NAMES
                .iter()
                .map(|name| (*name).to_owned())
                .collect()
        },
        |names| {
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .collect()
        },
    );
    let (order_status, _metrics) = OrderStatusUpdate::from_config(&config)?;
    let registry = Registry::new()
        .with(order_status)
        .with(FulfilmentCounter::new(names));
    let app = App::build(&config, &MemoryBus::default(), registry).await?;
    let listener = tokio::net::TcpListener::bind(config.processor.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.processor.metrics_listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::signal::cancel_on_signal(shutdown.clone()));
    app.run(listener, shutdown).await?;
    Ok(())
}
