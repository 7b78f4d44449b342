//! The OTLP/HTTP span exporter: `ExportTraceServiceRequest` protobuf encoded straight from the
//! SDK's spans and posted with the blocking client of [`super::tls`].
//!
//! `opentelemetry-otlp` first converts every span into `opentelemetry-proto`'s message structs
//! (a `String` for every attribute key and value, the scope hashed per span) and then lets
//! prost encode them, measuring each nested message again at every level. On the gateway,
//! whose whole work for a webhook is some 180,000 instructions, that was about 30,000 more per
//! webhook for its two spans (callgrind, bench/README.md). Here each span is written once, into
//! one buffer, in the wire format of `opentelemetry/proto/trace/v1/trace.proto`; a unit test
//! decodes the result with `opentelemetry-proto` and requires it to equal what the SDK's own
//! conversion gives for the same spans. gRPC export keeps the SDK's exporter.

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use opentelemetry::trace::{SpanContext, Status};
use opentelemetry::{Array, InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use reqwest_otlp::StatusCode;
use reqwest_otlp::header::{
    CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Attempts per batch: the first and up to three retries, as the SDK's exporter makes them.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry; each next one doubles, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_millis(1600);
/// The longest `Retry-After` taken as asked (the SDK's cap); a longer one waits this long,
/// within the timeout.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(30);
/// What is read of a receiver's answer: enough for its message, not a whole error page.
const ANSWER_LIMIT: u64 = 4096;

/// Why one attempt failed.
enum Failure {
    /// A collector restarting or shedding load (429, 502, 503, 504, no connection): worth
    /// another attempt, not before `after` when it said so (`Retry-After` on a 429 or 503).
    Retryable {
        error: String,
        after: Option<Duration>,
    },
    /// Anything else: the same request would fail again.
    Final(String),
}

/// Exports spans to one OTLP/HTTP traces endpoint.
#[derive(Debug)]
pub(super) struct HttpExporter {
    client: reqwest_otlp::blocking::Client,
    endpoint: String,
    /// `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`: what one batch may take, retries included.
    timeout: Duration,
    /// `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` (marked sensitive) and the content type.
    headers: HeaderMap,
    /// The resource's fields of every request's `ResourceSpans`, encoded once (the resource
    /// never changes).
    resource: ResourceFields,
    /// Whether the last export failed: a failure is logged when exports start failing and
    /// again when they recover, not once per batch.
    failing: AtomicBool,
}

impl HttpExporter {
    /// An exporter posting to `endpoint` with `client`, adding `headers` to each request
    /// (the last of a name repeated, as the SDK takes them), a batch taking at most `timeout`.
    pub(super) fn new(
        client: reqwest_otlp::blocking::Client,
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, BoxError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("OTLP header {name}: not a valid header value"))?;
            // Usually a credential: kept out of any debug output of the request.
            value.set_sensitive(true);
            map.insert(HeaderName::from_bytes(name.as_bytes())?, value);
        }
        map.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        map.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!(
                "fluent-ct-sync/",
                env!("CARGO_PKG_VERSION"),
                " OTel-OTLP-Exporter-Rust"
            )),
        );
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            timeout,
            headers: map,
            resource: encode_resource(&Resource::builder_empty().build()),
            failing: AtomicBool::new(false),
        })
    }

    /// Posts `body`, retrying what a collector restarting or shedding load answers, with
    /// waits of 100 ms doubling to 1.6 s (longer when its `Retry-After` asks), all within the
    /// timeout: each attempt gets what is left of it.
    fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let body = Bytes::from(body);
        let started = Instant::now();
        let mut wait = FIRST_WAIT;
        let mut attempt = 1;
        loop {
            let left = self.timeout.saturating_sub(started.elapsed());
            let (error, after) = match self.attempt(body.clone(), left) {
                Ok(()) => return Ok(()),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retryable { error, after }) => (error, after),
            };
            let pause = after.map_or(wait, |after| after.min(LONGEST_RETRY_AFTER).max(wait));
            if attempt == ATTEMPTS || started.elapsed().saturating_add(pause) >= self.timeout {
                return Err(error);
            }
            tracing::debug!(%error, attempt, ?pause, "trace export failed; retrying");
            // This is the batch processor's own thread: waiting here holds back only spans.
            std::thread::sleep(pause);
            wait = (wait * 2).min(LONGEST_WAIT);
            attempt += 1;
        }
    }

    fn attempt(&self, body: Bytes, timeout: Duration) -> Result<(), Failure> {
        let response = match self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .timeout(timeout)
            .body(body)
            .send()
        {
            Ok(response) => response,
            // The URL is configuration (it may carry credentials), not news.
            Err(error) => {
                return Err(Failure::Retryable {
                    error: crate::report::chain(&error.without_url()),
                    after: None,
                });
            }
        };
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds.min(LONGEST_RETRY_AFTER.as_secs())));
        // Read (a bounded part) to the end, so that the connection serves the next batch.
        let mut answer = Vec::new();
        let _ = response.take(ANSWER_LIMIT).read_to_end(&mut answer);
        if status.is_success() {
            return Ok(());
        }
        // The answer may echo a credential of ours back (an authenticating proxy's "invalid
        // key ..."): only at debug, never in the warning.
        tracing::debug!(%status, answer = %String::from_utf8_lossy(&answer), "the OTLP receiver refused a batch");
        let error = format!("the receiver answered {status}");
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Err(Failure::Retryable { error, after })
            }
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                Err(Failure::Retryable { error, after: None })
            }
            _ => Err(Failure::Final(error)),
        }
    }
}

impl SpanExporter for HttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.post(encode_request(&self.resource, &batch));
        let was_failing = self.failing.swap(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                if was_failing {
                    tracing::info!("trace export recovered");
                }
                Ok(())
            }
            Err(error) => {
                if !was_failing {
                    tracing::warn!(%error, spans = batch.len(), "traces not exported");
                }
                Err(OTelSdkError::InternalFailure(error))
            }
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource);
    }
}

/// A `ResourceSpans`' fields from the resource, encoded: `resource` (1), which comes before
/// the spans, and `schema_url` (3), after them.
#[derive(Debug)]
pub(super) struct ResourceFields {
    before: Vec<u8>,
    after: Vec<u8>,
}

fn encode_resource(resource: &Resource) -> ResourceFields {
    let mut before = Vec::new();
    nested(&mut before, 1, |buf| {
        for (key, value) in resource.iter() {
            nested(buf, 1, |buf| key_value(buf, key, value));
        }
    });
    let mut after = Vec::new();
    string(&mut after, 3, resource.schema_url().unwrap_or_default());
    ResourceFields { before, after }
}

/// An `ExportTraceServiceRequest` of `spans`: one `ResourceSpans` (the fields of
/// `resource`) holding a `ScopeSpans` per instrumentation scope, in the order the scopes first
/// appear, as the SDK's conversion groups them.
pub(super) fn encode_request(resource: &ResourceFields, spans: &[SpanData]) -> Vec<u8> {
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in spans {
        let scope = &span.instrumentation_scope;
        match scopes.iter_mut().find(|(seen, _)| *seen == scope) {
            Some((_, members)) => members.push(span),
            None => scopes.push((scope, vec![span])),
        }
    }
    let mut buf = Vec::with_capacity(64 + spans.len() * 384);
    nested(&mut buf, 1, |buf| {
        buf.extend_from_slice(&resource.before);
        for (scope, members) in &scopes {
            nested(buf, 2, |buf| scope_spans(buf, scope, members));
        }
        buf.extend_from_slice(&resource.after);
    });
    buf
}

fn scope_spans(buf: &mut Vec<u8>, scope: &InstrumentationScope, spans: &[&SpanData]) {
    nested(buf, 1, |buf| {
        string(buf, 1, scope.name());
        string(buf, 2, scope.version().unwrap_or_default());
        for attribute in scope.attributes() {
            attribute_field(buf, 3, attribute);
        }
    });
    for span in spans {
        nested(buf, 2, |buf| encode_span(buf, span));
    }
    string(buf, 3, scope.schema_url().unwrap_or_default());
}

fn encode_span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    string(buf, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    uint(buf, 6, span_kind(&span.span_kind));
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        attribute_field(buf, 9, attribute);
    }
    uint(buf, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        nested(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            for attribute in &event.attributes {
                attribute_field(buf, 3, attribute);
            }
            uint(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(buf, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        nested(buf, 13, |buf| {
            let linked = &link.span_context;
            bytes(buf, 1, &linked.trace_id().to_bytes());
            bytes(buf, 2, &linked.span_id().to_bytes());
            string(buf, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                attribute_field(buf, 4, attribute);
            }
            uint(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32(buf, 6, flags(linked, linked.is_remote()));
        });
    }
    uint(buf, 14, u64::from(span.links.dropped_count));
    // Always present, as the SDK's conversion makes it.
    nested(buf, 15, |buf| {
        let code = match &span.status {
            Status::Unset => 0,
            Status::Ok => 1,
            Status::Error { description } => {
                string(buf, 2, description);
                2
            }
        };
        uint(buf, 3, code);
    });
    fixed32(buf, 16, flags(context, span.parent_span_is_remote));
}

/// `SpanKind` of the proto: unspecified 0, internal 1, server 2, client 3, producer 4,
/// consumer 5.
fn span_kind(kind: &opentelemetry::trace::SpanKind) -> u64 {
    use opentelemetry::trace::SpanKind;
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The W3C trace flags, and whether the parent (or linked context) is remote: the
/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE` (0x100) and `_IS_REMOTE` (0x200) bits.
fn flags(context: &SpanContext, remote: bool) -> u32 {
    u32::from(context.trace_flags().to_u8()) | 0x100 | if remote { 0x200 } else { 0 }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn attribute_field(buf: &mut Vec<u8>, tag: u32, attribute: &KeyValue) {
    nested(buf, tag, |buf| {
        key_value(buf, &attribute.key, &attribute.value);
    });
}

/// A `KeyValue`'s fields: the key, and the value as an `AnyValue`.
fn key_value(buf: &mut Vec<u8>, key: &Key, value: &Value) {
    string(buf, 1, key.as_str());
    nested(buf, 2, |buf| any_value(buf, value));
}

/// An `AnyValue`'s one field. A oneof member is written even when it holds its type's default
/// (`false`, `0`, `""`): that is how a decoder knows which member is set.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(flag) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*flag), buf);
        }
        Value::I64(number) => {
            encode_key(3, WireType::Varint, buf);
            // int64 on the wire is the two's complement as a varint.
            encode_varint(u64::from_ne_bytes(number.to_ne_bytes()), buf);
        }
        Value::F64(number) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&number.to_le_bytes());
        }
        Value::String(text) => {
            encode_key(1, WireType::LengthDelimited, buf);
            length_delimited(buf, text.as_str().as_bytes());
        }
        Value::Array(array) => nested(buf, 5, |buf| {
            let member = |buf: &mut Vec<u8>, value: Value| {
                nested(buf, 1, |buf| any_value(buf, &value));
            };
            match array {
                Array::Bool(values) => values.iter().for_each(|v| member(buf, (*v).into())),
                Array::I64(values) => values.iter().for_each(|v| member(buf, (*v).into())),
                Array::F64(values) => values.iter().for_each(|v| member(buf, (*v).into())),
                Array::String(values) => values.iter().for_each(|v| member(buf, v.clone().into())),
                // A kind of array the API adds later: an empty array rather than a wrong one.
                _ => {}
            }
        }),
        // A kind of value the API adds later: its text.
        other => {
            encode_key(1, WireType::LengthDelimited, buf);
            length_delimited(buf, other.as_str().as_bytes());
        }
    }
}

/// A length-delimited field of `tag` whose content `body` writes, written in place: one byte
/// is kept for the length, and the content moves only when its length needs more.
fn nested(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(encoded_len_varint(len as u64));
        encode_varint(len as u64, &mut prefix);
        buf.splice(at..=at, prefix);
    }
}

fn length_delimited(buf: &mut Vec<u8>, content: &[u8]) {
    encode_varint(content.len() as u64, buf);
    buf.extend_from_slice(content);
}

/// A `string` field; proto3 leaves an empty one out.
fn string(buf: &mut Vec<u8>, tag: u32, text: &str) {
    bytes(buf, tag, text.as_bytes());
}

/// A `bytes` field; proto3 leaves an empty one out.
fn bytes(buf: &mut Vec<u8>, tag: u32, content: &[u8]) {
    if !content.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        length_delimited(buf, content);
    }
}

/// A varint field (`uint32`, an enum); proto3 leaves a zero out.
fn uint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
