//! Spans made with the OpenTelemetry API itself rather than through `tracing`, for the
//! gateway's hot path. Through `tracing-opentelemetry` every span also costs a registry entry,
//! an extension map, a visitor over its fields and a second conversion when it closes: on the
//! gateway, whose whole work for a webhook is about 150 µs, that bookkeeping was the larger
//! part of what tracing cost (bench/README.md). An [`OtelSpan`] is the SDK's span directly,
//! made only while traces are exported (inert otherwise), with no `tracing` span behind it.
//!
//! A `tracing` span still carries the request's log lines (with target [`LOG_ONLY`], which the
//! OpenTelemetry layer leaves out); [`OtelSpan::log_ids_on`] gives it the span's ids, so a JSON
//! log line joins the trace as before.

use std::borrow::Cow;
use std::sync::OnceLock;

use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan as _;

use super::context::{TraceHeaders, inject};

/// The tracer of the exporting provider, once telemetry has one.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The target of `tracing` spans that only carry log lines: their trace is an [`OtelSpan`]'s.
pub const LOG_ONLY: &str = "log_only";

/// Makes [`OtelSpan`]s come from `tracer` (the first call wins: telemetry starts once).
pub(super) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// The ids a [`LOG_ONLY`] span's log lines carry (a registry extension).
pub(super) struct LogIds(pub(super) SpanContext);

/// A span of the OpenTelemetry SDK, ended when dropped; inert (nothing made, nothing
/// recorded) while traces are not exported.
#[must_use = "the span ends when dropped"]
#[derive(Debug)]
pub struct OtelSpan(Option<Context>);

impl OtelSpan {
    /// Starts a trace: a root span named `name` of `kind` with the `attributes` (made only
    /// when the span is), linked to the context in `link` (a sender's `traceparent`, which
    /// never becomes our parent).
    pub fn root(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        link: TraceHeaders<'_>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes());
        let linked = link.extract().span().span_context().clone();
        if linked.is_valid() {
            builder = builder.with_links(vec![Link::with_context(linked)]);
        }
        let span = builder.start_with_context(tracer, &Context::new());
        Self(Some(Context::new().with_span(span)))
    }

    /// Starts a child of this span (inert when this one is).
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let (Some(tracer), Some(parent)) = (TRACER.get(), &self.0) else {
            return Self(None);
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        Self(Some(parent.with_span(span)))
    }

    /// Sets an attribute (made only when the span is).
    pub fn set_attribute(&self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(attribute());
        }
    }

    /// Marks the span failed.
    pub fn set_error(&self) {
        if let Some(context) = &self.0 {
            context.span().set_status(Status::error(""));
        }
    }

    /// Its W3C trace context as headers (`traceparent`, and `tracestate` when there is one):
    /// empty when inert.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.0.as_ref().map(inject).unwrap_or_default()
    }

    /// Makes the log lines of `span` (and of its children without ids of their own) carry
    /// this span's trace and span ids.
    pub fn log_ids_on(&self, span: &tracing::Span) {
        let Some(context) = &self.0 else {
            return;
        };
        let ids = context.span().span_context().clone();
        span.with_subscriber(|(id, dispatch)| {
            if let Some(data) = dispatch
                .downcast_ref::<Registry>()
                .and_then(|registry| registry.span(id))
            {
                data.extensions_mut().insert(LogIds(ids));
            }
        });
    }
}

impl Drop for OtelSpan {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporting_provider_a_span_is_inert_and_makes_no_attributes() {
        // No test in this binary installs a tracer: telemetry's tests start without an
        // endpoint.
        let server = OtelSpan::root("POST /x", SpanKind::Server, TraceHeaders::default(), || {
            unreachable!("attributes are made only for a span that is")
        });
        let send = server.child("send t", SpanKind::Producer, || unreachable!());
        send.set_attribute(|| unreachable!());
        assert!(server.headers().is_empty() && send.headers().is_empty());
    }
}
