//! W3C trace context in and out of `tracing` spans: the headers a span's context travels in,
//! a span continued from a context we wrote or linked to one a sender wrote, and span events.

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TraceFlags};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C trace context of `span` as headers: `traceparent` and, when there is one,
/// `tracestate`. Empty when `span` is disabled (no subscriber, or filtered out).
pub fn trace_headers(span: &Span) -> Vec<(&'static str, String)> {
    inject(&span.context())
}

/// The W3C trace context of `context` as headers, as [`trace_headers`] gives them: what the
/// SDK's `TraceContextPropagator` writes (version `00`, only the sampled flag), written here
/// directly. Through the propagator, its injector and `format!` this was some 3,600
/// instructions per webhook on the gateway (bench/README.md); a unit test holds the two equal.
pub(super) fn inject(context: &Context) -> Vec<(&'static str, String)> {
    let span = context.span();
    let ids = span.span_context();
    if !ids.is_valid() {
        return Vec::new();
    }
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, &ids.trace_id().to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &ids.span_id().to_bytes());
    traceparent.push('-');
    push_hex(
        &mut traceparent,
        &[ids.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()],
    );
    let mut headers = vec![(crate::bus::headers::TRACEPARENT, traceparent)];
    let state = ids.trace_state().header();
    // A value a header cannot carry (the SDK lets control characters through in a
    // `tracestate` it extracted) is dropped, not passed on to fail an HTTP request.
    if !state.is_empty() && state.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
        headers.push((crate::bus::headers::TRACESTATE, state));
    }
    headers
}

/// Appends `bytes` in lowercase hex, as W3C Trace Context writes ids.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// Adds an event named `name` with integer `attributes` to `span` (a retry, a wait): in the
/// trace, whatever the log filter shows.
pub fn span_event(span: &Span, name: &'static str, attributes: &[(&'static str, i64)]) {
    span.add_event(
        name,
        attributes
            .iter()
            .map(|&(key, value)| KeyValue::new(key, value))
            .collect(),
    );
}

/// A W3C trace context as read off headers: `traceparent` and `tracestate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    /// The `traceparent` value.
    pub traceparent: Option<&'a str>,
    /// The `tracestate` value.
    pub tracestate: Option<&'a str>,
}

impl TraceHeaders<'_> {
    pub(super) fn extract(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }
}

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            crate::bus::headers::TRACEPARENT => self.traceparent,
            crate::bus::headers::TRACESTATE => self.tracestate,
            _ => None,
        };
        // Only what an HTTP header may carry (visible ASCII and spaces) is read at all.
        value.filter(|value| value.bytes().all(|byte| (0x20..0x7f).contains(&byte)))
    }

    fn keys(&self) -> Vec<&str> {
        vec![
            crate::bus::headers::TRACEPARENT,
            crate::bus::headers::TRACESTATE,
        ]
    }
}

/// Makes `span` a child of the trace context in `headers`, which a process of ours wrote
/// (the gateway, into a bus record). Without a valid context `span` starts a trace.
pub fn continue_trace(span: &Span, headers: TraceHeaders<'_>) {
    let context = headers.extract();
    if context.span().span_context().is_valid() {
        // Fails only for a span already started, which is a bug of ours worth no panic.
        let _ = span.set_parent(context);
    }
}

/// Links `span` to the trace context in `headers` that a sender we do not trust wrote (a
/// webhook's own `traceparent`): visible in the trace, never its parent, so a sender cannot
/// graft our spans onto its trace or choose our sampling.
pub fn link_trace(span: &Span, headers: TraceHeaders<'_>) {
    let linked = headers.extract().span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}
