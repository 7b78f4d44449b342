//! The processor application: the engine plus its `/metrics`, `/health/live` and
//! `/health/ready` endpoints, behind the `run(listener, shutdown)` seam that binaries and
//! tests drive.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::bus::memory::MemoryBus;
use common::bus::{BusError, Consumer, Publisher};
use common::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;
use processor_engine::{Engine, EngineConfig, Health, Registry, Stats};

/// Why the processor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bus could not be set up, or the consumer failed.
    #[error("the bus failed")]
    Bus(#[from] BusError),
    /// The metrics listener failed.
    #[error("the metrics server failed")]
    Serve(#[from] std::io::Error),
    /// Two handlers claim the same message names.
    #[error("message names claimed by more than one handler: {}", .0.join(", "))]
    NamesClaimedTwice(Vec<String>),
}

struct Shared {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The processor, built and ready to run.
pub struct App {
    engine: Engine,
    shared: Arc<Shared>,
}

impl App {
    /// Connects the consumer and the DLQ publisher the configuration names (`memory` is used
    /// when `BUS=memory`) and builds the engine around `registry`.
    pub async fn build(
        config: &Config,
        memory: &MemoryBus,
        registry: Registry,
    ) -> Result<Self, StartError> {
        check_names(&registry)?;
        let publisher = Publisher::connect(&config.bus, memory).await?;
        let consumer = Consumer::connect(&config.bus, memory).await?;
        Ok(Self::assemble(config, consumer, publisher, registry, false))
    }

    /// [`App::build`] for `processor --dry-run`, the one place a dry run is set up: every
    /// handler is told so ([`processor_engine::Context::dry_run`]) and changes nothing; it
    /// consumes as its own consumer group (the configured group, or NATS consumer prefix, with
    /// `-dry-run` appended), from the newest record when that group has no position yet, so
    /// the real group's position does not move and a first dry run looks at live traffic
    /// rather than everything retained; dead letters go to `memory` (logged, never to the
    /// real DLQ).
    pub async fn build_dry_run(
        config: &Config,
        memory: &MemoryBus,
        registry: Registry,
    ) -> Result<Self, StartError> {
        check_names(&registry)?;
        let mut config = config.clone();
        config.bus.kafka.group_id = format!("{}-dry-run", config.bus.kafka.group_id);
        config.bus.nats.consumer_prefix = format!("{}-dry-run", config.bus.nats.consumer_prefix);
        config.bus.start_at_newest = true;
        let consumer = Consumer::connect(&config.bus, memory).await?;
        Ok(Self::assemble(
            &config,
            consumer,
            Publisher::Memory(memory.clone()),
            registry,
            true,
        ))
    }

    fn assemble(
        config: &Config,
        consumer: Consumer,
        publisher: Publisher,
        registry: Registry,
        dry_run: bool,
    ) -> Self {
        let engine = Engine::new(
            consumer,
            publisher,
            registry,
            EngineConfig {
                dry_run,
                ..EngineConfig::from_config(config)
            },
        );
        Self::with_engine(engine)
    }

    /// Wraps an engine built elsewhere.
    pub fn with_engine(engine: Engine) -> Self {
        let health = engine.health();
        let mut metrics = Metrics::new(engine.stats(), engine.consumer_status(), engine.health());
        // Handlers register theirs here, before anything can share the registry.
        engine.register_metrics(metrics.registry_mut());
        Self {
            engine,
            shared: Arc::new(Shared { metrics, health }),
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.engine.stats()
    }

    /// The engine's liveness and readiness.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.shared.health)
    }

    /// The health and metrics routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves the endpoints on `listener` and runs the engine until `shutdown` is cancelled;
    /// then drains in-flight work (within `BUS_DRAIN_TIMEOUT_MS`), commits and returns. The
    /// endpoints answer until the engine has finished, so a probe during the drain still
    /// sees the truth.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        info!(address = %listener.local_addr()?, "processor metrics and health listening");
        let stop_serving = CancellationToken::new();
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(stop_serving.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        let result = self.engine.run(shutdown).await;
        stop_serving.cancel();
        // The engine's result matters more than the server's.
        let served = server.await.map_err(std::io::Error::other)?;
        result?;
        served?;
        info!("processor stopped");
        Ok(())
    }
}

/// Refuses a registry in which two handlers claim one name (one would never see its messages).
fn check_names(registry: &Registry) -> Result<(), StartError> {
    match registry.claimed_twice() {
        [] => Ok(()),
        names => Err(StartError::NamesClaimedTwice(names.to_vec())),
    }
}

fn status(result: Result<(), String>, ok: &'static str) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": ok }))).into_response(),
        Err(detail) => {
            let body = serde_json::json!({ "error": "unavailable", "detail": detail });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn live(State(shared): State<Arc<Shared>>) -> Response {
    status(shared.health.live(), "live")
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    status(shared.health.ready(), "ready")
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )];
    (headers, shared.metrics.render()).into_response()
}
