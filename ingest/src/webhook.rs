//! `POST /webhooks/fluent`: authenticate, validate, publish, and only then answer 200.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::bus::{OutboundRecord, headers as names, rfc3339_now};
use common::event::FluentEvent;
use common::telemetry::{KeyValue, OtelSpan, SpanKind, TraceHeaders, Value};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tracing::{Instrument as _, Span, debug, error, field, info_span, warn};

use crate::error::IngestError;
use crate::replay::Ids;
use crate::signature::Verified;
use crate::state::AppState;

/// What became of an authenticated, valid webhook.
enum Accepted {
    /// Published now, with this event id.
    Published(String),
    /// Accepted lately already (same `webhook-id` or event id): not published again.
    Replay(String),
}

/// Handles one webhook; every answer is counted and every refusal logged once.
pub(crate) async fn receive(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // The HTTP server span (OpenTelemetry semantic conventions), named by the route template,
    // made with the OpenTelemetry API: the hot path's spans skip `tracing`'s bookkeeping
    // (telemetry::OtelSpan). Fluent's own trace context is the sender's word: a link, never
    // our parent.
    let inbound = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let server = OtelSpan::root(
        || server_span_name(route.as_str()),
        SpanKind::Server,
        TraceHeaders {
            traceparent: inbound(names::TRACEPARENT),
            tracestate: inbound(names::TRACESTATE),
        },
        || {
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", http_route(route.as_str())),
            ]
        },
    );
    // The request's log lines, with the server span's ids (`log_only`: telemetry::LOG_ONLY).
    let span = info_span!(
        "webhook",
        log_only = true,
        event_id = field::Empty,
        order_ref = field::Empty
    );
    server.log_ids_on(&span);
    let result = match state.requests.try_acquire() {
        Ok(_permit) => {
            accept(&state, &headers, body, started, &server)
                .instrument(span.clone())
                .await
        }
        Err(_) => Err(IngestError::Overloaded),
    };
    state
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    let _entered = span.enter();
    let response = match result {
        Ok(Accepted::Published(id)) => {
            debug!("webhook accepted");
            state.metrics.count("accepted");
            answer(&id, false)
        }
        Ok(Accepted::Replay(id)) => {
            state.metrics.count("replay");
            answer(&id, true)
        }
        Err(refusal) => {
            state.metrics.count(refusal.outcome());
            let detail = refusal.detail();
            // In the trace too: the log lines are not the server span's events.
            server.add_event(
                if refusal.status().is_server_error() {
                    "webhook not stored"
                } else {
                    "webhook refused"
                },
                || {
                    vec![
                        KeyValue::new("code", refusal.code()),
                        KeyValue::new("detail", detail.clone()),
                    ]
                },
            );
            // Where `RUST_LOG` leaves the webhook's span out, the line names its trace itself.
            let ids = if span.is_disabled() {
                server.trace_ids()
            } else {
                None
            };
            let (trace_id, span_id) = ids.unzip();
            if refusal.status().is_server_error() {
                error!(%detail, code = refusal.code(), cause = ?std::error::Error::source(&refusal), trace_id, span_id, "webhook not stored");
            } else {
                warn!(%detail, code = refusal.code(), trace_id, span_id, "webhook refused");
            }
            refusal.into_response()
        }
    };
    let status = response.status();
    server.set_attribute(|| KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if status.is_server_error() {
        server.set_error();
    }
    response
}

/// The webhook routes: Fluent's own path, and the one Fluent Connect's receivers use.
/// Each with its server span's name, `POST <route template>`, written out so that a span costs
/// no allocation for it.
pub(crate) const ROUTES: [(&str, &str); 2] = [
    ("/webhooks/fluent", "POST /webhooks/fluent"),
    (
        "/api/v1/fluent-connect/webhook",
        "POST /api/v1/fluent-connect/webhook",
    ),
];

/// Our route `route` is, with its span name.
fn known_route(route: &str) -> Option<&'static (&'static str, &'static str)> {
    ROUTES.iter().find(|(path, _)| *path == route)
}

/// The server span's name: static for our routes.
fn server_span_name(route: &str) -> Cow<'static, str> {
    match known_route(route) {
        Some((_, name)) => Cow::Borrowed(name),
        None => format!("POST {route}").into(),
    }
}

/// `http.route`: the template, static for our routes.
fn http_route(route: &str) -> Value {
    match known_route(route) {
        Some((path, _)) => Value::from(*path),
        None => Value::from(route.to_owned()),
    }
}

fn answer(id: &str, replay: bool) -> Response {
    let mut body = serde_json::json!({ "status": "accepted", "id": id });
    if replay {
        body["replay"] = true.into();
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// The webhook from its headers to the bus's acknowledgement, within the request deadline
/// (counted from `started`): the body first (408 when it is late), then the publish (503).
async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    server: &OtelSpan,
) -> Result<Accepted, IngestError> {
    let deadline = tokio::time::Instant::from_std(started + state.request_timeout);
    if !is_json(headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let body = tokio::time::timeout_at(deadline, read_body(headers, body, state.body_limit))
        .await
        .map_err(|_| IngestError::BodyTimeout)??;
    // Authenticate before parsing: nothing unverified is even looked at.
    let verified = state.verifier.verify(headers, &body, SystemTime::now())?;
    let event = FluentEvent::parse(&body, &state.required_fields)?;
    let id = event.id.clone().unwrap_or_default();
    let span = Span::current();
    span.record("event_id", id.as_str());
    span.record("order_ref", event.order_ref().unwrap_or_default());
    state.check_allowed(&event)?;
    let seen = replay_ids(verified, headers, &event);
    if state.recent.contains(seen, Instant::now()) {
        return Ok(Accepted::Replay(id));
    }
    // One order's events share a key, so they stay in order on one partition.
    let key = event
        .order_ref()
        .or(event.entity_ref.as_deref())
        .unwrap_or_default();
    let mut record = OutboundRecord {
        key: key.to_owned().into(),
        // The exact bytes received: other consumers of the topic rely on them, and the
        // signature was computed over them.
        payload: body,
        headers: names::record_headers(&event, &rfc3339_now(), &state.cloudevents),
    };
    // The event id and order ref are this span's (`messaging.message.id`, the key): the server
    // span does not repeat them, which is cheaper, and they are in the same trace.
    let send = server.child(
        || format!("send {}", state.destination).into(),
        SpanKind::Producer,
        || {
            vec![
                KeyValue::new("messaging.system", state.messaging_system),
                KeyValue::new("messaging.destination.name", Arc::clone(&state.destination)),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.message.id", id.clone()),
                KeyValue::new("messaging.kafka.message.key", key.to_owned()),
            ]
        },
    );
    // The record carries the producer span's context: the processor continues this trace.
    for (name, value) in send.headers() {
        record.headers.insert(name, value);
    }
    let publishing = Instant::now();
    let published = tokio::time::timeout_at(deadline, state.publisher.publish(record)).await;
    if !matches!(published, Ok(Ok(_))) {
        send.set_error();
    }
    drop(send);
    published
        .map_err(|_| IngestError::Timeout)?
        .map_err(IngestError::not_stored)?;
    state
        .metrics
        .publish_seconds
        .observe(publishing.elapsed().as_secs_f64());
    // Remembered only once stored: a replay of what was never stored must be stored.
    state.recent.insert(seen, Instant::now());
    Ok(Accepted::Published(id))
}

/// The ids a replay of this webhook would repeat: its `webhook-id` only when the HMAC
/// signature covered it (anyone can write the header otherwise), and its event id. A blank id
/// names nothing and is left out.
fn replay_ids<'a>(verified: Verified, headers: &'a HeaderMap, event: &'a FluentEvent) -> Ids<'a> {
    let usable = |id: &&str| !id.trim().is_empty();
    Ids {
        delivery: (verified == Verified::Hmac)
            .then(|| headers.get(crate::signature::HMAC_ID))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .filter(usable),
        event: event.id.as_deref().filter(usable),
    }
}

/// Reads the body whole, refusing at once one whose declared length is above `limit` and, as
/// it arrives, one that turns out longer than it.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(IngestError::TooLarge { limit }),
        Err(error) => Err(IngestError::Body(axum::Error::new(error))),
    }
}

/// Exactly one `Content-Type`, and it is JSON (two would leave it to header order).
fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(only), None) = (types.next(), types.next()) else {
        return false;
    };
    Some(only)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_span_is_named_by_the_route_template() {
        for route in ROUTES.iter().map(|(path, _)| *path).chain(["/elsewhere"]) {
            assert_eq!(server_span_name(route), format!("POST {route}"));
            assert_eq!(http_route(route).as_str(), route);
        }
    }
}
