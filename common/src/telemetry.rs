//! Logging and tracing start-up, done once per process by `main`.
//!
//! [`init`] installs the global `tracing` subscriber (filter from `RUST_LOG`, human or JSON
//! output from `LOG_FORMAT`) and returns a [`TelemetryGuard`] that `main` keeps alive until
//! exit. Span exporters (OpenTelemetry) attach here as further layers, and the guard is where
//! they are flushed, so buffered spans are not lost when the process ends.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse (normally caught by config validation first).
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The filter text.
        filter: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed: `init` was called twice.
    #[error("telemetry is already initialised")]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps telemetry running; dropping it at the end of `main` flushes what is buffered.
#[must_use = "telemetry stops being flushed when the guard is dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    /// The service name spans and logs are attributed to.
    service_name: String,
}

impl TelemetryGuard {
    /// The service name in use (`OTEL_SERVICE_NAME`, else the binary's default).
    pub fn service_name(&self) -> &str {
        &self.service_name
    }
}

/// Installs the global subscriber. `default_service` names the binary when
/// `OTEL_SERVICE_NAME` is not set.
pub fn init(
    config: &TelemetryConfig,
    default_service: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::builder()
        .parse(&config.log_filter)
        .map_err(|source| TelemetryError::Filter {
            filter: config.log_filter.clone(),
            source,
        })?;
    let output = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };
    Registry::default()
        .with(output.with_filter(filter))
        .try_init()
        .map_err(TelemetryError::AlreadyInitialised)?;
    let service_name = config
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    Ok(TelemetryGuard { service_name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn initialises_once_and_refuses_a_second_subscriber() {
        let config = Config::from_sources(&Default::default(), None)
            .unwrap()
            .telemetry;
        let guard = init(&config, "test-service").unwrap();
        assert_eq!(guard.service_name(), "test-service");
        assert!(matches!(
            init(&config, "again"),
            Err(TelemetryError::AlreadyInitialised(_))
        ));
    }
}
