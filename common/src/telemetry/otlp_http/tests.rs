//! The encoder against the SDK's own conversion: what it writes must decode, with
//! `opentelemetry-proto`, to exactly the request `opentelemetry-otlp` would have sent.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message as _;

use super::{encode_request, encode_resource};

fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        remote,
        state.parse::<TraceState>().expect("a valid tracestate"),
    )
}

fn at(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Every kind of attribute value, each type's default among them.
fn every_value() -> Vec<KeyValue> {
    vec![
        KeyValue::new("text", "webhook"),
        KeyValue::new("empty", ""),
        KeyValue::new("long", "x".repeat(300)),
        KeyValue::new("yes", true),
        KeyValue::new("no", false),
        KeyValue::new("count", 42_i64),
        KeyValue::new("zero", 0_i64),
        KeyValue::new("negative", -7_i64),
        KeyValue::new("ratio", 0.25_f64),
        KeyValue::new("nothing", 0.0_f64),
        KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("numbers", Value::Array(Array::I64(vec![1, -2, 0]))),
        KeyValue::new("reals", Value::Array(Array::F64(vec![1.5, -0.0]))),
        KeyValue::new(
            "names",
            Value::Array(Array::String(vec![StringValue::from("a"), "".into()])),
        ),
        KeyValue::new("none", Value::Array(Array::I64(Vec::new()))),
    ]
}

fn spans() -> Vec<SpanData> {
    let ours = InstrumentationScope::builder("ingest").build();
    let theirs = InstrumentationScope::builder("a-library")
        .with_version("1.2.3")
        .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
        .with_attributes([KeyValue::new("scope.attribute", 1_i64)])
        .build();
    let mut events = SpanEvents::default();
    events.events = vec![
        Event::new(
            "webhook refused",
            at(1_764_633_600_000_100_000),
            every_value(),
            1,
        ),
        Event::new("", at(0), Vec::new(), 0),
    ];
    events.dropped_count = 2;
    let mut links = SpanLinks::default();
    links.links = vec![Link::new(
        context(7, 8, true, true, "fluent=1"),
        vec![KeyValue::new("link.attribute", "sender")],
        4,
    )];
    links.dropped_count = 5;
    let server = SpanData {
        span_context: context(
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            0xb7ad_6b71_6920_3331,
            true,
            false,
            "vendor=value,other=2",
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Server,
        name: Cow::Borrowed("POST /webhooks/fluent"),
        start_time: at(1_764_633_600_000_000_001),
        end_time: at(1_764_633_600_000_123_456),
        attributes: every_value(),
        dropped_attributes_count: 3,
        events,
        links,
        status: Status::error("the broker did not acknowledge"),
        instrumentation_scope: ours.clone(),
    };
    let producer = SpanData {
        span_context: context(
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            2,
            false,
            false,
            "",
        ),
        parent_span_id: SpanId::from(0xb7ad_6b71_6920_3331),
        parent_span_is_remote: true,
        span_kind: SpanKind::Producer,
        name: Cow::Owned(format!("send {}", "fluent.webhooks")),
        start_time: at(5),
        end_time: at(6),
        attributes: vec![KeyValue::new("messaging.system", "kafka")],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Ok,
        instrumentation_scope: ours,
    };
    let library = SpanData {
        span_context: context(3, 4, true, false, ""),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(""),
        start_time: at(0),
        end_time: at(0),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: theirs,
    };
    let client = SpanData {
        span_kind: SpanKind::Client,
        status: Status::error(""),
        ..producer.clone()
    };
    let consumer = SpanData {
        span_kind: SpanKind::Consumer,
        ..library.clone()
    };
    // Scopes interleaved: the request groups them in the order they first appear.
    vec![server, library, producer, client, consumer]
}

fn resources() -> Vec<Resource> {
    vec![
        Resource::builder_empty().build(),
        Resource::builder_empty()
            .with_service_name("ingest")
            .with_attributes([
                KeyValue::new("service.version", "0.1.0"),
                KeyValue::new("deployment.environment.name", "test"),
                KeyValue::new("host.cores", 2_i64),
            ])
            .build(),
        Resource::builder_empty()
            .with_schema_url(
                [KeyValue::new("service.name", "processor")],
                "https://opentelemetry.io/schemas/1.26.0",
            )
            .build(),
    ]
}

/// What `opentelemetry-otlp` sends for `spans` from `resource`.
fn sdk_request(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

#[test]
fn a_request_decodes_to_what_the_sdk_conversion_makes() {
    for resource in resources() {
        let ours = encode_request(&encode_resource(&resource), &spans());
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice())
            .expect("the encoded request decodes as OTLP");
        assert_eq!(decoded, sdk_request(&resource, spans()));
        // Byte for byte too: the same fields in the same order, each length in its shortest
        // form, as prost writes them.
        assert!(
            ours == sdk_request(&resource, spans()).encode_to_vec(),
            "not the bytes prost writes"
        );
    }
}

#[test]
fn every_span_alone_decodes_to_what_the_sdk_conversion_makes() {
    let resource = &resources()[1];
    for span in spans() {
        let ours = encode_request(&encode_resource(resource), std::slice::from_ref(&span));
        assert_eq!(ours, sdk_request(resource, vec![span]).encode_to_vec());
    }
}

#[test]
fn an_empty_batch_is_one_resource_with_no_spans() {
    let resource = &resources()[1];
    let ours = encode_request(&encode_resource(resource), &[]);
    assert_eq!(ours, sdk_request(resource, Vec::new()).encode_to_vec());
}

/// A receiver on a real socket answering each request with the next of `answers` (status
/// and extra header lines), and the bodies it got.
fn scripted_receiver(answers: Vec<&'static str>) -> (String, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let (bodies, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
            let mut writer = stream;
            // One request a connection (`connection: close`): the next attempt cannot race a
            // pooled connection.
            let mut length = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            if line != "\r\n" {
                continue;
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("the body");
            let _ = bodies.send(body);
            let Some(answer) = answers.next() else { return };
            let reply =
                format!("HTTP/1.1 {answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            writer.write_all(reply.as_bytes()).expect("the answer");
        }
    });
    (format!("http://{address}/v1/traces"), received)
}

fn exporter(endpoint: &str) -> super::HttpExporter {
    let config = crate::config::Config::from_sources(&Default::default(), None)
        .expect("the default configuration")
        .telemetry;
    let client = crate::telemetry::tls::http_client(&config).expect("a client");
    super::HttpExporter::new(client, endpoint, &[], Duration::from_secs(10)).expect("an exporter")
}

/// Runs an export to completion (it never waits on anything but its own thread).
fn export(exporter: &super::HttpExporter, batch: Vec<SpanData>) -> bool {
    use opentelemetry_sdk::trace::SpanExporter as _;
    use std::future::Future as _;
    let mut export = std::pin::pin!(exporter.export(batch));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match export.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => result.is_ok(),
        std::task::Poll::Pending => panic!("the export waited on something"),
    }
}

#[test]
fn a_batch_a_collector_sheds_is_sent_again_and_one_it_refuses_is_not() {
    let (endpoint, bodies) = scripted_receiver(vec![
        "503 Service Unavailable\r\nretry-after: 0",
        "502 Bad Gateway",
        "200 OK",
        "400 Bad Request",
    ]);
    let exporter = exporter(&endpoint);
    assert!(export(&exporter, spans()), "delivered on the third attempt");
    let first: Vec<Vec<u8>> = (0..3).map(|_| bodies.recv().expect("an attempt")).collect();
    assert!(
        first.windows(2).all(|pair| pair[0] == pair[1]),
        "the same batch each time"
    );
    assert!(!export(&exporter, spans()), "a 400 is final");
    bodies.recv().expect("the refused attempt");
    // Every attempt was answered before `export` returned: anything sent again is here now.
    assert!(bodies.try_recv().is_err(), "a refused batch was sent again");
}
