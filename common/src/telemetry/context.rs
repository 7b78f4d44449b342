//! W3C trace context in and out of `tracing` spans: the headers a span's context travels in,
//! a span continued from a context we wrote or linked to one a sender wrote, and span events.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C trace context of `span` as headers: `traceparent` and, when there is one,
/// `tracestate`. Empty when `span` is disabled (no subscriber, or filtered out).
pub fn trace_headers(span: &Span) -> Vec<(&'static str, String)> {
    inject(&span.context())
}

/// Collects what the propagator writes: the two W3C headers, nothing else.
struct Collect(Vec<(&'static str, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            crate::bus::headers::TRACEPARENT => crate::bus::headers::TRACEPARENT,
            crate::bus::headers::TRACESTATE => crate::bus::headers::TRACESTATE,
            _ => return,
        };
        // A value a header cannot carry (the SDK lets control characters through in a
        // `tracestate` it extracted) is dropped, not passed on to fail an HTTP request.
        if !value.is_empty() && value.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
            self.0.push((name, value));
        }
    }
}

/// The W3C trace context of `context` as headers, as [`trace_headers`] gives them.
pub(super) fn inject(context: &Context) -> Vec<(&'static str, String)> {
    let mut carrier = Collect(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.0
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
