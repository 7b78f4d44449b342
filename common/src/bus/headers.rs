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
