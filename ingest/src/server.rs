//! The HTTP/1.1 server in front of the routes: a bounded number of connections, each with a
//! deadline for its request headers and for idling between requests, a write timeout and a
//! lingering close (`stream`), and a graceful drain.
//!
//! `axum::serve` has neither bound, and the gateway faces the internet before any signature
//! is checked: a client that opens connections and sends nothing, or sends its headers a byte
//! at a time, would otherwise hold a task, a socket and memory for as long as it likes. Beyond
//! `INGEST_MAX_CONNECTIONS` new connections wait in the kernel's listen backlog until one
//! closes, and when one does wait every open connection is asked to close once idle: a client
//! holding all slots with keep-alive requests cannot keep newcomers out. The body and the rest
//! of the request have their own deadline (`webhook`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::stream::GuardedStream;

/// hyper's own limit on a request head's bytes, a backstop behind the gateway's (`HEADER_BYTES`,
/// `HEADER_COUNT` in `app`), which answer in JSON; hyper's default of 100 headers is the other
/// (setting any count makes hyper allocate its header table on every request: 5-10 µs of CPU
/// per webhook, measured with `./scripts/bench ingest`). A head beyond these is refused by
/// hyper itself, with a bare 431 and the connection closed.
const HEAD_BUFFER_BYTES: usize = 64 * 1024;

/// How long to wait before accepting again after `accept` failed (out of file descriptors,
/// say): long enough not to spin, short enough not to be noticed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The server's limits.
pub(crate) struct Limits {
    /// Open connections at most.
    pub(crate) max_connections: usize,
    /// Longest a request's headers may take to arrive, and a connection may idle.
    pub(crate) header_timeout: Duration,
    /// Longest a connection may take none of an answer's bytes before it is closed.
    pub(crate) write_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    pub(crate) drain_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// open requests finish within the drain deadline and closes idle connections.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let saturated = Arc::new(Notify::new());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HEAD_BUFFER_BYTES);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                // Someone waits and every slot is taken: idle keep-alive connections give
                // theirs up (as nginx does), so newcomers get a turn however busy the holders
                // keep their connections. Until then this one waits, and the rest in the
                // kernel's backlog behind it.
                saturated.notify_waiters();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_closed) => break,
                    },
                }
            }
        };
        // Answers are small and sent whole: don't let Nagle hold them for the peer's ACK.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        let stream = GuardedStream::new(stream, limits.write_timeout);
        let answered = stream.answered();
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let (shutdown, saturated) = (shutdown.clone(), Arc::clone(&saturated));
        tokio::spawn(async move {
            serve_connection(connection, &shutdown, &saturated, &answered).await;
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all connections done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            timeout = ?limits.drain_timeout,
            "in-flight requests did not finish before the shutdown deadline"
        );
    }
}

/// One client connection as hyper serves it.
type Connection = http1::Connection<TokioIo<GuardedStream<TcpStream>>, TowerToHyperService<Router>>;

/// Drives one connection to its end. On shutdown, or when the server runs out of connection
/// slots, it is asked to close: at once when idle, after its answer when a request is open.
/// Out of slots, a connection that has answered nothing yet is left alone: hyper would close
/// it unanswered, and a client does not retry a request on a fresh connection.
async fn serve_connection(
    connection: Connection,
    shutdown: &CancellationToken,
    saturated: &Notify,
    answered: &AtomicBool,
) {
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    // Timeouts, resets and malformed heads: the client's problem, not ours.
                    debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => closing = true,
            () = saturated.notified(), if !closing => {
                closing = answered.load(Ordering::Relaxed);
            }
        }
        if closing {
            // Turns keep-alive off: an idle connection closes, a busy one after its answer.
            connection.as_mut().graceful_shutdown();
        }
    }
}
