//! The gateway application: state, routes, and the `run(listener, shutdown)` seam that `main`
//! and the tests drive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::bus::memory::MemoryBus;
use common::bus::{BusError, Publisher};
use common::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::signature::{KeyError, Verifier};
use crate::state::AppState;
use crate::webhook;

/// How often readiness asks the bus whether it answers.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The signing keys or secrets are unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The bus could not be set up.
    #[error("cannot connect to the bus")]
    Bus(#[from] BusError),
    /// The listener failed.
    #[error("the HTTP server failed")]
    Serve(#[from] std::io::Error),
}

/// The gateway, built and ready to serve.
pub struct App {
    state: Arc<AppState>,
    shutdown_timeout: Duration,
}

impl App {
    /// Parses the keys and connects the publisher (`memory` is used when `BUS=memory`).
    pub async fn build(config: &Config, memory: &MemoryBus) -> Result<Self, StartError> {
        let verifier = Verifier::from_config(&config.ingest)?;
        if verifier.is_insecure() {
            warn!("INGEST_INSECURE_NO_SIGNATURE is on: webhooks are accepted without a signature");
        }
        let publisher = Publisher::connect(&config.bus, memory).await?;
        Ok(Self::with_publisher(config, verifier, publisher))
    }

    /// Builds the gateway around an existing publisher.
    pub fn with_publisher(config: &Config, verifier: Verifier, publisher: Publisher) -> Self {
        let ingest = &config.ingest;
        let state = AppState {
            verifier,
            required_fields: ingest.required_fields.clone(),
            allowed_accounts: ingest.allowed_accounts.iter().cloned().collect(),
            allowed_names: ingest.allowed_names.iter().cloned().collect(),
            publisher,
            metrics: Metrics::default(),
            request_timeout: ingest.request_timeout,
            body_limit: ingest.body_limit,
            ready: AtomicBool::new(false),
        };
        Self {
            state: Arc::new(state),
            shutdown_timeout: ingest.shutdown_timeout,
        }
    }

    /// The routes, for tests that drive them without a socket.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhooks/fluent", post(webhook::receive))
            .route("/api/v1/fluent-connect/webhook", post(webhook::receive))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .with_state(Arc::clone(&self.state))
    }

    /// Serves on `listener` until `shutdown` is cancelled, then lets in-flight requests finish
    /// within the shutdown deadline.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        info!(address = %listener.local_addr()?, "ingest listening");
        let probe = tokio::spawn(probe_readiness(Arc::clone(&self.state), shutdown.clone()));
        let serve = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        tokio::select! {
            result = serve => result?,
            () = deadline => warn!(timeout = ?self.shutdown_timeout,
                "in-flight requests did not finish before the shutdown deadline"),
        }
        probe.abort();
        info!("ingest stopped");
        Ok(())
    }
}

async fn probe_readiness(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let ready = match state.publisher.check_ready().await {
            Ok(()) => true,
            Err(error) => {
                warn!(%error, "the bus does not answer; not ready");
                false
            }
        };
        state.ready.store(ready, Ordering::Release);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(READY_PROBE_INTERVAL) => {}
        }
    }
}

async fn live() -> Response {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "status": "live" })),
    )
        .into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
            .into_response()
    } else {
        let body =
            serde_json::json!({ "error": "unavailable", "detail": "the bus does not answer" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )];
    (headers, state.metrics.render()).into_response()
}
