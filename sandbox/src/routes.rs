//! The simulated API endpoints: both token endpoints and both GraphQL endpoints, each behind
//! the injected faults of its endpoint.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::Sandbox;
use crate::graphql::{FieldError, RootField};
use crate::state::{CtOrder, Endpoint, FaultBody, State as Data, TokenApi, Update};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/fluent/oauth/token", post(fluent_token))
        .route("/fluent/graphql", post(fluent_graphql))
        .route("/ct/oauth/token", post(ct_token))
        .route("/ct/{project}/graphql", post(ct_graphql))
        .with_state(sandbox)
}

#[derive(Deserialize)]
struct GraphQlRequest {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
}

/// An `updateOrder` call being answered (from arrival, before any injected latency, to the
/// answer), counted per order so that two writers of one order at once show.
struct UpdateInFlight {
    sandbox: Sandbox,
    id: String,
}

impl UpdateInFlight {
    fn enter(sandbox: &Sandbox, request: &GraphQlRequest) -> Option<Self> {
        if !request.query.contains("updateOrder") {
            return None;
        }
        let id = request.variables.as_ref()?.get("id")?.as_str()?.to_owned();
        let mut state = sandbox.state();
        let in_flight = state.updates_in_flight.entry(id.clone()).or_default();
        *in_flight += 1;
        if *in_flight > 1 {
            state.overlapping_updates += 1;
        }
        Some(Self {
            sandbox: sandbox.clone(),
            id,
        })
    }
}

impl Drop for UpdateInFlight {
    fn drop(&mut self) {
        let mut state = self.sandbox.state();
        if let Some(in_flight) = state.updates_in_flight.get_mut(&self.id) {
            *in_flight -= 1;
            if *in_flight == 0 {
                state.updates_in_flight.remove(&self.id);
            }
        }
    }
}

/// Counts the call, waits the injected latency, and answers the injected error if one is due.
/// Keeps the W3C `traceparent` a call carried (the latest few hundred per endpoint), so tests
/// can see that the caller propagates its trace to the APIs, as the real ones would log.
fn note_traceparent(sandbox: &Sandbox, endpoint: Endpoint, headers: &HeaderMap) {
    const KEPT: usize = 500;
    let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let mut state = sandbox.state();
    let seen = state.traceparents.entry(endpoint).or_default();
    if seen.len() == KEPT {
        seen.remove(0);
    }
    seen.push(value.to_owned());
}

async fn fault(sandbox: &Sandbox, endpoint: Endpoint) -> Option<Response> {
    let (latency, status, body) = {
        let mut state = sandbox.state();
        *state.calls.entry(endpoint).or_default() += 1;
        let fault = state.faults.entry(endpoint).or_default();
        let fail = if fault.fail_next > 0 {
            fault.fail_next -= 1;
            true
        } else {
            fault.error_rate > 0.0 && fastrand::f64() < fault.error_rate
        };
        (
            fault.latency_ms,
            fail.then(|| fault.status.unwrap_or(503)),
            fault.body,
        )
    };
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let status = StatusCode::from_u16(status?).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error_body(status, body).into_response();
    *response.status_mut() = status;
    // Like the real APIs, only throttling and maintenance answers say when to come back.
    if matches!(status.as_u16(), 429 | 503) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Some(response)
}

/// An injected error's body in one of the shapes real answers come in.
fn error_body(status: StatusCode, body: FaultBody) -> Response {
    let body = match body {
        FaultBody::Any => [
            FaultBody::Graphql,
            FaultBody::Rest,
            FaultBody::Html,
            FaultBody::Empty,
        ][fastrand::usize(..4)],
        other => other,
    };
    let reason = status.canonical_reason().unwrap_or("Error");
    match body {
        FaultBody::Graphql | FaultBody::Any => {
            Json(json!({ "errors": [{ "message": reason }] })).into_response()
        }
        FaultBody::Rest => {
            let code = match status.as_u16() {
                429 | 503 => "OverCapacity",
                502 | 504 => "ServiceUnavailable",
                _ => "General",
            };
            Json(json!({
                "statusCode": status.as_u16(),
                "message": reason,
                "errors": [{ "code": code, "message": reason }],
            }))
            .into_response()
        }
        FaultBody::Html => (
            [(header::CONTENT_TYPE, "text/html")],
            format!(
                "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
                 <center><h1>{code} {reason}</h1></center>\r\n</body>\r\n</html>\r\n",
                code = status.as_u16()
            ),
        )
            .into_response(),
        FaultBody::Empty => ().into_response(),
    }
}

fn issue_token(sandbox: &Sandbox, api: TokenApi, scope: &str) -> Response {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut state = sandbox.state();
    let lifetime = state.token_lifetime;
    state
        .tokens
        .insert(token.clone(), (api, Instant::now() + lifetime));
    Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime.as_secs(),
        "scope": scope,
    }))
    .into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": error })),
    )
        .into_response()
}

/// Whether the request carries a live token issued for `api`.
fn authorized(sandbox: &Sandbox, headers: &HeaderMap, api: TokenApi) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let state = sandbox.state();
    state
        .tokens
        .get(token.trim())
        .is_some_and(|(issued_for, expires)| *issued_for == api && Instant::now() < *expires)
}

fn unauthorized() -> Response {
    let body = json!({ "statusCode": 401, "message": "invalid_token",
        "errors": [{ "code": "invalid_token", "message": "invalid_token" }] });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

async fn fluent_token(
    State(sandbox): State<Sandbox>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(response) = fault(&sandbox, Endpoint::FluentToken).await {
        return response;
    }
    let config = sandbox.config();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("client_id") != config.fluent_client_id
        || field("client_secret") != config.fluent_client_secret
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if field("grant_type") != "password"
        || field("username") != config.fluent_username
        || field("password") != config.fluent_password
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    issue_token(&sandbox, TokenApi::Fluent, "api")
}

async fn ct_token(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(response) = fault(&sandbox, Endpoint::CtToken).await {
        return response;
    }
    let config = sandbox.config();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let expected = format!("{}:{}", config.ct_client_id, config.ct_client_secret);
    if basic.as_deref() != Some(expected.as_str()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    issue_token(&sandbox, TokenApi::Commercetools, &scope)
}

async fn fluent_graphql(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Json(request): Json<GraphQlRequest>,
) -> Response {
    note_traceparent(&sandbox, Endpoint::FluentGraphql, &headers);
    if let Some(response) = fault(&sandbox, Endpoint::FluentGraphql).await {
        return response;
    }
    if !authorized(&sandbox, &headers, TokenApi::Fluent) {
        return unauthorized();
    }
    let variables = request.variables.unwrap_or_default();
    let response = {
        let state = sandbox.state();
        let schema = &sandbox.0.fluent_schema;
        sandbox
            .0
            .fluent_documents
            .execute(schema, &request.query, &variables, |root| {
                resolve_fluent(&state, &root)
            })
    };
    let status = if response.invalid {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, Json(response.body)).into_response()
}

async fn ct_graphql(
    State(sandbox): State<Sandbox>,
    Path(project): Path<String>,
    headers: HeaderMap,
    Json(request): Json<GraphQlRequest>,
) -> Response {
    let _in_flight = UpdateInFlight::enter(&sandbox, &request);
    note_traceparent(&sandbox, Endpoint::CtGraphql, &headers);
    if let Some(response) = fault(&sandbox, Endpoint::CtGraphql).await {
        return response;
    }
    if !authorized(&sandbox, &headers, TokenApi::Commercetools) {
        return unauthorized();
    }
    if project != sandbox.config().project_key {
        let body = json!({ "statusCode": 404, "message": format!("project {project} not found") });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let variables = request.variables.unwrap_or_default();
    let response = {
        let mut state = sandbox.state();
        state.correlation_id = headers
            .get("x-correlation-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let schema = &sandbox.0.ct_schema;
        sandbox
            .0
            .ct_documents
            .execute(schema, &request.query, &variables, |root| {
                resolve_commercetools(&mut state, &root)
            })
    };
    let conflict = response.body["errors"].as_array().is_some_and(|errors| {
        errors
            .iter()
            .any(|e| e["extensions"]["code"] == "ConcurrentModification")
    });
    // commercetools answers a version conflict with 409 (and other codes with 200 or 400):
    // clients must read the code, not the status.
    let status = if response.invalid {
        StatusCode::BAD_REQUEST
    } else if conflict {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    (status, Json(response.body)).into_response()
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    value?.as_array().map(|list| {
        list.iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect()
    })
}

fn resolve_fluent(state: &Data, root: &RootField<'_>) -> Result<Value, FieldError> {
    match root.name {
        "order" => {
            let by_ref = root.arguments.get("ref").and_then(Value::as_str);
            let by_id = root.arguments.get("id").and_then(Value::as_str);
            let order = state.fluent_orders.values().find(|order| {
                by_ref.is_some_and(|r| r == order.order_ref) || by_id.is_some_and(|i| i == order.id)
            });
            Ok(order.map_or(Value::Null, |order| {
                json!({
                    "id": order.id, "ref": order.order_ref, "type": order.order_type,
                    "status": order.status,
                    "retailer": { "id": order.retailer_id, "ref": format!("retailer-{}", order.retailer_id) },
                    "attributes": order.attributes,
                })
            }))
        }
        "settings" => {
            let names = strings(root.arguments.get("name"));
            let contexts = strings(root.arguments.get("context"));
            let ids = strings(root.arguments.get("contextId"));
            let edges: Vec<Value> = state
                .settings
                .iter()
                .enumerate()
                .filter(|(_, s)| names.as_ref().is_none_or(|n| n.contains(&s.name)))
                .filter(|(_, s)| contexts.as_ref().is_none_or(|c| c.contains(&s.context)))
                .filter(|(_, s)| ids.as_ref().is_none_or(|i| i.contains(&s.context_id.to_string())))
                .map(|(index, s)| {
                    json!({ "cursor": index.to_string(), "node": {
                        "id": index.to_string(), "name": s.name, "valueType": if s.lob_value.is_some() { "JSON" } else { "STRING" },
                        "lobValue": s.lob_value, "value": s.value,
                        "context": s.context, "contextId": s.context_id,
                    }})
                })
                .collect();
            Ok(json!({ "edges": edges }))
        }
        other => Err(FieldError::coded(
            "NOT_SUPPORTED",
            format!("the sandbox does not serve {other}"),
        )),
    }
}

fn order_json(order: &CtOrder) -> Value {
    let raw: Vec<Value> = order
        .custom
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    json!({
        "id": order.id, "version": order.version, "orderNumber": order.order_number,
        "orderState": order.order_state, "paymentState": order.payment_state,
        "shipmentState": order.shipment_state,
        "custom": { "customFieldsRaw": raw },
    })
}

fn find_ct<'a>(state: &'a mut Data, root: &RootField<'_>) -> Option<&'a mut CtOrder> {
    let by_id = root
        .arguments
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let by_number = root
        .arguments
        .get("orderNumber")
        .and_then(Value::as_str)
        .map(str::to_owned);
    state.ct_orders.values_mut().find(|order| {
        by_id.as_deref().is_some_and(|id| id == order.id)
            || by_number
                .as_deref()
                .is_some_and(|n| Some(n) == order.order_number.as_deref())
    })
}

fn resolve_commercetools(state: &mut Data, root: &RootField<'_>) -> Result<Value, FieldError> {
    match (root.mutation, root.name) {
        (false, "order") => Ok(find_ct(state, root).map_or(Value::Null, |order| order_json(order))),
        (true, "updateOrder") => update_order(state, root),
        (_, other) => Err(FieldError::coded(
            "NOT_SUPPORTED",
            format!("the sandbox does not serve {other}"),
        )),
    }
}

fn conflict(current: u64, given: u64) -> FieldError {
    FieldError {
        message: format!(
            "Object has a different version than expected. Expected: {given} - Actual: {current}."
        ),
        extensions: json!({ "code": "ConcurrentModification", "currentVersion": current }),
    }
}

fn update_order(state: &mut Data, root: &RootField<'_>) -> Result<Value, FieldError> {
    let version = root
        .arguments
        .get("version")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    let Some(id) = find_ct(state, root).map(|order| order.id.clone()) else {
        return Err(FieldError::coded(
            "ResourceNotFound",
            "The Resource was not found.",
        ));
    };
    if let Some(left) = state.forced_conflicts.get_mut(&id)
        && *left > 0
    {
        *left -= 1;
        let order = state.ct_orders.get_mut(&id).expect("found above");
        order.version += 1;
        return Err(conflict(order.version, version));
    }
    let at_ms = state.elapsed_ms();
    let order = state.ct_orders.get_mut(&id).expect("found above");
    if order.version != version {
        return Err(conflict(order.version, version));
    }
    let actions = root
        .arguments
        .get("actions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut next = order.clone();
    for action in &actions {
        let Some((kind, body)) = action
            .as_object()
            .and_then(|o| (o.len() == 1).then(|| o.iter().next()).flatten())
        else {
            return Err(FieldError::coded(
                "InvalidInput",
                "each update action sets exactly one action field",
            ));
        };
        match kind.as_str() {
            "changeOrderState" => {
                next.order_state = body["orderState"].as_str().unwrap_or_default().to_owned();
            }
            "changePaymentState" => {
                next.payment_state = body["paymentState"].as_str().map(str::to_owned);
            }
            "changeShipmentState" => {
                next.shipment_state = body["shipmentState"].as_str().map(str::to_owned);
            }
            "setCustomField" => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                match body["value"].as_str() {
                    Some(text) => {
                        let value = serde_json::from_str(text).map_err(|_| {
                            FieldError::coded(
                                "InvalidInput",
                                format!("custom field value is not JSON: {text}"),
                            )
                        })?;
                        next.custom.insert(name, value);
                    }
                    None => {
                        next.custom.remove(&name);
                    }
                }
            }
            other => {
                return Err(FieldError::coded(
                    "InvalidInput",
                    format!("unsupported action {other}"),
                ));
            }
        }
    }
    next.version += 1;
    let update = Update {
        version: next.version,
        order_state: next.order_state.clone(),
        payment_state: next.payment_state.clone(),
        shipment_state: next.shipment_state.clone(),
        actions: actions.len(),
        at_ms,
        correlation_id: state.correlation_id.clone(),
    };
    *order = next;
    let result = order_json(order);
    state.history.entry(id).or_default().push(update);
    Ok(result)
}
