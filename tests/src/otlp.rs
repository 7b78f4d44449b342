//! An OTLP trace receiver for the tests, as a collector would be: protobuf over HTTP
//! (`POST /v1/traces`) or the gRPC `TraceService`, keeping every span it received.
//!
//! It keeps what arrives as it arrives and decodes it only when asked ([`Receiver::spans`]):
//! the benchmarks run it on the cores the measured processes use, and decoding and converting
//! some 10,000 spans a second there took CPU from the gateway being measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// Linked contexts, as (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
    /// Names of the span's events.
    pub events: Vec<String>,
}

/// How spans reach the receiver.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// `http/protobuf`.
    Http,
    /// `grpc`.
    Grpc,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    received: Sink,
    address: SocketAddr,
    transport: Transport,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start(transport: Transport) -> anyhow::Result<Self> {
        let received = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let sink = received.clone();
        let stopped = stop.clone().cancelled_owned();
        match transport {
            Transport::Http => {
                let router = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: Bytes| {
                        sink.keep(Export::Encoded(body));
                        std::future::ready(StatusCode::OK)
                    }),
                );
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await;
                });
            }
            Transport::Grpc => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(sink))
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await;
                });
            }
        }
        Ok(Self {
            received,
            address,
            transport,
            stop,
        })
    }

    /// The environment that points a process at this receiver.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let protocol = match self.transport {
            Transport::Http => "http/protobuf",
            Transport::Grpc => "grpc",
        };
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", self.address),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ]
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every span received so far.
    ///
    /// # Panics
    ///
    /// When a request over HTTP was not an OTLP `ExportTraceServiceRequest` (a collector would
    /// have answered 400; a test reading these spans then fails saying so).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let exports = self
            .received
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        exports.into_iter().flat_map(Export::spans).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where both transports put what they receive.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Export>>>);

impl Sink {
    fn keep(&self, export: Export) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(export);
    }
}

/// One export request as it arrived.
#[derive(Clone)]
enum Export {
    /// An HTTP body, not yet decoded.
    Encoded(Bytes),
    /// As tonic decoded it.
    Decoded(ExportTraceServiceRequest),
}

impl Export {
    fn spans(self) -> Vec<ReceivedSpan> {
        let request = match self {
            Self::Encoded(body) => ExportTraceServiceRequest::decode(body)
                .expect("an OTLP/HTTP export request is an ExportTraceServiceRequest"),
            Self::Decoded(request) => request,
        };
        let mut kept = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    events: span.events.into_iter().map(|event| event.name).collect(),
                });
            }
        }
        kept
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(Export::Decoded(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
