//! Value types of the configuration that need more than a `String`: they keep secrets out of
//! `Debug` output and carry values already checked, so users of the config never re-validate.

use std::fmt;

use secrecy::SecretString;
use url::Url;

/// Which message bus carries the events between the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// Apache Kafka (or any Kafka-protocol broker).
    Kafka,
    /// NATS JetStream.
    Nats,
    /// In-process and not durable: the single-process demo and tests only.
    Memory,
}

/// What the engine does with records whose message name no handler is registered for
/// (`PROCESSOR_UNKNOWN_NAMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownNames {
    /// Acknowledge without processing, counted as skipped (`skip`).
    Skip,
    /// Dead-letter them as permanent failures (`dlq`).
    DeadLetter,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How traces travel to the OTLP receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: protobuf over HTTP POST to `/v1/traces` (the specification's default).
    HttpProtobuf,
    /// `grpc`: the OTLP gRPC service (port 4317 by convention).
    Grpc,
}

/// Which traces are recorded and exported (the specification's `OTEL_TRACES_SAMPLER` values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of traces.
    Ratio(f64),
    /// `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`: follow
    /// the parent's decision; a trace that starts here is sampled by the inner sampler.
    ParentBased(RootSampler),
}

/// The sampler of [`TraceSampler::ParentBased`] for traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This share of traces.
    Ratio(f64),
}

/// A URL whose `Debug` and `Display` hide the password of any `user:password@` part.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl(Url);

impl ServerUrl {
    pub(super) fn new(url: Url) -> Self {
        Self(url)
    }

    /// The URL itself, credentials included: for connecting, never for logging.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_some() {
            let mut shown = self.0.clone();
            // Setting a password only fails for URLs that cannot have one, and this one has one.
            let _ = shown.set_password(Some("***"));
            write!(f, "{shown}")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerUrl({self})")
    }
}

/// Extra librdkafka properties (`KAFKA_PROPERTIES`). They often hold SASL passwords and key
/// material, so `Debug` shows the property names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<(String, String)>);

impl KafkaProperties {
    pub(super) fn new(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// The properties in the order given, values included: for the client, never for logging.
    pub fn expose(&self) -> &[(String, String)] {
        &self.0
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, _)| (key, "<redacted>")))
            .finish()
    }
}

/// A webhook-signing public key: DER-encoded SubjectPublicKeyInfo, decoded from base64 or PEM.
/// Public keys are not secret; they are kept as bytes so the gateway parses them once.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeyDer(Vec<u8>);

impl PublicKeyDer {
    pub(super) fn new(der: Vec<u8>) -> Self {
        Self(der)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PublicKeyDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKeyDer({} bytes)", self.0.len())
    }
}

/// A Standard Webhooks signing secret (the bytes behind `whsec_<base64>`).
pub type HmacSecret = secrecy::SecretSlice<u8>;

/// A secret text value (password, client secret).
pub type Secret = SecretString;
