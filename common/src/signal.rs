//! Shutdown on the signals orchestrators and people send.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGTERM (how orchestrators stop a process) or Ctrl-C; the binaries
/// pass the token down so every part drains in its own way.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler, Ctrl-C still works; SIGTERM then kills without a drain.
        tracing::warn!("cannot install a SIGTERM handler");
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}
