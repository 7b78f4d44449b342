//! Header names of bus records and DLQ records (DESIGN.md "Bus record"), in one place so the
//! gateway, the processor and the JSON Schema agree.

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
    /// W3C trace context of the webhook request, when it had one.
    #[serde(
        rename = "traceparent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub traceparent: Option<String>,
    /// W3C trace state, when the request had one.
    #[serde(
        rename = "tracestate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tracestate: Option<String>,
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
    fn the_schema_types_describe_exactly_the_headers_the_bus_writes() {
        let headers = Headers::new()
            .with(EVENT_ID, "e-1")
            .with(EVENT_NAME, "fc.connect.order.webhook.order-status-update")
            .with(ACCOUNT_ID, "ACME")
            .with(RECEIVED_AT, "2026-11-28T09:00:00.000Z")
            .with(
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
