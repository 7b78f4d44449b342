//! Spans made with the OpenTelemetry API itself rather than through `tracing`, for the
//! gateway's hot path. Through `tracing-opentelemetry` every span also costs a registry entry,
//! an extension map, a visitor over its fields and a second conversion when it closes: on the
//! gateway, whose whole work for a webhook is about 150 µs, that bookkeeping was the larger
//! part of what tracing cost (bench/README.md). An [`OtelSpan`] is the SDK's span directly,
//! made only while traces are exported (inert otherwise), with no `tracing` span behind it.
//!
//! A `tracing` span still carries the request's log lines: it has a field named [`LOG_ONLY`],
//! which the OpenTelemetry layer leaves out; [`OtelSpan::log_ids_on`] gives it the span's ids,
//! so a JSON log line joins the trace as before. Where `RUST_LOG` filters that span out (it is
//! `info`, and `RUST_LOG=warn` is common), a line that must still join its trace (why a
//! webhook was refused) takes [`OtelSpan::trace_ids`] as fields of its own.

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

/// The field marking `tracing` spans that only carry log lines (`log_only = true`): their
/// trace is an [`OtelSpan`]'s.
pub const LOG_ONLY: &str = "log_only";

/// Whether `metadata` is a log-only span's.
pub(super) fn is_log_only(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.fields().field(LOG_ONLY).is_some()
}

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
    /// Starts a trace: a root span of `kind` named by `name` (asked only while traces are
    /// exported) with the `attributes` (made only when the sampler keeps the trace), linked to
    /// the context in `link` (a sender's `traceparent`, which never becomes our parent).
    pub fn root(
        name: impl FnOnce() -> Cow<'static, str>,
        kind: SpanKind,
        link: TraceHeaders<'_>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let mut builder = tracer.span_builder(name()).with_kind(kind);
        let linked = link.extract().span().span_context().clone();
        if linked.is_valid() {
            builder = builder.with_links(vec![Link::with_context(linked)]);
        }
        let span = builder.start_with_context(tracer, &Context::new());
        Self::recording(Context::new().with_span(span), attributes)
    }

    /// Starts a child of this span (inert when this one is), as [`OtelSpan::root`] does.
    pub fn child(
        &self,
        name: impl FnOnce() -> Cow<'static, str>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let (Some(tracer), Some(parent)) = (TRACER.get(), &self.0) else {
            return Self(None);
        };
        let span = tracer
            .span_builder(name())
            .with_kind(kind)
            .start_with_context(tracer, parent);
        Self::recording(parent.with_span(span), attributes)
    }

    /// The span of `context`, with `attributes` when it records (no sampler of ours reads
    /// attributes, so they are not needed earlier).
    fn recording(context: Context, attributes: impl FnOnce() -> Vec<KeyValue>) -> Self {
        {
            let span = context.span();
            if span.is_recording() {
                span.set_attributes(attributes());
            }
        }
        Self(Some(context))
    }

    /// Sets an attribute (made only when the span records).
    pub fn set_attribute(&self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(context) = &self.0 {
            let span = context.span();
            if span.is_recording() {
                span.set_attribute(attribute());
            }
        }
    }

    /// Adds an event named `name` with the `attributes` (made only when the span records):
    /// why a request was refused, say.
    pub fn add_event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(context) = &self.0 {
            let span = context.span();
            if span.is_recording() {
                span.add_event(name, attributes());
            }
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

    /// Its trace and span ids in hex, for the `trace_id` and `span_id` fields of a log line
    /// logged outside any span that carries them: `None` when inert.
    pub fn trace_ids(&self) -> Option<(String, String)> {
        let context = self.0.as_ref()?;
        let span = context.span();
        let ids = span.span_context();
        Some((ids.trace_id().to_string(), ids.span_id().to_string()))
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
