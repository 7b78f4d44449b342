//! The sandbox as a process: both simulated APIs and the admin API on `SANDBOX_LISTEN`
//! (default `127.0.0.1:8090`), until SIGTERM or Ctrl-C. `SANDBOX_SEED_MAPPING=documented`
//! seeds Fluent's documented status mapping (the three account settings) at start.

use anyhow::Context as _;
use sandbox::{Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::var("SANDBOX_LISTEN").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on SANDBOX_LISTEN={address}"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::signal::cancel_on_signal(shutdown.clone()));
    tracing_subscriber::fmt().with_env_filter("info").init();
    tracing::info!(%address, "sandbox serving /fluent, /ct and /admin");
    let sandbox = Sandbox::new(SandboxConfig::default());
    match std::env::var("SANDBOX_SEED_MAPPING").as_deref() {
        Ok("documented") => sandbox.put_account_settings(&sandbox::seed::documented_mapping()),
        Ok("") | Err(_) => {}
        Ok(other) => anyhow::bail!("SANDBOX_SEED_MAPPING={other}: only `documented` is known"),
    }
    sandbox.serve(listener, shutdown).await?;
    Ok(())
}
