//! The gateway's side of a TCP connection: writes fail once the peer has taken none of our
//! bytes for the write timeout, and closing is staged (lingering close, RFC 9112 §9.6).
//!
//! Both guard against clients the gateway cannot trust before it has checked a signature:
//!
//! - A client that pipelines requests and never reads the answers fills the socket's send
//!   buffer; hyper then waits to write forever, and the connection's slot is never given back.
//!   With `INGEST_MAX_CONNECTIONS` such clients no one else could connect.
//! - When the gateway answers before it has read the whole request (a declared length above the
//!   limit gets its 413 at once) and closes, the kernel resets a connection that still has
//!   unread bytes, and the reset can destroy the answer before the client read it: the client
//!   sees "connection reset" instead of a 413. So on close we send our FIN first, then read and
//!   discard what the client still sends, for a bounded time and number of bytes, and only then
//!   close the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep};

/// Longest a closing connection is read from after our FIN, waiting for the client's.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read and discarded from a closing connection: a client sending a large body it
/// was told to keep is cut off after this much, its answer long delivered.
const LINGER_BYTES: usize = 1 << 20;

/// A stream with a write timeout and a lingering close.
pub(crate) struct GuardedStream<S> {
    inner: S,
    write_timeout: Duration,
    /// Armed when a write or flush could not proceed; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// When bytes were last written: only a recent answer can still be in flight.
    last_write: Option<Instant>,
    /// Set once any bytes were written: the connection has answered a request.
    answered: Arc<AtomicBool>,
    closing: Closing,
}

/// How far the staged close has got.
enum Closing {
    /// Not asked to close.
    Open,
    /// Our FIN is sent; reading until the client's, the deadline or the byte limit.
    Lingering {
        deadline: Pin<Box<Sleep>>,
        read: usize,
    },
    /// Done: the socket may be dropped.
    Closed,
}

impl<S> GuardedStream<S> {
    /// Wraps `inner`; a write that makes no progress for `write_timeout` fails.
    pub(crate) fn new(inner: S, write_timeout: Duration) -> Self {
        Self {
            inner,
            write_timeout,
            stalled: None,
            last_write: None,
            answered: Arc::default(),
            closing: Closing::Open,
        }
    }

    /// Becomes true once the connection has written an answer (or the start of one).
    pub(crate) fn answered(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.answered)
    }

    /// Notes bytes written: a write (not a flush, which hyper calls on every poll).
    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(1..)) = polled {
            self.last_write = Some(Instant::now());
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Passes a finished write through and disarms the stall timer; on `Pending`, arms it and
    /// fails the write once it fires.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took none of our bytes for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedStream<S> {
    /// Reads and discards until the client's FIN, an error, the deadline or the byte limit.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Closing::Lingering { deadline, read } = &mut self.closing else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *read >= LINGER_BYTES {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(()),
                Ok(()) => *read += buf.filled().len(),
                Err(_reset) => return Poll::Ready(()),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    /// hyper calls this once a connection is done (answered and not kept alive, a malformed
    /// head answered, or closed on shutdown): send our FIN, then linger if an answer may still
    /// be on its way (one written within the linger time). Connections that end in a header
    /// timeout or an I/O error are dropped without it, and so are those hyper hands over for an
    /// upgrade: the gateway upgrades none, so those are clients' mistakes, answered and reset.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Closing::Open = this.closing {
            let answered_lately = this
                .last_write
                .is_some_and(|at| at.elapsed() < LINGER_TIMEOUT);
            let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
            ready!(this.guard(cx, polled))?;
            this.closing = if answered_lately {
                Closing::Lingering {
                    deadline: Box::pin(sleep(LINGER_TIMEOUT)),
                    read: 0,
                }
            } else {
                Closing::Closed
            };
        }
        ready!(this.poll_linger(cx));
        this.closing = Closing::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_write_timeout() {
        let (ours, _theirs) = duplex(64);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let error = stream.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_timed_out() {
        let (ours, mut theirs) = duplex(64);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                // Each read comes two seconds after the last: slower than the whole write,
                // never as slow as the timeout.
                tokio::time::sleep(Duration::from_secs(2)).await;
                match theirs.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        stream.write_all(&[7; 1024]).await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        assert_eq!(reader.await.unwrap(), vec![7; 1024]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_reads_what_the_client_still_sends_until_its_fin() {
        let (ours, mut theirs) = duplex(1024);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        let client = tokio::spawn(async move {
            for _ in 0..100 {
                theirs.write_all(&[1; 512]).await.unwrap();
            }
            theirs.shutdown().await.unwrap();
            let mut rest = Vec::new();
            theirs.read_to_end(&mut rest).await.unwrap();
            rest
        });
        stream.write_all(b"answer").await.unwrap();
        // The client's 50 KiB fit nowhere unless closing reads them.
        stream.shutdown().await.unwrap();
        assert!(matches!(stream.closing, Closing::Closed));
        drop(stream);
        assert_eq!(client.await.unwrap(), b"answer");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_without_a_recent_answer_does_not_wait_for_the_client() {
        let (ours, _silent) = duplex(1024);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        // hyper flushes on every poll, and before it shuts down: a flush is no answer.
        stream.flush().await.unwrap();
        let started = tokio::time::Instant::now();
        stream.shutdown().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "never answered");
        let (ours, _silent) = duplex(1024);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        stream.write_all(b"answer").await.unwrap();
        tokio::time::sleep(LINGER_TIMEOUT).await;
        stream.flush().await.unwrap();
        let started = tokio::time::Instant::now();
        stream.shutdown().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "answered long ago");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_gives_up_on_a_client_that_never_stops_sending() {
        let (ours, mut theirs) = duplex(1024);
        let mut stream = GuardedStream::new(ours, Duration::from_secs(3));
        stream.write_all(b"answer").await.unwrap();
        let client = tokio::spawn(async move {
            while theirs.write_all(&[1; 512]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let started = tokio::time::Instant::now();
        stream.shutdown().await.unwrap();
        assert!(
            started.elapsed() <= LINGER_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        drop(stream);
        client.await.unwrap();
    }
}
