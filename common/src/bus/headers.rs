//! Header names of bus records and DLQ records (DESIGN.md "Bus record"), in one place so the
//! gateway, the processor and the JSON Schema agree.

use crate::bus::Headers;

/// Fluent's event id.
pub const EVENT_ID: &str = "fluent-event-id";
/// Fluent's event (message) name.
pub const EVENT_NAME: &str = "fluent-event-name";
/// Fluent's account id.
pub const ACCOUNT_ID: &str = "fluent-account-id";
/// When the gateway received the webhook, RFC 3339.
pub const RECEIVED_AT: &str = "received-at";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// The media type of the value (CloudEvents' `datacontenttype` on Kafka).
pub const CONTENT_TYPE: &str = "content-type";

/// The names of the CloudEvents attribute headers (binary content mode) on one bus: the
/// Kafka binding prefixes `ce_`, the NATS binding `ce-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudEventsNames {
    /// `specversion`.
    pub specversion: &'static str,
    /// `id`: the Fluent event id.
    pub id: &'static str,
    /// `source`: the Fluent account.
    pub source: &'static str,
    /// `type`: the event name.
    pub event_type: &'static str,
    /// `subject`: the order ref.
    pub subject: &'static str,
    /// `time`: when the gateway received it.
    pub time: &'static str,
    /// `datacontenttype`, where the binding does not take it from `content-type`.
    pub datacontenttype: Option<&'static str>,
    /// Whether values are percent-encoded (the NATS binding, after HTTP's rules).
    pub percent_encoded: bool,
}

impl CloudEventsNames {
    /// The Kafka protocol binding (also used on the in-memory bus).
    pub const KAFKA: Self = Self {
        specversion: "ce_specversion",
        id: "ce_id",
        source: "ce_source",
        event_type: "ce_type",
        subject: "ce_subject",
        time: "ce_time",
        datacontenttype: None,
        percent_encoded: false,
    };
    /// The NATS protocol binding.
    pub const NATS: Self = Self {
        specversion: "ce-specversion",
        id: "ce-id",
        source: "ce-source",
        event_type: "ce-type",
        subject: "ce-subject",
        time: "ce-time",
        datacontenttype: Some("ce-datacontenttype"),
        percent_encoded: true,
    };
}

/// How the gateway describes its records as CloudEvents.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    /// The bus's header names.
    pub names: CloudEventsNames,
    /// `source`, with `{accountId}` replaced by the event's account.
    pub source_template: String,
}

/// The headers of a webhook record: Fluent's ids, when it was received, and the CloudEvents
/// attributes of the same, so consumers that are not ours can read the record by their
/// binding's rules. The value stays the body byte for byte.
pub fn record_headers(
    event: &crate::event::FluentEvent,
    received_at: &str,
    cloudevents: &CloudEvents,
) -> Headers {
    let names = &cloudevents.names;
    let mut headers = Headers::new();
    for (name, value) in [
        (EVENT_ID, event.id.as_deref()),
        (EVENT_NAME, event.name.as_deref()),
        (ACCOUNT_ID, event.account_id.as_deref()),
        (RECEIVED_AT, Some(received_at)),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.to_owned());
        }
    }
    // A CloudEvent needs an id and a type: validated configuration always requires both, so
    // this guards a caller that parsed with fewer (a test), never a gateway's record: such a
    // record carries no attributes rather than an invalid event.
    if event.id.is_none() || event.name.is_none() {
        return headers;
    }
    // The attributes, by the binding's rules (percent-encoded on NATS).
    let mut put = |name: &'static str, value: Option<&str>| {
        if let Some(value) = value {
            let value = if names.percent_encoded {
                percent_encoding::utf8_percent_encode(value, HEADER_UNSAFE).to_string()
            } else {
                value.to_owned()
            };
            headers.insert(name, value);
        }
    };
    put(names.specversion, Some("1.0"));
    put(names.id, event.id.as_deref());
    // The account goes into a URI: encoded as a path segment would be.
    let account = event.account_id.as_deref().unwrap_or_default();
    let account = percent_encoding::utf8_percent_encode(account, SEGMENT_UNSAFE).to_string();
    put(
        names.source,
        Some(&cloudevents.source_template.replace("{accountId}", &account)),
    );
    put(names.event_type, event.name.as_deref());
    put(names.subject, event.order_ref());
    put(names.time, Some(received_at));
    if let Some(name) = names.datacontenttype {
        put(name, Some("application/json"));
    }
    headers.insert(CONTENT_TYPE, "application/json");
    headers
}

/// What a URI path segment cannot hold as is.
const SEGMENT_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// What the HTTP binding (and so the NATS one) percent-encodes in a header value: controls,
/// space, `"` and `%`; everything outside ASCII is encoded by the encoder itself.
const HEADER_UNSAFE: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

/// DLQ: `transient` (attempts ran out) or `permanent`.
pub const DLQ_ERROR_CLASS: &str = "dlq-error-class";
/// DLQ: the error, as text.
pub const DLQ_ERROR: &str = "dlq-error";
/// DLQ: how many attempts were made.
pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
/// DLQ: topic (or stream) of the original record.
pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
/// DLQ: partition of the original record.
pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
/// DLQ: offset (or stream sequence) of the original record.
pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";
/// DLQ: when the record was dead-lettered, RFC 3339.
pub const DLQ_FAILED_AT: &str = "dlq-failed-at";

/// A replayed dead letter: which one, `<DLQ topic or stream>:<partition>:<offset or
/// sequence>`. A replay interrupted after its publish and before it stored its progress finds
/// its publish again by this header, and does not make a second one.
pub const REPLAYED_FROM: &str = "replayed-from";

/// NATS only: the record key, which NATS messages have no field for.
pub const NATS_KEY: &str = "bus-key";

/// The headers of a webhook record on the bus, as a JSON object of header name to value (for
/// the published JSON Schema; on the wire each is a Kafka or NATS header with UTF-8 bytes).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(title = "Bus record headers")]
pub struct RecordHeaders {
    /// Fluent's event id (`id` of the webhook body).
    #[serde(rename = "fluent-event-id")]
    pub event_id: String,
    /// Fluent's event name (`name` of the webhook body): what the processor routes by.
    #[serde(rename = "fluent-event-name")]
    pub event_name: String,
    /// Fluent's account id.
    #[serde(rename = "fluent-account-id")]
    pub account_id: String,
    /// When the gateway received the webhook, RFC 3339 UTC with milliseconds.
    #[serde(rename = "received-at")]
    pub received_at: String,
    /// CloudEvents `specversion` (Kafka binding; on NATS `ce-specversion`, and so on).
    #[serde(rename = "ce_specversion")]
    pub ce_specversion: String,
    /// CloudEvents `id`: the Fluent event id.
    #[serde(rename = "ce_id")]
    pub ce_id: String,
    /// CloudEvents `source`: `INGEST_CLOUDEVENTS_SOURCE` with the account filled in.
    #[serde(rename = "ce_source")]
    pub ce_source: String,
    /// CloudEvents `type`: the event name.
    #[serde(rename = "ce_type")]
    pub ce_type: String,
    /// CloudEvents `subject`: the order ref, when the event names one.
    #[serde(
        rename = "ce_subject",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ce_subject: Option<String>,
    /// CloudEvents `time`: when the gateway received the webhook.
    #[serde(rename = "ce_time")]
    pub ce_time: String,
    /// `application/json`: the value's media type (CloudEvents `datacontenttype`).
    #[serde(rename = "content-type")]
    pub content_type: String,
    /// W3C trace context of the gateway's `send` span (the processor continues its trace).
    #[serde(
        rename = "traceparent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub traceparent: Option<String>,
    /// W3C trace state of the same, when there is one.
    #[serde(
        rename = "tracestate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tracestate: Option<String>,
    /// On a dead letter `processor dlq replay` published again: the dead letter,
    /// `<DLQ topic or stream>:<partition>:<offset or sequence>`.
    #[serde(
        rename = "replayed-from",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replayed_from: Option<String>,
}

/// Why a record was dead-lettered (`dlq-error-class`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClassHeader {
    /// Every attempt failed with errors that might have passed.
    Transient,
    /// An error no retry can fix.
    Permanent,
}

/// The headers of a DLQ record: the original record's headers plus the `dlq-*` ones (key and
/// value are the original's, unchanged).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(title = "DLQ record headers")]
pub struct DeadLetterHeaders {
    /// The original record's headers.
    #[serde(flatten)]
    pub record: RecordHeaders,
    /// `transient` (attempts ran out) or `permanent`.
    #[serde(rename = "dlq-error-class")]
    pub error_class: ErrorClassHeader,
    /// The error, for people: names the cause (a setting and its bad value, an order that
    /// does not exist, the API error and its correlation id).
    #[serde(rename = "dlq-error")]
    pub error: String,
    /// Attempts made, as decimal text.
    #[serde(rename = "dlq-attempts")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub attempts: String,
    /// Topic (Kafka) or stream (NATS) of the original record.
    #[serde(rename = "dlq-source-topic")]
    pub source_topic: String,
    /// Partition of the original record, as decimal text.
    #[serde(rename = "dlq-source-partition")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub source_partition: String,
    /// Offset (Kafka) or stream sequence (NATS) of the original record, as decimal text.
    #[serde(rename = "dlq-source-offset")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub source_offset: String,
    /// When it was dead-lettered, RFC 3339 UTC with milliseconds.
    #[serde(rename = "dlq-failed-at")]
    pub failed_at: String,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::record::AckInner;
    use crate::bus::{AckHandle, DeadLetter, FailureClass, Headers, InboundRecord, Position};

    /// The headers as the JSON object the schema describes.
    fn as_object(headers: &Headers) -> serde_json::Map<String, serde_json::Value> {
        headers
            .iter()
            .map(|(name, value)| {
                let text = String::from_utf8(value.to_vec()).expect("UTF-8 header");
                (name.to_owned(), serde_json::Value::String(text))
            })
            .collect()
    }

    #[test]
    fn on_nats_the_cloudevents_headers_follow_the_nats_binding() {
        let body = br#"{"id":"e 1","name":"n","accountId":"AC ME%","rootEntityRef":"HD_1"}"#;
        let event =
            crate::event::FluentEvent::parse(body, &crate::event::RequiredFields::new(["id"]))
                .unwrap();
        let cloudevents = CloudEvents {
            names: CloudEventsNames::NATS,
            source_template: "/fluentcommerce/{accountId}".into(),
        };
        let headers = record_headers(&event, "2026-11-28T09:00:00.000Z", &cloudevents);
        assert_eq!(headers.get_str("ce-specversion"), Some("1.0"));
        assert_eq!(headers.get_str("ce-id"), Some("e%201"));
        // The account encoded into the URI, then the whole value by the NATS binding.
        assert_eq!(
            headers.get_str("ce-source"),
            Some("/fluentcommerce/AC%2520ME%2525")
        );
        assert_eq!(headers.get_str("ce-subject"), Some("HD_1"));
        assert_eq!(
            headers.get_str("ce-datacontenttype"),
            Some("application/json")
        );
        assert_eq!(headers.get_str("ce_id"), None);
        assert_eq!(
            headers.get_str(EVENT_ID),
            Some("e 1"),
            "our own headers stay as sent"
        );
    }

    #[test]
    fn the_schema_types_describe_exactly_the_headers_the_bus_writes() {
        let body = serde_json::json!({
            "id": "e-1",
            "name": "fc.connect.order.webhook.order-status-update",
            "accountId": "ACME",
            "retailerId": "1",
            "entityType": "ORDER",
            "entityRef": "HD_1",
            "entityStatus": "BOOKED",
            "rootEntityType": "ORDER",
            "rootEntityRef": "HD_1",
        });
        let event = crate::event::FluentEvent::parse(
            body.to_string().as_bytes(),
            &crate::event::RequiredFields::default(),
        )
        .unwrap();
        let cloudevents = CloudEvents {
            names: CloudEventsNames::KAFKA,
            source_template: "/fluentcommerce/{accountId}".into(),
        };
        let mut headers = record_headers(&event, "2026-11-28T09:00:00.000Z", &cloudevents);
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let record = InboundRecord {
            source: "fluent.webhooks".into(),
            position: Position {
                partition: 3,
                offset: 17,
            },
            key: "HD_1".into(),
            payload: "{}".into(),
            headers: headers.clone(),
            delivery_count: 1,
            ack: AckHandle(AckInner::Tracked {
                tracker: Arc::new(Mutex::default()),
                offset: 17,
            }),
        };
        let record_json = serde_json::Value::Object(as_object(&headers));
        let parsed: RecordHeaders = serde_json::from_value(record_json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), record_json);

        let letter = crate::bus::dead_letter_record(
            &record,
            &DeadLetter {
                class: FailureClass::Permanent,
                error: "setting x maps A to `B`".into(),
                attempts: 1,
            },
        );
        let letter_json = serde_json::Value::Object(as_object(&letter.headers));
        let parsed: DeadLetterHeaders = serde_json::from_value(letter_json.clone()).unwrap();
        // Every header the bus writes has a field, and every field a header.
        assert_eq!(serde_json::to_value(&parsed).unwrap(), letter_json);
        assert_eq!(parsed.error_class, ErrorClassHeader::Permanent);
        assert_eq!(parsed.source_offset, "17");
    }
}
