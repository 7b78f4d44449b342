//! `POST /webhooks/fluent`: authenticate, validate, publish, and only then answer 200.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::bus::{Headers, OutboundRecord, headers as names, rfc3339_now};
use common::event::FluentEvent;
use tracing::{Instrument as _, Span, error, field, info_span, warn};

use crate::error::IngestError;
use crate::state::AppState;

/// Handles one webhook; every answer is counted and every refusal logged once.
pub(crate) async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let span = info_span!("webhook", event_id = field::Empty, order_ref = field::Empty);
    let result = tokio::time::timeout(state.request_timeout, accept(&state, &headers, body))
        .instrument(span.clone())
        .await
        .unwrap_or(Err(IngestError::Timeout));
    state
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    let _entered = span.enter();
    match result {
        Ok(id) => {
            state.metrics.count("accepted");
            (
                StatusCode::OK,
                Json(serde_json::json!({ "status": "accepted", "id": id })),
            )
                .into_response()
        }
        Err(refusal) => {
            state.metrics.count(refusal.outcome());
            if refusal.status().is_server_error() {
                error!(error = %refusal, code = refusal.code(), cause = ?std::error::Error::source(&refusal), "webhook not stored");
            } else {
                warn!(error = %refusal, code = refusal.code(), "webhook refused");
            }
            refusal.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, IngestError> {
    if !is_json(headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => IngestError::TooLarge {
            limit: state.body_limit,
        },
        _ => IngestError::Body(axum::Error::new(rejection)),
    })?;
    // Authenticate before parsing: nothing unverified is even looked at.
    state.verifier.verify(headers, &body, SystemTime::now())?;
    let event = FluentEvent::parse(&body, &state.required_fields)?;
    let id = event.id.clone().unwrap_or_default();
    let span = Span::current();
    span.record("event_id", id.as_str());
    span.record("order_ref", event.order_ref().unwrap_or_default());
    state.check_allowed(&event)?;
    let record = OutboundRecord {
        // One order's events share a key, so they stay in order on one partition.
        key: event
            .order_ref()
            .or(event.entity_ref.as_deref())
            .unwrap_or_default()
            .to_owned()
            .into(),
        // The exact bytes received: other consumers of the topic rely on them, and the
        // signature was computed over them.
        payload: body,
        headers: record_headers(&event, headers),
    };
    let publishing = Instant::now();
    state
        .publisher
        .publish(record)
        .await
        .map_err(IngestError::Unavailable)?;
    state
        .metrics
        .publish_seconds
        .observe(publishing.elapsed().as_secs_f64());
    Ok(id)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn record_headers(event: &FluentEvent, request: &HeaderMap) -> Headers {
    let mut headers = Headers::new();
    let mut put = |name: &'static str, value: Option<&str>| {
        if let Some(value) = value {
            headers.insert(name, value.to_owned());
        }
    };
    put(names::EVENT_ID, event.id.as_deref());
    put(names::EVENT_NAME, event.name.as_deref());
    put(names::ACCOUNT_ID, event.account_id.as_deref());
    put(names::RECEIVED_AT, Some(&rfc3339_now()));
    // W3C trace context passes through, so a trace can follow the event downstream.
    for name in [names::TRACEPARENT, names::TRACESTATE] {
        put(
            name,
            request.get(name).and_then(|value| value.to_str().ok()),
        );
    }
    headers
}
