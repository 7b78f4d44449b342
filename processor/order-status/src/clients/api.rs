//! GraphQL over HTTP for the two APIs: one call, its errors, and whether a retry may help.
//!
//! Both APIs report some failures in a 200 body (`errors[]`) and others as HTTP statuses, and
//! commercetools answers a version conflict with 200, 400 or 409 alike. So for those the body
//! is read first: GraphQL errors are classified by their `extensions.code` whatever the status,
//! and only a body without them falls back to the status. 408, 429 and 5xx are the exception:
//! the status decides whatever the body holds, because gateways, load balancers and the APIs
//! themselves send them with GraphQL-shaped, REST-shaped, HTML or empty bodies alike.

use std::time::{Duration, Instant};

use common::telemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use tracing::{Instrument as _, Span, field, info_span};

/// Which API a call went to, for messages and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Fluent Commerce.
    Fluent,
    /// commercetools.
    Commercetools,
}

impl Api {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fluent => "fluent",
            Self::Commercetools => "commercetools",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GraphQL error as the API reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphQlError {
    /// `extensions.code` (commercetools: `ConcurrentModification`, `ResourceNotFound`, ...).
    pub code: Option<String>,
    /// `message`.
    pub message: String,
    /// `extensions.currentVersion`, on a commercetools version conflict.
    pub current_version: Option<u64>,
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request did not complete (connection refused or reset, timeout).
    #[error("{api} could not be reached (correlation id {correlation_id})")]
    Transport {
        /// The API.
        api: Api,
        /// Sent as `X-Correlation-ID`.
        correlation_id: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The API refused the token or the credentials (401).
    #[error("{api} refused the credentials (HTTP 401, correlation id {correlation_id})")]
    Unauthorized {
        /// The API.
        api: Api,
        /// Sent as `X-Correlation-ID`.
        correlation_id: String,
    },
    /// An HTTP error status without GraphQL errors in the body.
    #[error("{api} answered HTTP {status} (correlation id {correlation_id}): {body}")]
    Status {
        /// The API.
        api: Api,
        /// The status code.
        status: u16,
        /// The start of the body, for the log.
        body: String,
        /// Sent as `X-Correlation-ID`.
        correlation_id: String,
        /// `Retry-After`, when the API sent one.
        retry_after: Option<Duration>,
    },
    /// GraphQL errors in the body.
    #[error("{api} GraphQL error (correlation id {correlation_id}): {}", describe(.errors))]
    GraphQl {
        /// The API.
        api: Api,
        /// The errors, in the order reported.
        errors: Vec<GraphQlError>,
        /// Sent as `X-Correlation-ID`.
        correlation_id: String,
    },
    /// A body that is not the expected JSON.
    #[error("{api} sent an unexpected response (correlation id {correlation_id}): {detail}")]
    Decode {
        /// The API.
        api: Api,
        /// What was wrong.
        detail: String,
        /// Sent as `X-Correlation-ID`.
        correlation_id: String,
    },
}

fn describe(errors: &[GraphQlError]) -> String {
    errors
        .iter()
        .map(|error| match &error.code {
            Some(code) => format!("{code}: {}", error.message),
            None => error.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// commercetools error codes that a later attempt may get past.
const TRANSIENT_CODES: &[&str] = &[
    "OverCapacity",
    "PendingOperation",
    "ConcurrentModification",
    "InternalServerError",
    "INTERNAL_SERVER_ERROR",
    "SERVICE_UNAVAILABLE",
    "TIMEOUT",
];

/// GraphQL error codes that mean the API side is struggling, not the request.
const OUTAGE_CODES: &[&str] = &[
    "OverCapacity",
    "InternalServerError",
    "INTERNAL_SERVER_ERROR",
    "SERVICE_UNAVAILABLE",
    "TIMEOUT",
];

impl ApiError {
    /// Whether the same call may succeed later: transport errors, 401 (after a token
    /// refresh), 408, 429, 5xx except 501, and GraphQL errors whose code says so. Everything
    /// else (`ResourceNotFound`, `InvalidOperation`, `InvalidInput`, other 4xx, unexpected
    /// bodies) fails the same way again.
    pub fn is_retryable(&self) -> bool {
        self.unavailable_or(TRANSIENT_CODES)
    }

    /// Whether the API as a whole looks unavailable, rather than this one request failing:
    /// connection errors, refused credentials (a rotated secret not deployed yet), 408, 429,
    /// 5xx except 501, and server-side GraphQL codes. Records then wait for the API instead of
    /// spending their attempts (`Outcome::Wait`).
    pub fn is_outage(&self) -> bool {
        self.unavailable_or(OUTAGE_CODES)
    }

    /// The two classifiers differ only in which GraphQL codes count.
    fn unavailable_or(&self, codes: &[&str]) -> bool {
        match self {
            Self::Transport { .. } | Self::Unauthorized { .. } => true,
            Self::Status { status, .. } => status_says_unavailable(*status),
            Self::GraphQl { errors, .. } => errors.iter().all(|error| {
                error
                    .code
                    .as_deref()
                    .is_some_and(|code| codes.contains(&code))
            }),
            Self::Decode { .. } => false,
        }
    }

    /// The `currentVersion` of a commercetools version conflict, when that is the error.
    pub fn concurrent_modification(&self) -> Option<Option<u64>> {
        match self {
            Self::GraphQl { errors, .. } => errors
                .iter()
                .find(|error| error.code.as_deref() == Some("ConcurrentModification"))
                .map(|error| error.current_version),
            _ => None,
        }
    }

    /// How long the API asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The labels of an API call: which API, which operation, and how it ended (all from small
/// fixed sets: the operations are those of the handler's own documents, and `token`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `fluent` or `commercetools`.
    pub api: &'static str,
    /// The GraphQL operation's name (`OrderByRef`, `UpdateOrder`, ...) or `token`.
    pub operation: &'static str,
    /// `ok`, `transport`, `unauthorized`, `http_status`, `graphql_error` or `decode`.
    pub outcome: &'static str,
}

type HistogramFamily = Family<CallLabels, Histogram, fn() -> Histogram>;

/// How long GraphQL calls to the APIs take, by API and outcome
/// (`processor_api_request_duration_seconds`). Clones share the same series.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    calls: HistogramFamily,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        // 1 ms to about 16 s.
        fn buckets() -> Histogram {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        }
        Self {
            calls: Family::new_with_constructor(buckets as fn() -> Histogram),
        }
    }
}

impl ApiMetrics {
    /// Registers the histogram family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "processor_api_request_duration",
            "Calls to Fluent and commercetools (GraphQL operations and token requests), by API, operation and outcome",
            Unit::Seconds,
            self.calls.clone(),
        );
    }

    pub(crate) fn observe(
        &self,
        api: Api,
        operation: &'static str,
        result: &Result<Value, ApiError>,
        started: Instant,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(ApiError::Transport { .. }) => "transport",
            Err(ApiError::Unauthorized { .. }) => "unauthorized",
            Err(ApiError::Status { .. }) => "http_status",
            Err(ApiError::GraphQl { .. }) => "graphql_error",
            Err(ApiError::Decode { .. }) => "decode",
        };
        self.calls
            .get_or_create(&CallLabels {
                api: api.as_str(),
                operation,
                outcome,
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The name of the operation `document` defines (`query OrderByRef(...)` gives `OrderByRef`),
/// or `anonymous`: a metric label bounded by the handler's own documents.
pub(crate) fn operation_name(document: &'static str) -> &'static str {
    let rest = document
        .trim_start()
        .strip_prefix("query")
        .or_else(|| document.trim_start().strip_prefix("mutation"))
        .unwrap_or_default()
        .trim_start();
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    match &rest[..end] {
        "" => "anonymous",
        name => name,
    }
}

/// A setting an API client needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("{0} must be set for the order-status handler")]
pub struct MissingSetting(pub &'static str);

/// The HTTP client both APIs are called with: HTTPS with rustls, trusting the system's
/// certificate store (or what `SSL_CERT_FILE`/`SSL_CERT_DIR` name, for a private CA) and
/// Mozilla's roots. Both real APIs are HTTPS-only; a client without TLS would fail every call
/// as a transport error, which the handler waits out as an outage.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(SetupError::HttpClient)
}

/// Why the order-status handler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing.
    #[error(transparent)]
    Missing(#[from] MissingSetting),
    /// The HTTP client could not be built (TLS roots, say); the cause says why.
    #[error("cannot build the HTTP client for the APIs")]
    HttpClient(#[source] reqwest::Error),
}

/// Posts `query` with `variables` to `url` with the bearer `token`; returns `data`. One HTTP
/// client span (OpenTelemetry conventions) per call, whose context the request carries as
/// `traceparent`, so the API's own traces can join ours.
pub async fn post_graphql(
    http: &reqwest::Client,
    api: Api,
    url: &str,
    token: &SecretString,
    query: &str,
    variables: &Value,
    correlation_id: &str,
) -> Result<Value, ApiError> {
    let span = info_span!(
        "graphql",
        otel.name = "POST",
        otel.kind = "client",
        otel.status_code = field::Empty,
        http.request.method = "POST",
        url.full = &*without_credentials(url),
        http.response.status_code = field::Empty,
        api = api.as_str(),
    );
    let mut request = http
        .post(url)
        .bearer_auth(token.expose_secret())
        .header("X-Correlation-ID", correlation_id);
    for (name, value) in telemetry::trace_headers(&span) {
        request = request.header(name, value);
    }
    let request = request.json(&serde_json::json!({ "query": query, "variables": variables }));
    let result = exchange(request, api, correlation_id, &span)
        .instrument(span.clone())
        .await;
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// `url` without a `user:password@` part: spans and the log lines inside them show it.
fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// Sends `request` and reads its answer into `data` or the error it describes.
async fn exchange(
    request: reqwest::RequestBuilder,
    api: Api,
    correlation_id: &str,
    span: &Span,
) -> Result<Value, ApiError> {
    let transport = |source| ApiError::Transport {
        api,
        correlation_id: correlation_id.to_owned(),
        source,
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response.bytes().await.map_err(transport)?;
    if status == 401 {
        return Err(ApiError::Unauthorized {
            api,
            correlation_id: correlation_id.to_owned(),
        });
    }
    // Throttling and server-side failures are decided by the status, whatever the body says:
    // real APIs and the proxies in front of them send these with GraphQL-shaped, REST-shaped,
    // HTML or empty bodies, and none of them describes the request as wrong.
    let status_error = || ApiError::Status {
        api,
        status,
        body: body_excerpt(&bytes),
        correlation_id: correlation_id.to_owned(),
        retry_after,
    };
    if status_says_unavailable(status) {
        return Err(status_error());
    }
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    if let Some(errors) = body
        .as_ref()
        .and_then(|body| body.get("errors"))
        .and_then(Value::as_array)
        && !errors.is_empty()
    {
        return Err(ApiError::GraphQl {
            api,
            errors: errors.iter().map(graphql_error).collect(),
            correlation_id: correlation_id.to_owned(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(status_error());
    }
    match body.and_then(|mut body| body.get_mut("data").map(Value::take)) {
        Some(data) => Ok(data),
        None => Err(ApiError::Decode {
            api,
            detail: "no `data` in the response".into(),
            correlation_id: correlation_id.to_owned(),
        }),
    }
}

/// 408, 429 and 5xx except 501 (not implemented: the same request fails again).
fn status_says_unavailable(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..600).contains(&status) && status != 501)
}

/// The start of a body, for messages: at most 500 bytes (a character cut in two shows as
/// U+FFFD), or `(empty body)`.
fn body_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]);
    if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        text.into_owned()
    }
}

fn graphql_error(error: &Value) -> GraphQlError {
    let extensions = error.get("extensions");
    GraphQlError {
        // commercetools' REST-shaped bodies carry the code beside the message, not under
        // `extensions`.
        code: extensions
            .and_then(|e| e.get("code"))
            .or_else(|| error.get("code"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)")
            .to_owned(),
        current_version: extensions
            .and_then(|e| e.get("currentVersion"))
            .and_then(Value::as_u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_shows_the_api_url_without_its_credentials() {
        assert_eq!(
            without_credentials("https://user:secret@proxy.example:8443/p/graphql"),
            "https://proxy.example:8443/p/graphql"
        );
        assert_eq!(
            without_credentials("https://api.example/graphql"),
            "https://api.example/graphql"
        );
        assert_eq!(
            without_credentials("https://api.example/a@b/graphql"),
            "https://api.example/a@b/graphql"
        );
    }

    #[test]
    fn every_document_names_its_operation_for_the_metric_label() {
        use crate::clients::documents::*;
        let names: Vec<&str> = [
            FLUENT_ORDER_BY_REF,
            FLUENT_SETTINGS,
            CT_ORDER_BY_NUMBER,
            CT_ORDER_BY_ID,
            CT_UPDATE_ORDER,
        ]
        .map(operation_name)
        .to_vec();
        assert_eq!(
            names,
            [
                "OrderByRef",
                "MappingSettings",
                "OrderByNumber",
                "OrderById",
                "UpdateOrder"
            ]
        );
        assert_eq!(operation_name("{ order { id } }"), "anonymous");
    }

    fn status(status: u16) -> ApiError {
        ApiError::Status {
            api: Api::Commercetools,
            status,
            body: String::new(),
            correlation_id: "c".into(),
            retry_after: None,
        }
    }

    fn graphql(codes: &[&str]) -> ApiError {
        ApiError::GraphQl {
            api: Api::Commercetools,
            errors: codes
                .iter()
                .map(|code| GraphQlError {
                    code: Some((*code).to_owned()),
                    message: "m".into(),
                    current_version: Some(7),
                })
                .collect(),
            correlation_id: "c".into(),
        }
    }

    /// Both APIs are HTTPS-only: the client must open a TLS session for an `https` URL.
    #[tokio::test]
    async fn http_client_speaks_tls_to_https_urls() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let first_bytes = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 3];
            socket.read_exact(&mut head).await.unwrap();
            head
        });
        let client = http_client(Duration::from_secs(5)).unwrap();
        // The server never answers the handshake; only what the client sent matters.
        let call = client.get(format!("https://127.0.0.1:{port}/")).send();
        let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
        let head = tokio::time::timeout(Duration::from_secs(5), first_bytes)
            .await
            .expect("the client never connected")
            .unwrap();
        // A TLS record of type handshake (22), protocol version 3.x: a ClientHello.
        assert_eq!(head[..2], [0x16, 0x03], "not a TLS handshake: {head:?}");
    }

    #[test]
    fn statuses_and_codes_are_classified() {
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert!(status(retryable).is_retryable(), "{retryable}");
        }
        for permanent in [400, 403, 404, 409, 422, 501] {
            assert!(!status(permanent).is_retryable(), "{permanent}");
        }
        assert!(graphql(&["OverCapacity"]).is_retryable());
        assert!(graphql(&["PendingOperation"]).is_retryable());
        for permanent in ["ResourceNotFound", "InvalidOperation", "InvalidInput"] {
            assert!(!graphql(&[permanent]).is_retryable(), "{permanent}");
        }
        assert!(!graphql(&["OverCapacity", "InvalidInput"]).is_retryable());
        assert_eq!(
            graphql(&["ConcurrentModification"]).concurrent_modification(),
            Some(Some(7))
        );
        assert_eq!(graphql(&["InvalidInput"]).concurrent_modification(), None);
    }
}
