//! Telemetry set-up, exporter settings and trace-context propagation.

use super::*;
use crate::config::Config;

#[test]
fn initialises_once_and_refuses_a_second_subscriber() {
    let config = Config::from_sources(&Default::default(), None)
        .unwrap()
        .telemetry;
    let guard = init(&config, "test-service").unwrap();
    assert_eq!(guard.service_name(), "test-service");
    assert_eq!(guard.traces_endpoint(), None);
    assert!(matches!(
        init(&config, "again"),
        Err(TelemetryError::AlreadyInitialised(_))
    ));
}

fn telemetry(env: &[(&str, &str)]) -> TelemetryConfig {
    let env = env
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    Config::from_sources(&env, None).unwrap().telemetry
}

// Needs an exporter: built when the workspace is (the binaries enable `otlp`), not with
// `-p common` alone.
#[cfg(feature = "otlp")]
#[test]
fn a_trace_state_with_control_characters_is_not_passed_on() {
    // An endpoint nothing listens on: traced, the exports fail in the background.
    let config = telemetry(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")]);
    let _guard = init(&config, "test-service").unwrap();
    // What the layers let through does not widen the log filter's reach (`info`).
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    // The SDK's own spans: a child in the root's trace, the headers its own.
    let root = OtelSpan::root(
        || "POST /x".into(),
        SpanKind::Server,
        TraceHeaders::default(),
        Vec::new,
    );
    let child = root.child(|| "send t".into(), SpanKind::Producer, Vec::new);
    let ids = |span: &OtelSpan| {
        let headers = span.headers();
        let value = headers.first().expect("a traceparent").1.clone();
        let parts: Vec<String> = value.split('-').map(str::to_owned).collect();
        (parts[1].clone(), parts[2].clone())
    };
    let ((root_trace, root_span), (child_trace, child_span)) = (ids(&root), ids(&child));
    assert_eq!(root_trace, child_trace);
    assert_ne!(root_span, child_span);
    let span = tracing::info_span!("process");
    continue_trace(
        &span,
        TraceHeaders {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            tracestate: Some("vendor=v\u{1}"),
        },
    );
    let child = tracing::info_span!(parent: &span, "graphql");
    let headers = trace_headers(&child);
    assert!(
        headers.iter().any(|(name, value)| *name == "traceparent"
            && value.contains("4bf92f3577b34da6a3ce929d0e0e4736")),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .all(|(_, value)| value.bytes().all(|byte| (0x20..0x7f).contains(&byte))),
        "{headers:?}"
    );
}

// Building an exporter takes the `otlp` feature (the workspace's test run has it).
#[cfg(feature = "otlp")]
#[test]
fn an_https_endpoint_is_taken_and_a_certificate_that_cannot_be_read_is_refused_at_start() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
    let config = telemetry(&[endpoint]);
    tracer_provider(&config, "test", traces_endpoint(&config).as_deref())
        .expect("an https endpoint exports over TLS");
    for protocol in ["http/protobuf", "grpc"] {
        let config = telemetry(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let error = tracer_provider(&config, "test", traces_endpoint(&config).as_deref())
            .expect_err("refused");
        let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
        assert!(text.contains("https://collector:4318"), "{text}");
        assert!(
            text.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && text.contains("/nonexistent/ca.pem"),
            "{protocol}: {text}"
        );
    }
}

#[cfg(feature = "otlp")]
#[test]
fn a_file_that_is_not_pem_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let path = path.display().to_string();
    let config = telemetry(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &path),
    ]);
    let error =
        tracer_provider(&config, "test", traces_endpoint(&config).as_deref()).expect_err("refused");
    let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(
        text.contains(&path) && text.contains("no PEM certificate"),
        "{text}"
    );
}

#[test]
fn the_traces_endpoint_follows_the_specifications_rules() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
    assert_eq!(
        traces_endpoint(&telemetry(&[base])).as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    let with_path = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector/otlp/");
    assert_eq!(
        traces_endpoint(&telemetry(&[with_path])).as_deref(),
        Some("http://collector/otlp/v1/traces")
    );
    let grpc = ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    assert_eq!(
        traces_endpoint(&telemetry(&[base, grpc])).as_deref(),
        Some("http://collector:4318/")
    );
    let own = (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://other:9/traces",
    );
    assert_eq!(
        traces_endpoint(&telemetry(&[base, own])).as_deref(),
        Some("http://other:9/traces")
    );
    assert_eq!(traces_endpoint(&telemetry(&[])), None);
}

#[test]
fn the_service_name_prefers_otel_service_name_then_the_resource_attribute() {
    let attributes = (
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.name=from-attrs,team=a%2Cb",
    );
    let config = telemetry(&[attributes]);
    assert_eq!(service_name(&config, "ingest"), "from-attrs");
    assert!(
        config
            .resource_attributes
            .contains(&("team".into(), "a,b".into()))
    );
    let named = telemetry(&[attributes, ("OTEL_SERVICE_NAME", "gateway-eu")]);
    assert_eq!(service_name(&named, "ingest"), "gateway-eu");
    assert_eq!(service_name(&telemetry(&[]), "ingest"), "ingest");
}

// Each test that installs the global subscriber needs a process of its own (nextest).
#[cfg(feature = "otlp")]
#[test]
fn a_log_only_span_carries_its_trace_ids_and_a_line_outside_it_can_name_them() {
    let config = telemetry(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("RUST_LOG", "info"),
    ]);
    let _guard = init(&config, "test-service").unwrap();
    let span = tracing::info_span!("webhook", log_only = true);
    assert!(!span.is_disabled(), "RUST_LOG=info enables it");
    let server = OtelSpan::root(
        || "POST /x".into(),
        SpanKind::Server,
        TraceHeaders::default(),
        Vec::new,
    );
    server.log_ids_on(&span);
    let ids =
        tracing::dispatcher::get_default(|dispatch| span.in_scope(|| nearest_trace_ids(dispatch)))
            .expect("ids for the log line");
    let traceparent = server.headers()[0].1.clone();
    assert!(
        traceparent.contains(&ids.trace_id().to_string())
            && traceparent.contains(&ids.span_id().to_string()),
        "{traceparent} against {ids:?}"
    );
    // A line logged where `RUST_LOG` filtered the span out names the same ids itself.
    let (trace_id, span_id) = server.trace_ids().expect("a recording span has ids");
    assert_eq!(
        (trace_id, span_id),
        (ids.trace_id().to_string(), ids.span_id().to_string())
    );
}

/// What the SDK's own propagator writes for `context`, through the same header filter.
fn propagator_headers(context: &opentelemetry::Context) -> Vec<(String, String)> {
    use opentelemetry::propagation::TextMapPropagator as _;
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(context, &mut carrier);
    let mut headers: Vec<(String, String)> = carrier
        .into_iter()
        .filter(|(_, value): &(String, String)| {
            !value.is_empty() && value.bytes().all(|byte| (0x20..0x7f).contains(&byte))
        })
        .collect();
    headers.sort();
    headers
}

#[test]
fn trace_headers_are_what_the_sdk_propagator_writes() {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    let cases = [
        (TraceFlags::SAMPLED, ""),
        (TraceFlags::default(), ""),
        // Flags beyond `sampled` are not passed on.
        (TraceFlags::new(0xff), "vendor=value,other=2"),
    ];
    for (flags, state) in cases {
        let ids = SpanContext::new(
            TraceId::from(0x0000_6519_16cd_43dd_8448_eb21_1c80_319c_u128),
            SpanId::from(0x00ad_6b71_6920_3331_u64),
            flags,
            true,
            state.parse::<TraceState>().unwrap_or_default(),
        );
        let context = opentelemetry::Context::new().with_remote_span_context(ids);
        let mut ours: Vec<(String, String)> = context::inject(&context)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        ours.sort();
        assert!(!ours.is_empty());
        assert_eq!(
            ours,
            propagator_headers(&context),
            "flags {flags:?}, state {state:?}"
        );
    }
    // No valid context: no headers, as the propagator writes none.
    let none = opentelemetry::Context::new();
    assert!(context::inject(&none).is_empty());
    assert!(propagator_headers(&none).is_empty());
}
