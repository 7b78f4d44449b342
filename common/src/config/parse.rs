//! Parsers from configuration text to typed values. Each returns, on failure, a description of
//! what was expected; the [`super::source::Reader`] adds the variable name and the value found.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use url::Url;

use super::types::{
    BusKind, HmacSecret, KafkaProperties, LogFormat, OtlpProtocol, PublicKeyDer, RootSampler,
    Secret, ServerUrl, TraceSampler, UnknownNames,
};

/// What a parser returns: the value or a description of what was expected.
pub(super) type Parsed<T> = Result<T, String>;

/// Splits on commas, trims, and drops empty items (a trailing comma is harmless).
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

pub(super) fn bus_kind(text: &str) -> Parsed<BusKind> {
    match text.trim().to_ascii_lowercase().as_str() {
        "kafka" => Ok(BusKind::Kafka),
        "nats" => Ok(BusKind::Nats),
        "memory" => Ok(BusKind::Memory),
        _ => Err("one of kafka, nats, memory".into()),
    }
}

pub(super) fn log_format(text: &str) -> Parsed<LogFormat> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pretty" | "text" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err("one of pretty, json".into()),
    }
}

pub(super) fn otlp_protocol(text: &str) -> Parsed<OtlpProtocol> {
    match text.trim().to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "grpc" => Ok(OtlpProtocol::Grpc),
        _ => Err("http/protobuf or grpc".into()),
    }
}

/// A sampler name of the specification, with `ratio` for the ratio-based ones.
pub(super) fn sampler(text: &str, ratio: f64) -> Parsed<TraceSampler> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "always_on" => TraceSampler::AlwaysOn,
        "always_off" => TraceSampler::AlwaysOff,
        "traceidratio" => TraceSampler::Ratio(ratio),
        "parentbased_always_on" => TraceSampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => TraceSampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => TraceSampler::ParentBased(RootSampler::Ratio(ratio)),
        _ => {
            return Err(
                "one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio"
                    .into(),
            );
        }
    })
}

/// A URI reference (absolute or relative) as CloudEvents' `source` must be: no whitespace or
/// control characters, nothing a header could not carry.
pub(super) fn uri_reference(text: &str) -> Parsed<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URI reference without spaces or control characters".into());
    }
    Ok(text.to_owned())
}

/// A share from 0 to 1.
pub(super) fn ratio(text: &str) -> Parsed<f64> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("a number from 0 to 1".into()),
    }
}

/// `key=value[,key=value]` with percent-encoded values (the W3C Baggage octet rules the
/// specification refers to).
pub(super) fn resource_attributes(text: &str) -> Parsed<Vec<(String, String)>> {
    key_values(text, "key=value[,key=value] with percent-encoded values")
}

/// `key=value[,key=value]`, keys trimmed and not empty, values percent-decoded; `expected`
/// describes the format when the text is not that.
fn key_values(text: &str, expected: &str) -> Parsed<Vec<(String, String)>> {
    items(text)
        .map(|item| {
            let (key, value) = item.split_once('=').ok_or(expected)?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| expected)?;
            match key.trim() {
                "" => Err(expected.to_owned()),
                key => Ok((key.to_owned(), value.into_owned())),
            }
        })
        .collect()
}

/// `key=value[,key=value]` headers sent with every OTLP export (a vendor's API key, say):
/// names HTTP tokens, values percent-decoded and kept secret.
pub(super) fn otlp_headers(text: &str) -> Parsed<Vec<(String, Secret)>> {
    const EXPECTED: &str =
        "name=value[,name=value] with header-token names and percent-encoded values";
    let token = |name: &str| {
        name.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
    };
    key_values(text, EXPECTED)?
        .into_iter()
        .map(|(name, value)| {
            let visible = value
                .bytes()
                .all(|byte| byte == b'\t' || (0x20..0x7f).contains(&byte));
            if !token(&name) || !visible {
                return Err(EXPECTED.to_owned());
            }
            Ok((name.to_ascii_lowercase(), Secret::from(value)))
        })
        .collect()
}

/// `skip` (false) or `dlq` (true).
pub(super) fn skip_or_dlq(text: &str) -> Parsed<UnknownNames> {
    match text.trim().to_ascii_lowercase().as_str() {
        "skip" => Ok(UnknownNames::Skip),
        "dlq" => Ok(UnknownNames::DeadLetter),
        _ => Err("skip or dlq".into()),
    }
}

pub(super) fn boolean(text: &str) -> Parsed<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// An integer in `min..=max`.
pub(super) fn int_in<T>(min: T, max: T) -> impl Fn(&str) -> Parsed<T>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    move |text| match text.trim().parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(value),
        _ => Err(format!("an integer from {min} to {max}")),
    }
}

/// A duration in whole milliseconds, within `min..=max`.
pub(super) fn millis(min: u64, max: u64) -> impl Fn(&str) -> Parsed<Duration> {
    move |text| match text.trim().parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(Duration::from_millis(value)),
        _ => Err(format!("milliseconds from {min} to {max}")),
    }
}

/// A duration in whole seconds, within `min..=max`.
pub(super) fn seconds(min: u64, max: u64) -> impl Fn(&str) -> Parsed<Duration> {
    move |text| match text.trim().parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(Duration::from_secs(value)),
        _ => Err(format!("seconds from {min} to {max}")),
    }
}

/// JetStream's `max_deliver`: `-1` (no limit) or 1 to 10,000.
pub(super) fn max_deliver(text: &str) -> Parsed<i64> {
    match text.trim().parse::<i64>() {
        Ok(value) if value == -1 || (1..=10_000).contains(&value) => Ok(value),
        _ => Err("-1 (no limit) or 1 to 10000".into()),
    }
}

/// A producer compression codec the bundled librdkafka supports.
pub(super) fn compression(text: &str) -> Parsed<String> {
    match text.trim().to_ascii_lowercase().as_str() {
        codec @ ("none" | "gzip" | "snappy" | "lz4") => Ok(codec.to_owned()),
        _ => Err("one of none, gzip, snappy, lz4".into()),
    }
}

/// A replication factor, or -1 for the broker's default.
pub(super) fn replication(text: &str) -> Parsed<i16> {
    match text.trim().parse::<i16>() {
        Ok(value) if value == -1 || value >= 1 => Ok(value),
        _ => Err("-1 (broker default) or a replication factor from 1".into()),
    }
}

pub(super) fn broker_list(text: &str) -> Parsed<Vec<String>> {
    const EXPECTED: &str = "host:port[,host:port]";
    let brokers: Vec<String> = items(text).map(str::to_owned).collect();
    let valid = |broker: &String| match broker.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0),
        None => false,
    };
    if brokers.is_empty() || !brokers.iter().all(valid) {
        return Err(EXPECTED.into());
    }
    Ok(brokers)
}

/// A Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, and not `.` or `..`.
pub(super) fn topic(text: &str) -> Parsed<String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty()
        || text.len() > 249
        || !text.chars().all(legal)
        || text == "."
        || text == ".."
    {
        return Err("a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)".into());
    }
    Ok(text.to_owned())
}

/// Any non-blank text, trimmed.
pub(super) fn non_empty(text: &str) -> Parsed<String> {
    match text.trim() {
        "" => Err("a non-empty value".into()),
        trimmed => Ok(trimmed.to_owned()),
    }
}

/// `key=value[,key=value]`. librdkafka list values contain commas (`debug=broker,topic`), so
/// an item without `=` continues the previous value.
pub(super) fn kafka_properties(text: &str) -> Parsed<KafkaProperties> {
    const EXPECTED: &str = "librdkafka properties as key=value[,key=value]";
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in text.split(',') {
        match item.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                pairs.push((key.trim().to_owned(), value.trim().to_owned()));
            }
            Some(_) => return Err(EXPECTED.into()),
            None if item.trim().is_empty() => {}
            None => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(item.trim());
                }
                None => return Err(EXPECTED.into()),
            },
        }
    }
    Ok(KafkaProperties::new(pairs))
}

/// A list of non-empty names separated by commas.
pub(super) fn name_list(text: &str) -> Parsed<Vec<String>> {
    let names: Vec<String> = items(text).map(str::to_owned).collect();
    if names.is_empty() {
        return Err("one or more names separated by commas".into());
    }
    Ok(names)
}

/// OAuth scopes: separated by spaces (the OAuth spelling) or commas.
pub(super) fn scopes(text: &str) -> Parsed<Vec<String>> {
    let scopes: Vec<String> = text
        .split([' ', ',', '\n'])
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return Err("one or more scopes separated by spaces".into());
    }
    Ok(scopes)
}

/// An `ip:port` to listen on.
pub(super) fn socket_addr(text: &str) -> Parsed<SocketAddr> {
    text.trim()
        .parse()
        .map_err(|_| "ip:port, e.g. 0.0.0.0:8080".into())
}

fn url_with_scheme(text: &str, schemes: &[&str]) -> Parsed<ServerUrl> {
    let expected = || format!("a URL with scheme {}", schemes.join(" or "));
    let url = Url::parse(text.trim()).map_err(|_| expected())?;
    if !schemes.contains(&url.scheme()) || !url.has_host() {
        return Err(expected());
    }
    Ok(ServerUrl::new(url))
}

pub(super) fn http_url(text: &str) -> Parsed<ServerUrl> {
    url_with_scheme(text, &["http", "https"])
}

/// One or more NATS server URLs separated by commas.
pub(super) fn nats_urls(text: &str) -> Parsed<Vec<ServerUrl>> {
    let urls = items(text)
        .map(|item| url_with_scheme(item, &["nats", "tls", "ws", "wss"]))
        .collect::<Parsed<Vec<_>>>()?;
    if urls.is_empty() {
        return Err("a URL with scheme nats or tls or ws or wss".into());
    }
    Ok(urls)
}

/// A JetStream stream name: no whitespace, `.`, `*`, `>`, `/` or `\`.
pub(super) fn stream_name(text: &str) -> Parsed<String> {
    let illegal = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if text.is_empty() || text.chars().any(illegal) {
        return Err("a stream name without spaces, '.', '*', '>', '/' or '\\'".into());
    }
    Ok(text.to_owned())
}

/// A NATS subject prefix: dot-separated non-empty tokens without wildcards or spaces.
pub(super) fn subject_prefix(text: &str) -> Parsed<String> {
    let valid_token = |token: &str| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>')
    };
    if !text.split('.').all(valid_token) {
        return Err("a subject prefix like fluent.webhooks (no wildcards or spaces)".into());
    }
    Ok(text.to_owned())
}

/// `all`, or partitions and ranges like `0-3,7`, each below `partitions`.
pub(super) fn owned_partitions(partitions: u16) -> impl Fn(&str) -> Parsed<Vec<u16>> {
    move |text| {
        let expected = || format!("all, or partitions below {partitions} like 0-3,7");
        if text.trim().eq_ignore_ascii_case("all") {
            return Ok((0..partitions).collect());
        }
        let mut owned = Vec::new();
        for item in items(text) {
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            let low: u16 = low.trim().parse().map_err(|_| expected())?;
            let high: u16 = high.trim().parse().map_err(|_| expected())?;
            if low > high || high >= partitions {
                return Err(expected());
            }
            owned.extend(low..=high);
        }
        owned.sort_unstable();
        owned.dedup();
        if owned.is_empty() {
            return Err(expected());
        }
        Ok(owned)
    }
}

/// Public keys: PEM blocks, or base64 DER SPKI separated by commas or whitespace.
pub(super) fn public_keys(text: &str) -> Parsed<Vec<PublicKeyDer>> {
    const EXPECTED: &str =
        "base64 SubjectPublicKeyInfo or PEM public keys, separated by commas or newlines";
    let encoded: Vec<String> = if text.contains("-----BEGIN") {
        pem_bodies(text).ok_or(EXPECTED)?
    } else {
        text.split([',', '\n', ' ', '\r', '\t'])
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let keys = encoded
        .iter()
        .map(|key| STANDARD.decode(key).ok().filter(|der| looks_like_der(der)))
        .collect::<Option<Vec<_>>>()
        .ok_or(EXPECTED)?;
    if keys.is_empty() {
        return Err(EXPECTED.into());
    }
    Ok(keys.into_iter().map(PublicKeyDer::new).collect())
}

/// The base64 bodies of `-----BEGIN PUBLIC KEY-----` blocks, whitespace removed.
fn pem_bodies(text: &str) -> Option<Vec<String>> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut bodies = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN") {
        let block = rest[start..].strip_prefix(BEGIN)?;
        let end = block.find(END)?;
        bodies.push(block[..end].split_whitespace().collect());
        rest = &block[end + END.len()..];
    }
    Some(bodies)
}

/// A DER SEQUENCE: enough to catch a pasted private key or a truncated value early.
fn looks_like_der(der: &[u8]) -> bool {
    der.len() > 32 && der[0] == 0x30
}

/// Standard Webhooks secrets: base64, optionally prefixed `whsec_`, separated by commas or
/// whitespace.
pub(super) fn hmac_secrets(text: &str) -> Parsed<Vec<HmacSecret>> {
    const EXPECTED: &str =
        "base64 secrets (optionally prefixed whsec_), separated by commas or whitespace";
    let secrets = text
        .split([',', '\n', ' ', '\r', '\t'])
        .filter(|secret| !secret.is_empty())
        .map(|secret| {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
            STANDARD
                .decode(encoded)
                .ok()
                .filter(|bytes| !bytes.is_empty())
        })
        .collect::<Option<Vec<Vec<u8>>>>()
        .ok_or(EXPECTED)?;
    if secrets.is_empty() {
        return Err(EXPECTED.into());
    }
    Ok(secrets.into_iter().map(HmacSecret::from).collect())
}

/// A `RUST_LOG`-style filter, checked now so a typo fails start-up rather than silencing logs.
pub(super) fn log_filter(text: &str) -> Parsed<String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_owned())
        .map_err(|_| "a tracing filter like info or info,processor=debug".into())
}
