//! The configuration sections, one per concern, each read from the layered sources.
//!
//! Defaults are written as the text an operator would set, so what `README.md` documents is
//! exactly what is parsed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::parse;
use super::source::Reader;
use super::types::{
    BusKind, HmacSecret, KafkaProperties, LogFormat, OtlpProtocol, PublicKeyDer, Secret, ServerUrl,
    TraceSampler, UnknownNames,
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
    /// `BUS_PUBLISH_TIMEOUT_MS`: how long a publish may wait for the broker's acknowledgement
    /// before failing as retryable (default 5000).
    pub publish_timeout: Duration,
    /// `BUS_DRAIN_TIMEOUT_MS`: on revoke or shutdown, how long in-flight records may take to
    /// finish before the consumer commits what is done and lets go (default 20000).
    pub drain_timeout: Duration,
    /// Not a setting: where a consumer without a position starts. `false` (workers): at the
    /// oldest record the topic or stream retains, so nothing published before the first start
    /// is missed. `true` (`processor --dry-run`, a look at live traffic): at the newest, and on
    /// NATS its consumers go away after an hour unused.
    pub start_at_newest: bool,
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
    /// `KAFKA_COMPRESSION`: producer compression, `none` (default), `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// `KAFKA_COMMIT_INTERVAL_MS`: how often acknowledged offsets are committed (default 1000).
    pub commit_interval: Duration,
    /// `KAFKA_CREATE_TOPICS`: create the topic and DLQ topic at start-up when missing
    /// (default `false`: production topics are usually managed elsewhere).
    pub create_topics: bool,
    /// `KAFKA_TOPIC_PARTITIONS`: partitions of topics created at start-up (default 12).
    pub topic_partitions: u16,
    /// `KAFKA_TOPIC_REPLICATION`: replication factor of topics created at start-up; `-1`
    /// (default) takes the broker's default.
    pub topic_replication: i16,
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
    /// a list like `0-5,9`; sorted, without duplicates. On servers with priority groups the
    /// others are stood by for: taken over when their pinned instance stops.
    pub owned_partitions: Vec<u16>,
    /// Whether `NATS_OWNED_PARTITIONS` was set (an older server without priority groups is
    /// accepted only then: the operator chose the partitions so they do not overlap).
    pub owned_explicitly: bool,
    /// `NATS_CONSUMER_PREFIX`: durable consumers are `<prefix>-<partition>` (default
    /// `order-status-processor`).
    pub consumer_prefix: String,
    /// `NATS_ACK_WAIT_SECS`: how long the server waits for an ack before redelivering; long
    /// work sends in-progress signals (default 30).
    pub ack_wait: Duration,
    /// `NATS_MAX_DELIVER`: deliveries of one message before the server gives up on it, `-1`
    /// for no limit (default). Records an instance holds are never redelivered, but each
    /// hand-over (shutdown, crash) counts one delivery and the server drops a message silently
    /// once they are used up: the engine's own attempts and the DLQ deal with bad records.
    pub max_deliver: i64,
    /// `NATS_MAX_ACK_PENDING`: unacknowledged messages one partition's consumer may hand out
    /// (default 1000): the bound on what an instance holds per partition.
    pub max_ack_pending: u32,
    /// `NATS_PIN_TIMEOUT_SECS`: how long an instance that stopped pulling keeps its partitions
    /// before a stand-by takes them over (default 10).
    pub pin_timeout: Duration,
    /// `NATS_STANDBY_DELAY_SECS`: how long after start an instance waits before standing by
    /// for the partitions it does not own, so their owners pin them first (default 5).
    pub standby_delay: Duration,
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
    /// `INGEST_LEGACY_MD5_SIGNATURE`: also accept Fluent's legacy `flex.signature`
    /// (MD5withRSA) with the same keys (default `false`: MD5 is broken; enable only for
    /// senders that cannot send `fluent-signature`).
    pub legacy_md5_signature: bool,
    /// `INGEST_INSECURE_NO_SIGNATURE`: accept unsigned webhooks when no key or secret is set
    /// (default `false`; for local experiments only).
    pub insecure_no_signature: bool,
    /// `WEBHOOK_REQUIRED_FIELDS`: JSON fields every webhook must carry (default: `id`, `name`,
    /// `accountId`, `retailerId`, `entityType`, `entityRef`, `entityStatus`,
    /// `rootEntityType`, `rootEntityRef`).
    pub required_fields: RequiredFields,
    /// `INGEST_ALLOWED_ACCOUNTS`: accept only these `accountId`s (403 otherwise); empty
    /// (default) accepts any.
    pub allowed_accounts: Vec<String>,
    /// `INGEST_ALLOWED_NAMES`: accept only these event `name`s (422 otherwise); empty
    /// (default) accepts any.
    pub allowed_names: Vec<String>,
    /// `INGEST_BODY_LIMIT_BYTES`: largest body accepted (default 262144, 256 KiB; 413 above).
    pub body_limit: usize,
    /// `INGEST_REQUEST_TIMEOUT_MS`: longest a webhook may take from its headers' arrival to
    /// the answer, body included (default 10000): a body not received by then is a 408, a
    /// publish not acknowledged by then a 503.
    pub request_timeout: Duration,
    /// `INGEST_HEADER_TIMEOUT_MS`: longest a connection may take to send a request's headers,
    /// and longest it may stay idle between requests, before it is closed (default 5000).
    pub header_timeout: Duration,
    /// `INGEST_WRITE_TIMEOUT_MS`: longest a connection may take none of an answer's bytes
    /// (a client that sends requests and never reads) before it is closed (default 5000).
    pub write_timeout: Duration,
    /// `INGEST_MAX_CONNECTIONS`: open connections at most; more wait in the listen backlog
    /// until one closes (default 1024).
    pub max_connections: usize,
    /// `INGEST_MAX_REQUESTS`: webhooks handled at once (reading the body, verifying,
    /// publishing); one more gets a 503 with `Retry-After` at once (default 256). It bounds
    /// the memory bodies can take to this many times `INGEST_BODY_LIMIT_BYTES`.
    pub max_requests: usize,
    /// `INGEST_REPLAY_WINDOW`: how many recently accepted `webhook-id`s, and as many event ids,
    /// the instance remembers, each for twice `WEBHOOK_HMAC_TOLERANCE_SECS`, to answer a replay 200
    /// without publishing it again (default 50000; 0 turns it off).
    pub replay_window: usize,
    /// `INGEST_CLOUDEVENTS_SOURCE`: the CloudEvents `source` of the records, `{accountId}`
    /// replaced by the event's account (default `/fluentcommerce/{accountId}`).
    pub cloudevents_source: String,
    /// `INGEST_SHUTDOWN_TIMEOUT_MS`: on SIGTERM, how long in-flight requests may take to finish
    /// (default 20000).
    pub shutdown_timeout: Duration,
    /// `WEBHOOK_HMAC_TOLERANCE_SECS`: how far `webhook-timestamp` may be from now (default
    /// 300).
    pub hmac_tolerance: Duration,
    /// `INGEST_WORKER_THREADS`: tokio worker threads (default: one per available core). One
    /// worker costs 5-20 % less CPU per webhook (fewer cross-thread wake-ups) and serves well
    /// over 10,000 webhooks/s with RSA; more workers raise the ceiling on big machines.
    pub worker_threads: Option<usize>,
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
    /// `FLUENT_SETTINGS_TTL_SECS`: how long a retailer's mapping settings are reused before
    /// they are read again (default 300). A corrected setting takes effect within this time.
    pub settings_ttl: Duration,
    /// `FLUENT_ORDER_NOT_FOUND_ATTEMPTS`: attempts for an event whose order Fluent does not
    /// know yet (replication lag) before it goes to the DLQ (default 3).
    pub order_not_found_attempts: u32,
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
    /// `CTP_ORDER_LOOKUP`: how a Fluent order ref finds its commercetools order:
    /// `order-number` (default: the ref is the `orderNumber`), `id` (the ref is the order id),
    /// `id-without-prefix:<prefix>` (e.g. `id-without-prefix:HD_`), or `attribute:<name>`
    /// (the id is in that Fluent order attribute).
    pub order_lookup: OrderLookup,
}

/// How a Fluent order ref finds its commercetools order (`CTP_ORDER_LOOKUP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderLookup {
    /// The ref is the commercetools `orderNumber`.
    OrderNumber,
    /// The ref is the commercetools order id.
    Id,
    /// The ref is the id with this prefix in front (public connectors use `HD_<id>`).
    IdWithoutPrefix(String),
    /// The id is the value of this Fluent order attribute.
    Attribute(String),
}

/// The consumer engine (stage 2).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// `PROCESSOR_MAX_IN_FLIGHT`: records processed at once, across keys (default 512).
    pub max_in_flight: u32,
    /// `PROCESSOR_MAX_ATTEMPTS`: attempts before a record goes to the DLQ (default 10).
    pub max_attempts: u32,
    /// `PROCESSOR_MAX_BUFFERED`: records held in memory (queued plus in flight) before the
    /// processor stops fetching (default 8192).
    pub max_buffered: u32,
    /// `PROCESSOR_MAX_BATCH`: most records of one key handed to a batching handler in one
    /// call (default 256).
    pub max_batch: u32,
    /// `PROCESSOR_RETRY_BASE_MS`: first retry delay; doubles per attempt, with full jitter
    /// (default 100).
    pub retry_base: Duration,
    /// `PROCESSOR_RETRY_CAP_MS`: longest retry delay (default 30000).
    pub retry_cap: Duration,
    /// `PROCESSOR_UNKNOWN_NAMES`: records whose name no handler takes are `skip`ped (default)
    /// or sent to the `dlq`.
    pub unknown_names: UnknownNames,
    /// `ORDER_STATUS_MESSAGE_NAMES`: message names routed to the order-status handler
    /// (default `fc.connect.order.webhook.order-status-update`).
    pub order_status_message_names: Vec<String>,
    /// `METRICS_LISTEN`: address of `/metrics` and the health routes (default `0.0.0.0:9090`).
    pub metrics_listen: SocketAddr,
    /// `PROCESSOR_STALL_TIMEOUT_SECS`: the watchdog's limit (default 60). The processor stops
    /// being live when its loop has not turned, or work is pending but no handler call has
    /// finished, for this long. Keep it above `BUS_DRAIN_TIMEOUT_MS` and the slowest handler.
    pub stall_timeout: Duration,
    /// `PROCESSOR_MAX_WAIT_SECS`: how long a record may wait out an unavailable API
    /// (connection errors, 5xx, 429, refused credentials) without spending its
    /// `PROCESSOR_MAX_ATTEMPTS` (default 3600).
    pub max_wait: Duration,
    /// `API_TIMEOUT_MS`: deadline of each outbound call a handler makes, to Fluent and to
    /// commercetools alike (default 10000): one HTTP client serves both.
    pub api_timeout: Duration,
}

/// Logs and traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `RUST_LOG`: the log filter (default `info`).
    pub log_filter: String,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP receiver traces are exported to (over
    /// HTTP, `/v1/traces` is appended); unset (with the next unset too) means no export.
    pub otlp_endpoint: Option<ServerUrl>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the traces endpoint itself, used as given; wins
    /// over `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_traces_endpoint: Option<ServerUrl>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`):
    /// `http/protobuf` (default) or `grpc`.
    pub otlp_protocol: OtlpProtocol,
    /// `OTEL_SERVICE_NAME`: the service name on traces (default: the binary's name).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,...` (values percent-decoded) describing this
    /// process on every span, e.g. `deployment.environment.name=prod`.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which traces are kept (default
    /// `parentbased_always_on`). A webhook's trace starts at the gateway (Fluent's own
    /// `traceparent` is only linked), so a ratio applies per webhook and the processor
    /// follows the gateway's decision.
    pub sampler: TraceSampler,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (or `OTEL_EXPORTER_OTLP_TRACES_HEADERS`): `name=value,...`
    /// (values percent-decoded) sent with every export, e.g. a vendor's API key; secret.
    pub otlp_headers: Vec<(String, Secret)>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (or `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`): how long one
    /// export may take, milliseconds (default 10000).
    pub otlp_timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE` (or `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`): a PEM
    /// file of the CA certificates an `https` endpoint's certificate must chain to, instead of
    /// the system's and Mozilla's roots (read at start).
    pub otlp_certificate: Option<PathBuf>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY` (or the
    /// `TRACES_` ones): PEM files of the certificate and private key this process presents
    /// to an `https` endpoint that asks for one (mutual TLS); both or neither.
    pub otlp_client_identity: Option<(PathBuf, PathBuf)>,
    /// `OTEL_BSP_SCHEDULE_DELAY`: the longest a finished span waits to be exported,
    /// milliseconds (default 5000); a full batch goes at once.
    pub batch_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: finished spans buffered for export (default 2048); more are
    /// dropped, never waited for, so a slow receiver cannot slow webhooks down.
    pub batch_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export (default 512, at most the queue).
    pub batch_size: usize,
}

pub(super) fn bus(r: &mut Reader<'_>) -> BusConfig {
    let partitions = r.value("NATS_PARTITIONS", "12", parse::int_in(1u16, 4096));
    let config = BusConfig {
        start_at_newest: false,
        kind: r.value("BUS", "kafka", parse::bus_kind),
        kafka: KafkaConfig {
            brokers: r.value("KAFKA_BROKERS", "localhost:9092", parse::broker_list),
            topic: r.value("KAFKA_TOPIC", "fluent.webhooks", parse::topic),
            dlq_topic: r.value("KAFKA_DLQ_TOPIC", "fluent.webhooks.dlq", parse::topic),
            group_id: r.value("KAFKA_GROUP_ID", "order-status-processor", parse::non_empty),
            properties: r.value("KAFKA_PROPERTIES", "", parse::kafka_properties),
            compression: r.value("KAFKA_COMPRESSION", "none", parse::compression),
            commit_interval: r.value(
                "KAFKA_COMMIT_INTERVAL_MS",
                "1000",
                parse::millis(10, 60_000),
            ),
            create_topics: r.value("KAFKA_CREATE_TOPICS", "false", parse::boolean),
            topic_partitions: r.value("KAFKA_TOPIC_PARTITIONS", "12", parse::int_in(1u16, 10_000)),
            topic_replication: r.value("KAFKA_TOPIC_REPLICATION", "-1", parse::replication),
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
            consumer_prefix: r.value(
                "NATS_CONSUMER_PREFIX",
                "order-status-processor",
                parse::stream_name,
            ),
            ack_wait: r.value("NATS_ACK_WAIT_SECS", "30", parse::seconds(1, 3600)),
            max_deliver: r.value("NATS_MAX_DELIVER", "-1", parse::max_deliver),
            max_ack_pending: r.value(
                "NATS_MAX_ACK_PENDING",
                "1000",
                parse::int_in(1u32, 1_000_000),
            ),
            pin_timeout: r.value("NATS_PIN_TIMEOUT_SECS", "10", parse::seconds(2, 600)),
            standby_delay: r.value("NATS_STANDBY_DELAY_SECS", "5", parse::seconds(0, 3600)),
            owned_explicitly: r.is_set("NATS_OWNED_PARTITIONS"),
        },
        publish_timeout: r.value(
            "BUS_PUBLISH_TIMEOUT_MS",
            "5000",
            parse::millis(100, 300_000),
        ),
        drain_timeout: r.value("BUS_DRAIN_TIMEOUT_MS", "20000", parse::millis(0, 600_000)),
    };
    // A revocation waits for the drain inside librdkafka's rebalance callback, and a member
    // that does not poll for `max.poll.interval.ms` is thrown out of the group: a drain that
    // may take longer turns every slow rebalance into a second one.
    let poll_interval = config
        .kafka
        .properties
        .expose()
        .iter()
        .rev()
        .find(|(key, _)| key == "max.poll.interval.ms")
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .unwrap_or(KAFKA_MAX_POLL_INTERVAL_MS);
    if config.kind == BusKind::Kafka && config.drain_timeout >= Duration::from_millis(poll_interval)
    {
        r.conflict(
            "BUS_DRAIN_TIMEOUT_MS",
            format!(
                "less than the consumer's max.poll.interval.ms ({poll_interval} ms): a \
                 revocation drains inside the poll"
            ),
            &config.drain_timeout.as_millis().to_string(),
        );
    }
    config
}

/// librdkafka's default `max.poll.interval.ms`.
const KAFKA_MAX_POLL_INTERVAL_MS: u64 = 300_000;

/// The fields every record's headers (and CloudEvents attributes) are made of: a list that
/// leaves one out would let through records the published schemas say cannot exist.
const ALWAYS_REQUIRED_FIELDS: [&str; 3] = ["id", "name", "accountId"];

pub(super) fn ingest(r: &mut Reader<'_>) -> IngestConfig {
    let default_fields = crate::event::DEFAULT_REQUIRED_FIELDS.join(",");
    let config = IngestConfig {
        listen: r.value("INGEST_LISTEN", "0.0.0.0:8080", parse::socket_addr),
        public_keys: r
            .optional("FLUENT_WEBHOOK_PUBLIC_KEYS", parse::public_keys)
            .unwrap_or_default(),
        hmac_secrets: r
            .optional("WEBHOOK_HMAC_SECRETS", parse::hmac_secrets)
            .unwrap_or_default(),
        legacy_md5_signature: r.value("INGEST_LEGACY_MD5_SIGNATURE", "false", parse::boolean),
        insecure_no_signature: r.value("INGEST_INSECURE_NO_SIGNATURE", "false", parse::boolean),
        required_fields: RequiredFields::new(r.value(
            "WEBHOOK_REQUIRED_FIELDS",
            &default_fields,
            parse::name_list,
        )),
        allowed_accounts: r
            .optional("INGEST_ALLOWED_ACCOUNTS", parse::name_list)
            .unwrap_or_default(),
        allowed_names: r
            .optional("INGEST_ALLOWED_NAMES", parse::name_list)
            .unwrap_or_default(),
        body_limit: r.value(
            "INGEST_BODY_LIMIT_BYTES",
            "262144",
            parse::int_in(1024usize, 64 << 20),
        ),
        request_timeout: r.value(
            "INGEST_REQUEST_TIMEOUT_MS",
            "10000",
            parse::millis(100, 300_000),
        ),
        header_timeout: r.value(
            "INGEST_HEADER_TIMEOUT_MS",
            "5000",
            parse::millis(100, 300_000),
        ),
        write_timeout: r.value(
            "INGEST_WRITE_TIMEOUT_MS",
            "5000",
            parse::millis(100, 300_000),
        ),
        max_connections: r.value(
            "INGEST_MAX_CONNECTIONS",
            "1024",
            parse::int_in(1usize, 1_000_000),
        ),
        max_requests: r.value("INGEST_MAX_REQUESTS", "256", parse::int_in(1usize, 100_000)),
        replay_window: r.value(
            "INGEST_REPLAY_WINDOW",
            "50000",
            parse::int_in(0usize, 10_000_000),
        ),
        cloudevents_source: r.value(
            "INGEST_CLOUDEVENTS_SOURCE",
            "/fluentcommerce/{accountId}",
            parse::uri_reference,
        ),
        shutdown_timeout: r.value(
            "INGEST_SHUTDOWN_TIMEOUT_MS",
            "20000",
            parse::millis(0, 600_000),
        ),
        hmac_tolerance: r.value(
            "WEBHOOK_HMAC_TOLERANCE_SECS",
            "300",
            parse::seconds(1, 3600),
        ),
        worker_threads: r.optional("INGEST_WORKER_THREADS", parse::int_in(1usize, 1024)),
    };
    let fields: Vec<&str> = config.required_fields.names().collect();
    if let Some(missing) = ALWAYS_REQUIRED_FIELDS
        .iter()
        .find(|field| !fields.contains(field))
    {
        r.conflict(
            "WEBHOOK_REQUIRED_FIELDS",
            format!(
                "a list including id, name and accountId (not {missing}): every record carries \
                 them as its fluent-event-* headers and CloudEvents id, type and source"
            ),
            &fields.join(","),
        );
    }
    config
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
        settings_ttl: r.value("FLUENT_SETTINGS_TTL_SECS", "300", parse::seconds(1, 86_400)),
        order_not_found_attempts: r.value(
            "FLUENT_ORDER_NOT_FOUND_ATTEMPTS",
            "3",
            parse::int_in(1u32, 100),
        ),
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
        order_lookup: r.value("CTP_ORDER_LOOKUP", "order-number", order_lookup),
    }
}

/// Records every setting of the order-status handler's APIs that is unset.
pub(super) fn require_order_status_apis(config: &super::Config, r: &mut Reader<'_>) {
    let (fluent, ct) = (&config.fluent, &config.commercetools);
    let required = [
        ("FLUENT_API_URL", fluent.api_url.is_some()),
        ("FLUENT_CLIENT_ID", fluent.client_id.is_some()),
        ("FLUENT_CLIENT_SECRET", fluent.client_secret.is_some()),
        ("FLUENT_USERNAME", fluent.username.is_some()),
        ("FLUENT_PASSWORD", fluent.password.is_some()),
        ("CTP_API_URL", ct.api_url.is_some()),
        ("CTP_AUTH_URL", ct.auth_url.is_some()),
        ("CTP_PROJECT_KEY", ct.project_key.is_some()),
        ("CTP_CLIENT_ID", ct.client_id.is_some()),
        ("CTP_CLIENT_SECRET", ct.client_secret.is_some()),
    ];
    for (var, set) in required {
        if !set {
            r.missing(var, "a value (the order-status handler calls this API)");
        }
    }
}

fn order_lookup(text: &str) -> Result<OrderLookup, String> {
    let expected = || "order-number, id, id-without-prefix:<prefix> or attribute:<name>".to_owned();
    let text = text.trim();
    match text.split_once(':') {
        None if text == "order-number" => Ok(OrderLookup::OrderNumber),
        None if text == "id" => Ok(OrderLookup::Id),
        Some(("id-without-prefix", prefix)) if !prefix.is_empty() => {
            Ok(OrderLookup::IdWithoutPrefix(prefix.to_owned()))
        }
        Some(("attribute", name)) if !name.trim().is_empty() => {
            Ok(OrderLookup::Attribute(name.trim().to_owned()))
        }
        _ => Err(expected()),
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
        max_buffered: r.value(
            "PROCESSOR_MAX_BUFFERED",
            "8192",
            parse::int_in(1u32, 10_000_000),
        ),
        max_batch: r.value("PROCESSOR_MAX_BATCH", "256", parse::int_in(1u32, 100_000)),
        retry_base: r.value("PROCESSOR_RETRY_BASE_MS", "100", parse::millis(1, 60_000)),
        retry_cap: r.value(
            "PROCESSOR_RETRY_CAP_MS",
            "30000",
            parse::millis(1, 3_600_000),
        ),
        unknown_names: r.value("PROCESSOR_UNKNOWN_NAMES", "skip", parse::skip_or_dlq),
        order_status_message_names: r.value(
            "ORDER_STATUS_MESSAGE_NAMES",
            "fc.connect.order.webhook.order-status-update",
            parse::name_list,
        ),
        metrics_listen: r.value("METRICS_LISTEN", "0.0.0.0:9090", parse::socket_addr),
        stall_timeout: r.value(
            "PROCESSOR_STALL_TIMEOUT_SECS",
            "60",
            parse::seconds(1, 86_400),
        ),
        max_wait: r.value(
            "PROCESSOR_MAX_WAIT_SECS",
            "3600",
            parse::seconds(0, 7 * 86_400),
        ),
        api_timeout: r.value("API_TIMEOUT_MS", "10000", parse::millis(100, 600_000)),
    }
}

pub(super) fn telemetry(r: &mut Reader<'_>) -> TelemetryConfig {
    let mut config = TelemetryConfig {
        log_filter: r.value("RUST_LOG", "info", parse::log_filter),
        log_format: r.value("LOG_FORMAT", "pretty", parse::log_format),
        otlp_endpoint: r.optional("OTEL_EXPORTER_OTLP_ENDPOINT", parse::http_url),
        otlp_traces_endpoint: r.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", parse::http_url),
        otlp_protocol: r
            .optional("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", parse::otlp_protocol)
            .unwrap_or_else(|| {
                r.value(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "http/protobuf",
                    parse::otlp_protocol,
                )
            }),
        service_name: r.optional("OTEL_SERVICE_NAME", parse::non_empty),
        resource_attributes: r
            .optional("OTEL_RESOURCE_ATTRIBUTES", parse::resource_attributes)
            .unwrap_or_default(),
        sampler: {
            let argument = r.value("OTEL_TRACES_SAMPLER_ARG", "1", parse::ratio);
            r.value("OTEL_TRACES_SAMPLER", "parentbased_always_on", |text| {
                parse::sampler(text, argument)
            })
        },
        // Both of each pair are read (a file may set both), the signal's own wins.
        otlp_headers: {
            let traces = r.optional("OTEL_EXPORTER_OTLP_TRACES_HEADERS", parse::otlp_headers);
            let general = r.optional("OTEL_EXPORTER_OTLP_HEADERS", parse::otlp_headers);
            traces.or(general).unwrap_or_default()
        },
        otlp_timeout: {
            let traces = r.optional(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                parse::millis(1, 600_000),
            );
            let general = r.value(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "10000",
                parse::millis(1, 600_000),
            );
            traces.unwrap_or(general)
        },
        otlp_certificate: signal_or_general(
            r,
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        otlp_client_identity: None,
        batch_delay: r.value("OTEL_BSP_SCHEDULE_DELAY", "5000", parse::millis(1, 600_000)),
        batch_queue: r.value(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "2048",
            parse::int_in(1usize, 1 << 20),
        ),
        batch_size: r.value(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "512",
            parse::int_in(1usize, 1 << 20),
        ),
    };
    let certificate = signal_or_general(
        r,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = signal_or_general(
        r,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    match (certificate, key) {
        (Some(certificate), Some(key)) => config.otlp_client_identity = Some((certificate, key)),
        (None, None) => {}
        (Some(_), None) => r.missing(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "the key of OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (a PEM file): a client \
             certificate is presented with its key",
        ),
        (None, Some(_)) => r.missing(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "the certificate of OTEL_EXPORTER_OTLP_CLIENT_KEY (a PEM file): a client key is \
             presented with its certificate",
        ),
    }
    // The files only serve TLS: with a plain endpoint they would be silently unused.
    let plain = config
        .otlp_traces_endpoint
        .as_ref()
        .or(config.otlp_endpoint.as_ref())
        .filter(|url| url.expose().scheme() != "https");
    if let Some(url) = plain {
        let set = [
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                config.otlp_certificate.as_ref(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                config
                    .otlp_client_identity
                    .as_ref()
                    .map(|(certificate, _)| certificate),
            ),
        ];
        for (variable, path) in set {
            if let Some(path) = path {
                r.conflict(
                    variable,
                    format!("an https endpoint to be used with (the traces endpoint is {url})"),
                    &path.display().to_string(),
                );
            }
        }
    }
    if !r.is_set("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        // The default batch shrinks to a smaller queue, as the SDK's own does; only an
        // explicit batch larger than the queue is a mistake.
        config.batch_size = config.batch_size.min(config.batch_queue);
    }
    if config.batch_size > config.batch_queue {
        r.conflict(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            format!(
                "at most OTEL_BSP_MAX_QUEUE_SIZE ({}): a batch is taken from the queue",
                config.batch_queue
            ),
            &config.batch_size.to_string(),
        );
    }
    config
}

/// The path the signal's own variable (`OTEL_EXPORTER_OTLP_TRACES_…`) names, else the general
/// one's (both are read: a file may set both).
fn signal_or_general(
    r: &mut Reader<'_>,
    traces: &'static str,
    general: &'static str,
) -> Option<PathBuf> {
    let traces = r.optional(traces, parse::non_empty);
    let general = r.optional(general, parse::non_empty);
    traces.or(general).map(PathBuf::from)
}
