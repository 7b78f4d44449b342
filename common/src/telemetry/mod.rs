//! Logging and tracing start-up, done once per process by `main`, and the W3C trace context
//! carried across processes.
//!
//! [`init`] installs the global `tracing` subscriber: logs (filter from `RUST_LOG`, human or
//! JSON output from `LOG_FORMAT`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `..._TRACES_ENDPOINT`) is set, an OpenTelemetry layer that turns our `info` spans into
//! OpenTelemetry spans, exported over OTLP by a batch processor on its own thread. Without an
//! endpoint nothing is traced (records carry no trace context): building spans nobody exports
//! is most of a webhook's CPU cost. The returned [`TelemetryGuard`] flushes what is buffered when `main` ends.
//!
//! [`trace_headers`], [`continue_trace`] and [`link_trace`] move the context in and out of
//! headers (HTTP and bus records alike) by the W3C Trace Context rules.

mod context;
mod direct;
#[cfg(feature = "otlp")]
mod otlp_http;
#[cfg(feature = "otlp")]
mod tls;

pub use context::{TraceHeaders, continue_trace, link_trace, span_event, trace_headers};
pub use direct::{LOG_ONLY, OtelSpan};
/// What an [`OtelSpan`] is made of.
pub use opentelemetry::{KeyValue, Value, trace::SpanKind};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, TracerProviderBuilder};
use tracing::dispatcher::WeakDispatch;
use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::writer::EitherWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, OtlpProtocol, RootSampler, TelemetryConfig, TraceSampler};

/// Longest the exit waits for buffered spans to reach the receiver.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The OTLP exporter could not be set up (an endpoint it cannot use, say).
    #[error("cannot set up the OTLP trace exporter for {endpoint}")]
    Exporter {
        /// The traces endpoint.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A global subscriber is already installed: `init` was called twice.
    #[error("telemetry is already initialised")]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),
}

impl TelemetryError {
    /// Whether starting again could succeed: never, each of these is a setup mistake.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Filter { .. } | Self::Exporter { .. } | Self::AlreadyInitialised(_) => false,
        }
    }
}

/// Keeps telemetry running; [`TelemetryGuard::shutdown`] (or dropping it) flushes what is
/// buffered.
#[must_use = "telemetry stops being flushed when the guard is dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    /// The service name spans and logs are attributed to.
    service_name: String,
    /// Where traces are exported, when they are.
    endpoint: Option<String>,
    /// `None` once shut down.
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// The service name in use (`OTEL_SERVICE_NAME`, else `service.name` of
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's default).
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The OTLP traces endpoint, when traces are exported.
    pub fn traces_endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Exports what is buffered and stops the exporter, off the async workers: the gRPC
    /// exporter needs them to send, so blocking one could stall a one-worker runtime.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || flush(&provider)).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            flush(&provider);
        }
    }
}

fn flush(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
        // The global subscriber outlives the guard: the log still takes this line.
        tracing::warn!(%error, "traces not exported at exit");
    }
}

/// Installs the global subscriber. `default_service` names the binary when neither
/// `OTEL_SERVICE_NAME` nor a `service.name` resource attribute is set. Called within the
/// tokio runtime: the gRPC exporter starts its connection there.
pub fn init(
    config: &TelemetryConfig,
    default_service: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    init_to(config, default_service, LogOutput::Stdout)
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output: a service's logs.
    Stdout,
    /// Standard error: a command's, whose report (a table, JSON lines) owns standard output.
    Stderr,
}

/// [`init`], logging to `output`.
pub fn init_to(
    config: &TelemetryConfig,
    default_service: &str,
    output: LogOutput,
) -> Result<TelemetryGuard, TelemetryError> {
    start(config, default_service, output, Bridge::TracingSpans)
}

/// [`init`] for a process whose traces are all [`OtelSpan`]s (the gateway): its `tracing`
/// spans only carry log lines, and the OpenTelemetry layer, which every `tracing` span's
/// enter and exit passes through even when it records nothing, is left out (about 2,700
/// instructions of the gateway's 180,000 per webhook: bench/README.md).
pub fn init_direct(
    config: &TelemetryConfig,
    default_service: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    start(config, default_service, LogOutput::Stdout, Bridge::None)
}

/// Whether `tracing` spans become OpenTelemetry spans while traces are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bridge {
    /// `info` spans do (through `tracing-opentelemetry`).
    TracingSpans,
    /// Only [`OtelSpan`]s are traced.
    None,
}

fn start(
    config: &TelemetryConfig,
    default_service: &str,
    output: LogOutput,
    bridge: Bridge,
) -> Result<TelemetryGuard, TelemetryError> {
    let writer = move || match output {
        LogOutput::Stdout => EitherWriter::A(std::io::stdout()),
        LogOutput::Stderr => EitherWriter::B(std::io::stderr()),
    };
    let filter = EnvFilter::builder()
        .parse(&config.log_filter)
        .map_err(|source| TelemetryError::Filter {
            filter: config.log_filter.clone(),
            source,
        })?;
    let dispatch = Arc::new(OnceLock::new());
    let output = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
                dispatch: Arc::clone(&dispatch),
            })
            .fmt_fields(JsonFields::new())
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };
    let service_name = service_name(config, default_service);
    let endpoint = traces_endpoint(config);
    let provider = tracer_provider(config, &service_name, endpoint.as_deref())?;
    // Our spans are `info`; libraries' (hyper, h2, the exporter's own client) are `debug` and
    // below, and are kept out of traces whatever `RUST_LOG` shows in the logs. Without an
    // endpoint there is no layer at all: building spans nobody exports cost the gateway 40-60 %
    // more CPU per webhook (bench/README.md), so then records carry no trace context and log
    // lines no ids.
    let traces = (endpoint.is_some() && bridge == Bridge::TracingSpans).then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.clone()))
            // What the layer adds by default is work on every poll of every instrumented
            // future (busy/idle timings, activating the OpenTelemetry context on each enter)
            // and attributes on every span (source location, thread, target) that say nothing
            // the span's name and attributes do not. Parents come from the tracing span tree
            // and trace headers are injected from spans explicitly, so nothing reads the
            // activated context. (On the gateway benchmark, leaving them out made no difference
            // beyond the noise: bench/README.md.)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // Log-only spans have an `OtelSpan` of their own in traces. (The hint keeps the
            // subscriber's at INFO: without one, every disabled `debug!` would be asked.)
            .with_filter(
                LevelFilter::INFO.and(
                    filter_fn(|metadata| !direct::is_log_only(metadata))
                        .with_max_level_hint(LevelFilter::INFO),
                ),
            )
    });
    // Log-only spans exist as far as `RUST_LOG` asks for them, as any span. (Kept enabled
    // whatever it says, their bookkeeping was some 12,000 instructions of the gateway's
    // 165,000 per webhook under `RUST_LOG=warn`, bench/README.md; a line logged where its
    // span is filtered out names its trace itself: `OtelSpan::trace_ids`.)
    Registry::default()
        .with(output.with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(TelemetryError::AlreadyInitialised)?;
    if endpoint.is_some() {
        // Only once installed: a refused second `init` leaves the first one's tracer.
        direct::install(provider.tracer(service_name.clone()));
    }
    // The log lines find their spans' trace ids through the subscriber just installed.
    let _ = dispatch.set(tracing::dispatcher::get_default(Dispatch::downgrade));
    Ok(TelemetryGuard {
        service_name,
        endpoint,
        provider: Some(provider),
    })
}

/// The JSON log format with the current span's `trace_id` and `span_id` added to each line,
/// so a log search and a trace find each other.
struct WithTraceIds<F> {
    inner: F,
    /// The global dispatcher, once installed: where the span's OpenTelemetry context lives.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // Asked after the line is formatted: the context lookup takes the span's extensions,
        // which formatting reads. The current span is the registry's, not this layer's (which
        // sees only what `RUST_LOG` lets through), and the ids are those of the nearest span
        // in scope that traces carry (a library's span in between has none).
        let ids = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| nearest_trace_ids(&dispatch));
        match (ids, line.trim_end().strip_suffix('}')) {
            (Some(ids), Some(head)) if head.len() > 1 => writeln!(
                writer,
                "{head},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// The trace and span ids of the innermost span in the current scope that has them.
fn nearest_trace_ids(dispatch: &Dispatch) -> Option<opentelemetry::trace::SpanContext> {
    let current = dispatch.current_span();
    let registry = dispatch.downcast_ref::<Registry>()?;
    let span = registry.span(current.id()?)?;
    span.scope().find_map(|span| {
        // A log-only span's ids come from its OpenTelemetry span (`OtelSpan::log_ids_on`).
        let given = span
            .extensions()
            .get::<direct::LogIds>()
            .map(|ids| ids.0.clone());
        given
            .or_else(|| {
                tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
                    .map(|context| context.span().span_context().clone())
            })
            .filter(opentelemetry::trace::SpanContext::is_valid)
    })
}

fn service_name(config: &TelemetryConfig, default_service: &str) -> String {
    config
        .service_name
        .clone()
        .or_else(|| {
            config
                .resource_attributes
                .iter()
                .find(|(key, _)| key == "service.name")
                .map(|(_, value)| value.clone())
        })
        .unwrap_or_else(|| default_service.to_owned())
}

/// The traces endpoint: the signal's own as given, else `/v1/traces` under the base for
/// HTTP, the base itself for gRPC (the specification's rules).
fn traces_endpoint(config: &TelemetryConfig) -> Option<String> {
    if let Some(url) = &config.otlp_traces_endpoint {
        return Some(url.expose().to_string());
    }
    let base = config.otlp_endpoint.as_ref()?.expose().as_str();
    Some(match config.otlp_protocol {
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        OtlpProtocol::Grpc => base.to_owned(),
    })
}

fn tracer_provider(
    config: &TelemetryConfig,
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    // Built from our configuration alone: the SDK's default detectors would read the process
    // environment behind the injected one.
    let resource = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(config.sampler));
    if let Some(endpoint) = endpoint {
        provider = with_exporter(provider, config, endpoint).map_err(|source| {
            TelemetryError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            }
        })?;
    }
    Ok(provider.build())
}

/// Adds a batch processor exporting to `endpoint`, with the headers, timeout and batching
/// of `config` given explicitly (not read again from the process environment). OTLP/HTTP goes
/// through our own encoder (`otlp_http`: a fifth of the SDK exporter's work per span), gRPC
/// through the SDK's exporter.
#[cfg(feature = "otlp")]
fn with_exporter(
    provider: TracerProviderBuilder,
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<TracerProviderBuilder, Box<dyn std::error::Error + Send + Sync>> {
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
    use secrecy::ExposeSecret as _;
    let batching = BatchConfigBuilder::default()
        .with_scheduled_delay(config.batch_delay)
        .with_max_queue_size(config.batch_queue)
        .with_max_export_batch_size(config.batch_size)
        .build();
    let processor = match config.otlp_protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers: Vec<(String, String)> = config
                .otlp_headers
                .iter()
                .map(|(name, value)| (name.clone(), value.expose_secret().to_owned()))
                .collect();
            let exporter = otlp_http::HttpExporter::new(
                tls::http_client(config)?,
                endpoint,
                &headers,
                config.otlp_timeout,
            )?;
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batching)
                .build()
        }
        OtlpProtocol::Grpc => BatchSpanProcessor::builder(grpc_exporter(config, endpoint)?)
            .with_batch_config(batching)
            .build(),
    };
    Ok(provider.with_span_processor(processor))
}

/// The SDK's gRPC exporter to `endpoint`, with the headers as metadata.
#[cfg(feature = "otlp")]
fn grpc_exporter(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, Box<dyn std::error::Error + Send + Sync>> {
    use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _, WithTonicConfig as _};
    use secrecy::ExposeSecret as _;
    let mut metadata = http::HeaderMap::new();
    for (name, value) in &config.otlp_headers {
        metadata.append(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_str(value.expose_secret())?,
        );
    }
    let mut builder = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(config.otlp_timeout)
        .with_metadata(MetadataMap::from_headers(metadata));
    if endpoint.starts_with("https:") {
        builder = builder.with_tls_config(tls::grpc_config(config)?);
    }
    Ok(builder.build()?)
}

/// Without the `otlp` feature there is no exporter: a configured endpoint is refused at start
/// rather than silently exporting nothing.
#[cfg(not(feature = "otlp"))]
fn with_exporter(
    _provider: TracerProviderBuilder,
    _config: &TelemetryConfig,
    _endpoint: &str,
) -> Result<TracerProviderBuilder, Box<dyn std::error::Error + Send + Sync>> {
    Err("this binary was built without the OTLP exporter (feature `otlp` of `common`)".into())
}

fn sampler(sampler: TraceSampler) -> Sampler {
    let root = |root| match root {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    match sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        TraceSampler::ParentBased(inner) => Sampler::ParentBased(Box::new(root(inner))),
    }
}

#[cfg(test)]
mod tests;
