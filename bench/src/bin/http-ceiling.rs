//! The HTTP ceiling for the ingest benchmark: the same server stack as the gateway (axum on
//! tokio), reading the body and answering 200 at once. `http-ceiling ADDRESS`.

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let app = Router::new().route(
        "/webhooks/fluent",
        post(|body: Bytes| async move {
            axum::Json(serde_json::json!({ "status": "accepted", "bytes": body.len() }))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
