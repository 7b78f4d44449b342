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

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Larger than `INGEST_BODY_LIMIT_BYTES`.
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
    /// The bus did not acknowledge the record: nothing was accepted, Fluent should retry.
    #[error("the event could not be stored; retry later")]
    Unavailable(#[source] BusError),
    /// The request took longer than `INGEST_REQUEST_TIMEOUT_MS`.
    #[error("the event could not be stored in time; retry later")]
    Timeout,
}

impl IngestError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::AccountNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::NameNotAllowed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `error` code of the response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge { .. } => "payload_too_large",
            Self::Body(_) => "unreadable_body",
            Self::Signature(SignatureError::Missing) => "missing_signature",
            Self::Signature(SignatureError::Timestamp) => "invalid_timestamp",
            Self::Signature(SignatureError::Malformed | SignatureError::Mismatch) => {
                "bad_signature"
            }
            Self::Invalid(ValidationError::Json(_)) => "invalid_json",
            Self::Invalid(ValidationError::NotAnObject(_)) => "not_an_object",
            Self::Invalid(ValidationError::Missing { .. } | ValidationError::Empty { .. }) => {
                "missing_field"
            }
            Self::Invalid(
                ValidationError::WrongType { .. } | ValidationError::Duplicate { .. },
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
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge { .. } => "too_large",
            Self::Signature(_) => "bad_signature",
            Self::Body(_) | Self::Invalid(_) => "invalid",
            Self::AccountNotAllowed { .. } => "forbidden",
            Self::NameNotAllowed { .. } => "not_allowed",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
        }
    }

    /// The human-readable detail: the error and, for validation, what the parser said.
    fn detail(&self) -> String {
        match self {
            Self::Invalid(ValidationError::Json(source) | ValidationError::NotAnObject(source))
            | Self::Invalid(ValidationError::WrongType { source, .. }) => {
                format!("{self}: {source}")
            }
            _ => self.to_string(),
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code(), "detail": self.detail() });
        let mut response = (self.status(), Json(body)).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
