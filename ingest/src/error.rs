//! Every way a webhook can be refused, with its HTTP status and a stable `error` code.
//!
//! The codes are part of the contract (senders and dashboards match on them); the `detail`
//! text is for people and may change.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::bus::BusError;
use common::event::ValidationError;

use crate::signature::SignatureError;

/// Seconds Fluent is asked to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

/// The most characters of a refusal's `detail` (and of its log line's).
pub const DETAIL_LIMIT: usize = 300;

/// `text` with control characters escaped, cut to at most `limit` characters of output
/// (marked with `…`).
pub(crate) fn bounded(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit + 8));
    let mut count = 0;
    for c in text.chars() {
        let length = if c.is_control() {
            c.escape_default().len()
        } else {
            1
        };
        if count + length > limit {
            out.push('…');
            break;
        }
        count += length;
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No route has this path.
    #[error("no such route")]
    NotFound,
    /// The route does not take this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// More headers, or more header bytes, than the gateway reads.
    #[error("request headers are too large (at most {count} headers, {bytes} bytes in all)")]
    HeadersTooLarge {
        /// The most headers.
        count: usize,
        /// The most bytes of names and values.
        bytes: usize,
    },
    /// `INGEST_MAX_REQUESTS` webhooks are being handled already.
    #[error("too many webhooks at once; retry later")]
    Overloaded,
    /// The body did not arrive within `INGEST_REQUEST_TIMEOUT_MS`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// Not `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Larger than `INGEST_BODY_LIMIT_BYTES`, declared or sent.
    #[error("body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("the request body could not be read")]
    Body(#[source] axum::Error),
    /// Not authenticated.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Authenticated but not a valid event.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// `accountId` is not in `INGEST_ALLOWED_ACCOUNTS`.
    #[error("account {account:?} is not accepted here")]
    AccountNotAllowed {
        /// The account.
        account: String,
    },
    /// `name` is not in `INGEST_ALLOWED_NAMES`.
    #[error("event name {name:?} is not accepted here")]
    NameNotAllowed {
        /// The name.
        name: String,
    },
    /// The bus refuses records this large (its message size limit is below
    /// `INGEST_BODY_LIMIT_BYTES`): retrying cannot help, so this is not a 503.
    #[error("the bus refuses a record this large; retrying cannot help")]
    RecordTooLarge(#[source] BusError),
    /// The bus did not acknowledge the record: nothing was accepted, Fluent should retry.
    #[error("the event could not be stored; retry later")]
    Unavailable(#[source] BusError),
    /// The request took longer than `INGEST_REQUEST_TIMEOUT_MS`.
    #[error("the event could not be stored in time; retry later")]
    Timeout,
}

impl IngestError {
    /// A publish that failed: a record the bus refuses for its size is final, anything else
    /// is worth a retry.
    pub fn not_stored(error: BusError) -> Self {
        match error {
            BusError::TooLarge(_) => Self::RecordTooLarge(error),
            other => Self::Unavailable(other),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } | Self::RecordTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::AccountNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::NameNotAllowed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded | Self::Unavailable(_) | Self::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable `error` code of the response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge { .. } => "payload_too_large",
            Self::RecordTooLarge(_) => "record_too_large",
            Self::Body(_) => "unreadable_body",
            Self::Signature(SignatureError::Missing) => "missing_signature",
            Self::Signature(SignatureError::Timestamp) => "invalid_timestamp",
            Self::Signature(SignatureError::Repeated(_)) => "repeated_signature",
            Self::Signature(SignatureError::Malformed | SignatureError::Mismatch) => {
                "bad_signature"
            }
            Self::Invalid(ValidationError::Json(_)) => "invalid_json",
            Self::Invalid(ValidationError::NotAnObject(_)) => "not_an_object",
            Self::Invalid(ValidationError::Missing { .. } | ValidationError::Empty { .. }) => {
                "missing_field"
            }
            Self::Invalid(
                ValidationError::WrongType { .. }
                | ValidationError::Duplicate { .. }
                | ValidationError::Unusable { .. },
            ) => "invalid_field",
            Self::AccountNotAllowed { .. } => "account_not_allowed",
            Self::NameNotAllowed { .. } => "event_not_allowed",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
        }
    }

    /// The `outcome` label of the request counter (a small, fixed set).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge { .. } | Self::RecordTooLarge(_) => "too_large",
            Self::Signature(_) => "bad_signature",
            Self::Body(_) | Self::Invalid(_) => "invalid",
            Self::AccountNotAllowed { .. } => "forbidden",
            Self::NameNotAllowed { .. } => "not_allowed",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
        }
    }

    /// The human-readable detail: the error and, for validation, what the parser said. It can
    /// quote the request (a field name, a string value), so it is bounded to
    /// [`DETAIL_LIMIT`] characters with control characters escaped: a refusal never echoes a
    /// large body back, nor puts a line break into a log.
    pub fn detail(&self) -> String {
        let full = match self {
            Self::Invalid(ValidationError::Json(source) | ValidationError::NotAnObject(source))
            | Self::Invalid(ValidationError::WrongType { source, .. }) => {
                format!("{self}: {source}")
            }
            _ => self.to_string(),
        };
        bounded(&full, DETAIL_LIMIT)
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code(), "detail": self.detail() });
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            // Every 503 says when to come back.
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            // The body was not read (whole): the connection cannot carry another request.
            Self::TooLarge { .. } | Self::BodyTimeout | Self::Body(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_is_bounded_and_its_control_characters_escaped() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("a\r\nb", 10), "a\\r\\nb");
        let long = "é".repeat(10_000);
        let cut = bounded(&long, DETAIL_LIMIT);
        assert_eq!(cut.chars().count(), DETAIL_LIMIT + 1);
        assert!(cut.ends_with('…'));
        let controls = "\u{9f}".repeat(1_000);
        assert!(bounded(&controls, DETAIL_LIMIT).chars().count() <= DETAIL_LIMIT + 1);
    }

    #[test]
    fn a_record_the_bus_refuses_for_its_size_is_a_413_and_any_other_failure_a_503() {
        let too_large = IngestError::not_stored(BusError::TooLarge("max_payload".into()));
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_large.code(), "record_too_large");
        let response = too_large.into_response();
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
        let down = IngestError::not_stored(BusError::Unavailable("no broker".into()));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            down.into_response()
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
    }
}
