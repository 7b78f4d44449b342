//! The gateway application: state, routes, and the `run(listener, shutdown)` seam that `main`
//! and the tests drive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::bus::headers::{CloudEvents, CloudEventsNames};
use common::bus::memory::MemoryBus;
use common::bus::{BusError, Publisher};
use common::config::{BusKind, Config};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::IngestError;
use crate::metrics::Metrics;
use crate::replay::RecentIds;
use crate::server::{self, Limits};
use crate::signature::{KeyError, Verifier};
use crate::state::AppState;
use crate::webhook;

/// How often readiness asks the bus whether it answers.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The most request headers the gateway reads, and the most bytes of their names and values:
/// Fluent sends a dozen, proxies add a few; a flood beyond is a 431 in JSON (below hyper's own
/// limit of 100 headers, where its bare 431 takes over).
const HEADER_COUNT: usize = 64;
const HEADER_BYTES: usize = 16 * 1024;

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
    limits: Limits,
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
        let (messaging_system, destination) = common::bus::messaging_destination(&config.bus);
        let state = AppState {
            verifier,
            required_fields: ingest.required_fields.clone(),
            allowed_accounts: ingest.allowed_accounts.iter().cloned().collect(),
            allowed_names: ingest.allowed_names.iter().cloned().collect(),
            publisher,
            metrics: Metrics::default(),
            request_timeout: ingest.request_timeout,
            body_limit: ingest.body_limit,
            requests: Semaphore::new(ingest.max_requests),
            // A timestamp may lie up to the tolerance ahead of now, and stays acceptable until
            // the tolerance after it: twice the tolerance covers every replay it allows.
            recent: RecentIds::new(ingest.replay_window, 2 * ingest.hmac_tolerance),
            ready: AtomicBool::new(false),
            messaging_system,
            destination: destination.into(),
            cloudevents: CloudEvents {
                names: match config.bus.kind {
                    BusKind::Nats => CloudEventsNames::NATS,
                    BusKind::Kafka | BusKind::Memory => CloudEventsNames::KAFKA,
                },
                source_template: ingest.cloudevents_source.clone(),
            },
        };
        Self {
            state: Arc::new(state),
            limits: Limits {
                max_connections: ingest.max_connections,
                header_timeout: ingest.header_timeout,
                write_timeout: ingest.write_timeout,
                drain_timeout: ingest.shutdown_timeout,
            },
        }
    }

    /// The routes, for tests that drive them without a socket. Every refusal, unknown paths
    /// and methods included, is JSON `{"error", "detail"}`.
    pub fn router(&self) -> Router {
        let state = Arc::clone(&self.state);
        Router::new()
            .route(webhook::ROUTES[0].0, post(webhook::receive))
            .route(webhook::ROUTES[1].0, post(webhook::receive))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                limit_headers,
            ))
            .with_state(state)
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
        server::serve(listener, self.router(), &self.limits, shutdown).await;
        probe.abort();
        info!("ingest stopped");
        Ok(())
    }
}

/// Refuses a request with more headers than [`HEADER_COUNT`] or more bytes of them than
/// [`HEADER_BYTES`], before any route reads them.
async fn limit_headers(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > HEADER_COUNT || bytes > HEADER_BYTES {
        return refuse(
            &state,
            IngestError::HeadersTooLarge {
                count: HEADER_COUNT,
                bytes: HEADER_BYTES,
            },
        );
    }
    next.run(request).await
}

async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    refuse(&state, IngestError::NotFound)
}

async fn method_not_allowed(State(state): State<Arc<AppState>>) -> Response {
    refuse(&state, IngestError::MethodNotAllowed)
}

/// Counts and answers a refusal made before the webhook route.
fn refuse(state: &AppState, refusal: IngestError) -> Response {
    state.metrics.count(refusal.outcome());
    refusal.into_response()
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
