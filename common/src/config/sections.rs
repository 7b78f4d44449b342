//! The configuration sections, one per concern, each read from the layered sources.
//!
//! Defaults are written as the text an operator would set, so what `README.md` documents is
//! exactly what is parsed.

use std::net::SocketAddr;

use secrecy::SecretString;

use super::parse;
use super::source::Reader;
use super::types::{
    BusKind, HmacSecret, KafkaProperties, LogFormat, PublicKeyDer, Secret, ServerUrl,
};
use crate::event::RequiredFields;

/// Which bus to use, and the settings of each.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `BUS`: `kafka` (default), `nats` or `memory`.
    pub kind: BusKind,
    /// The Kafka settings (used when `kind` is Kafka).
    pub kafka: KafkaConfig,
    /// The NATS JetStream settings (used when `kind` is NATS).
    pub nats: NatsConfig,
}

/// Kafka connection and naming.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`: bootstrap brokers, `host:port[,host:port]` (default `localhost:9092`).
    pub brokers: Vec<String>,
    /// `KAFKA_TOPIC`: the webhook topic (default `fluent.webhooks`).
    pub topic: String,
    /// `KAFKA_DLQ_TOPIC`: the dead-letter topic (default `fluent.webhooks.dlq`).
    pub dlq_topic: String,
    /// `KAFKA_GROUP_ID`: the processors' consumer group (default `order-status-processor`).
    pub group_id: String,
    /// `KAFKA_PROPERTIES`: extra librdkafka properties, `key=value[,key=value]`.
    pub properties: KafkaProperties,
}

/// NATS JetStream connection and naming.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `NATS_URL`: server URL(s), comma-separated (default `nats://127.0.0.1:4222`).
    pub urls: Vec<ServerUrl>,
    /// `NATS_STREAM`: the stream (default `FLUENT_WEBHOOKS`).
    pub stream: String,
    /// `NATS_SUBJECT_PREFIX`: subjects are `<prefix>.<partition>`, the DLQ `<prefix>.dlq`
    /// (default `fluent.webhooks`).
    pub subject_prefix: String,
    /// `NATS_PARTITIONS`: how many partition subjects keys are spread over (default 12).
    pub partitions: u16,
    /// `NATS_OWNED_PARTITIONS`: the partitions this instance consumes, `all` (default) or
    /// a list like `0-5,9`; sorted, without duplicates.
    pub owned_partitions: Vec<u16>,
}

/// The webhook gateway (stage 1).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `INGEST_LISTEN`: address of the webhook, health and metrics routes (default
    /// `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// `FLUENT_WEBHOOK_PUBLIC_KEYS`: Fluent's signing keys (several during rotation).
    pub public_keys: Vec<PublicKeyDer>,
    /// `WEBHOOK_HMAC_SECRETS`: Standard Webhooks secrets; setting any enables HMAC mode.
    pub hmac_secrets: Vec<HmacSecret>,
    /// `INGEST_INSECURE_NO_SIGNATURE`: accept unsigned webhooks when no key or secret is set
    /// (default `false`; for local experiments only).
    pub insecure_no_signature: bool,
    /// `WEBHOOK_REQUIRED_FIELDS`: JSON fields every webhook must carry (default: `id`, `name`,
    /// `accountId`, `retailerId`, `entityType`, `entityRef`, `entityStatus`,
    /// `rootEntityType`, `rootEntityRef`).
    pub required_fields: RequiredFields,
}

/// The Fluent API (used by the processor to enrich events and read mapping settings).
#[derive(Debug, Clone)]
pub struct FluentApiConfig {
    /// `FLUENT_API_URL`: e.g. `https://ACCOUNT.sandbox.api.fluentretail.com`.
    pub api_url: Option<ServerUrl>,
    /// `FLUENT_CLIENT_ID`: OAuth client id.
    pub client_id: Option<String>,
    /// `FLUENT_CLIENT_SECRET`: OAuth client secret.
    pub client_secret: Option<Secret>,
    /// `FLUENT_USERNAME`: the API user.
    pub username: Option<String>,
    /// `FLUENT_PASSWORD`: the API user's password.
    pub password: Option<Secret>,
}

/// The commercetools API (where the processor writes order states).
#[derive(Debug, Clone)]
pub struct CommercetoolsConfig {
    /// `CTP_API_URL`: e.g. `https://api.europe-west1.gcp.commercetools.com`.
    pub api_url: Option<ServerUrl>,
    /// `CTP_AUTH_URL`: e.g. `https://auth.europe-west1.gcp.commercetools.com`.
    pub auth_url: Option<ServerUrl>,
    /// `CTP_PROJECT_KEY`: the project key.
    pub project_key: Option<String>,
    /// `CTP_CLIENT_ID`: API client id.
    pub client_id: Option<String>,
    /// `CTP_CLIENT_SECRET`: API client secret.
    pub client_secret: Option<Secret>,
    /// `CTP_SCOPES`: OAuth scopes, space-separated (e.g. `manage_orders:my-project`).
    pub scopes: Vec<String>,
    /// `CTP_SYNC_MARKER_FIELD`: optional order custom field storing the last applied record
    /// position, so redelivery never steps an order back.
    pub sync_marker_field: Option<String>,
}

/// The consumer engine (stage 2).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// `PROCESSOR_MAX_IN_FLIGHT`: records processed at once, across keys (default 512).
    pub max_in_flight: u32,
    /// `PROCESSOR_MAX_ATTEMPTS`: attempts before a record goes to the DLQ (default 10).
    pub max_attempts: u32,
    /// `ORDER_STATUS_MESSAGE_NAMES`: message names routed to the order-status handler
    /// (default `fc.connect.order.webhook.order-status-update`).
    pub order_status_message_names: Vec<String>,
    /// `METRICS_LISTEN`: address of `/metrics` and the health routes (default `0.0.0.0:9090`).
    pub metrics_listen: SocketAddr,
}

/// Logs and traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `RUST_LOG`: the log filter (default `info`).
    pub log_filter: String,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where traces are exported; unset means no export.
    pub otlp_endpoint: Option<ServerUrl>,
    /// `OTEL_SERVICE_NAME`: the service name on traces (default: the binary's name).
    pub service_name: Option<String>,
}

pub(super) fn bus(r: &mut Reader<'_>) -> BusConfig {
    let partitions = r.value("NATS_PARTITIONS", "12", parse::int_in(1u16, 4096));
    BusConfig {
        kind: r.value("BUS", "kafka", parse::bus_kind),
        kafka: KafkaConfig {
            brokers: r.value("KAFKA_BROKERS", "localhost:9092", parse::broker_list),
            topic: r.value("KAFKA_TOPIC", "fluent.webhooks", parse::topic),
            dlq_topic: r.value("KAFKA_DLQ_TOPIC", "fluent.webhooks.dlq", parse::topic),
            group_id: r.value("KAFKA_GROUP_ID", "order-status-processor", parse::non_empty),
            properties: r.value("KAFKA_PROPERTIES", "", parse::kafka_properties),
        },
        nats: NatsConfig {
            urls: r.value("NATS_URL", "nats://127.0.0.1:4222", parse::nats_urls),
            stream: r.value("NATS_STREAM", "FLUENT_WEBHOOKS", parse::stream_name),
            subject_prefix: r.value(
                "NATS_SUBJECT_PREFIX",
                "fluent.webhooks",
                parse::subject_prefix,
            ),
            partitions,
            owned_partitions: r.value(
                "NATS_OWNED_PARTITIONS",
                "all",
                parse::owned_partitions(partitions),
            ),
        },
    }
}

pub(super) fn ingest(r: &mut Reader<'_>) -> IngestConfig {
    let default_fields = crate::event::DEFAULT_REQUIRED_FIELDS.join(",");
    IngestConfig {
        listen: r.value("INGEST_LISTEN", "0.0.0.0:8080", parse::socket_addr),
        public_keys: r
            .optional("FLUENT_WEBHOOK_PUBLIC_KEYS", parse::public_keys)
            .unwrap_or_default(),
        hmac_secrets: r
            .optional("WEBHOOK_HMAC_SECRETS", parse::hmac_secrets)
            .unwrap_or_default(),
        insecure_no_signature: r.value("INGEST_INSECURE_NO_SIGNATURE", "false", parse::boolean),
        required_fields: RequiredFields::new(r.value(
            "WEBHOOK_REQUIRED_FIELDS",
            &default_fields,
            parse::name_list,
        )),
    }
}

fn secret(text: &str) -> parse::Parsed<Secret> {
    Ok(SecretString::from(text.to_owned()))
}

pub(super) fn fluent(r: &mut Reader<'_>) -> FluentApiConfig {
    FluentApiConfig {
        api_url: r.optional("FLUENT_API_URL", parse::http_url),
        client_id: r.optional("FLUENT_CLIENT_ID", parse::non_empty),
        client_secret: r.optional("FLUENT_CLIENT_SECRET", secret),
        username: r.optional("FLUENT_USERNAME", parse::non_empty),
        password: r.optional("FLUENT_PASSWORD", secret),
    }
}

pub(super) fn commercetools(r: &mut Reader<'_>) -> CommercetoolsConfig {
    CommercetoolsConfig {
        api_url: r.optional("CTP_API_URL", parse::http_url),
        auth_url: r.optional("CTP_AUTH_URL", parse::http_url),
        project_key: r.optional("CTP_PROJECT_KEY", parse::non_empty),
        client_id: r.optional("CTP_CLIENT_ID", parse::non_empty),
        client_secret: r.optional("CTP_CLIENT_SECRET", secret),
        scopes: r.optional("CTP_SCOPES", parse::scopes).unwrap_or_default(),
        sync_marker_field: r.optional("CTP_SYNC_MARKER_FIELD", parse::non_empty),
    }
}

pub(super) fn processor(r: &mut Reader<'_>) -> ProcessorConfig {
    ProcessorConfig {
        max_in_flight: r.value(
            "PROCESSOR_MAX_IN_FLIGHT",
            "512",
            parse::int_in(1u32, 1_000_000),
        ),
        max_attempts: r.value("PROCESSOR_MAX_ATTEMPTS", "10", parse::int_in(1u32, 1000)),
        order_status_message_names: r.value(
            "ORDER_STATUS_MESSAGE_NAMES",
            "fc.connect.order.webhook.order-status-update",
            parse::name_list,
        ),
        metrics_listen: r.value("METRICS_LISTEN", "0.0.0.0:9090", parse::socket_addr),
    }
}

pub(super) fn telemetry(r: &mut Reader<'_>) -> TelemetryConfig {
    TelemetryConfig {
        log_filter: r.value("RUST_LOG", "info", parse::log_filter),
        log_format: r.value("LOG_FORMAT", "pretty", parse::log_format),
        otlp_endpoint: r.optional("OTEL_EXPORTER_OTLP_ENDPOINT", parse::http_url),
        service_name: r.optional("OTEL_SERVICE_NAME", parse::non_empty),
    }
}
