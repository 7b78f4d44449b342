//! The admin API: seed orders and settings, read commercetools orders and their update
//! history, and inject faults, over HTTP (for tests and demos running the sandbox as a
//! process; in-process users call the [`Sandbox`] methods directly).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::Sandbox;
use crate::state::{CtOrder, Endpoint, Fault, FluentOrder, Setting};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/admin/fluent/orders", put(put_fluent_order))
        .route("/admin/fluent/settings", put(put_setting))
        .route("/admin/ct/orders", put(put_ct_order))
        .route("/admin/ct/orders/{id}", get(get_ct_order))
        .route("/admin/ct/orders/{id}/bump", post(bump))
        .route("/admin/ct/orders/{id}/conflicts", post(conflicts))
        .route("/admin/faults/{endpoint}", put(put_fault))
        .route("/admin/tokens/revoke", post(revoke))
        .route("/admin/calls", get(calls))
        .with_state(sandbox)
}

async fn put_fluent_order(
    State(sandbox): State<Sandbox>,
    Json(order): Json<FluentOrder>,
) -> StatusCode {
    sandbox.put_fluent_order(order);
    StatusCode::NO_CONTENT
}

async fn put_setting(State(sandbox): State<Sandbox>, Json(setting): Json<Setting>) -> StatusCode {
    sandbox.put_setting(setting);
    StatusCode::NO_CONTENT
}

async fn put_ct_order(State(sandbox): State<Sandbox>, Json(order): Json<CtOrder>) -> Response {
    let id = sandbox.put_ct_order(order);
    Json(json!({ "id": id })).into_response()
}

async fn get_ct_order(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    match sandbox.ct_order(&id) {
        Some(order) => {
            Json(json!({ "order": order, "history": sandbox.history(&id) })).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn bump(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> StatusCode {
    sandbox.bump_version(&id);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Count {
    count: u32,
}

async fn conflicts(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
    Json(count): Json<Count>,
) -> StatusCode {
    sandbox.force_conflicts(&id, count.count);
    StatusCode::NO_CONTENT
}

async fn put_fault(
    State(sandbox): State<Sandbox>,
    Path(endpoint): Path<String>,
    Json(fault): Json<Fault>,
) -> Response {
    match serde_json::from_value::<Endpoint>(json!(endpoint)) {
        Ok(endpoint) => {
            sandbox.set_fault(endpoint, fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => (
            StatusCode::NOT_FOUND,
            "endpoints: fluent-token, fluent-graphql, ct-token, ct-graphql",
        )
            .into_response(),
    }
}

async fn revoke(State(sandbox): State<Sandbox>) -> StatusCode {
    sandbox.revoke_tokens();
    StatusCode::NO_CONTENT
}

async fn calls(State(sandbox): State<Sandbox>) -> Response {
    let endpoints = [
        Endpoint::FluentToken,
        Endpoint::FluentGraphql,
        Endpoint::CtToken,
        Endpoint::CtGraphql,
    ];
    let counts: serde_json::Map<String, serde_json::Value> = endpoints
        .into_iter()
        .map(|endpoint| {
            let name = serde_json::to_value(endpoint).unwrap_or_default();
            (
                name.as_str().unwrap_or_default().to_owned(),
                json!(sandbox.calls(endpoint)),
            )
        })
        .collect();
    Json(counts).into_response()
}
