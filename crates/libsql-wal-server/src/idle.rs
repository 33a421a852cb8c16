//! Connections that go quiet are closed (`--idle-connection-timeout`): a connection with no
//! request being answered, over which nothing went either way for that long (idle between
//! keep-alive requests, never sending a request at all, or trickling a request head in
//! slower than that), ends with a timed-out read. Without this, idle connections hold their
//! descriptors for ever, and the databases run out of them. A request being answered is
//! never cut: hyper keeps reading while a handler runs (to see the client leave), so the
//! connection's service counts its requests in flight and the timer waits for none.

use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps each accepted connection in an [`IdleStream`] (before TLS, so a stalled handshake
/// is bounded too).
#[derive(Debug, Clone, Copy)]
pub struct IdleAcceptor {
    timeout: Duration,
}

impl IdleAcceptor {
    pub fn new(timeout: Duration) -> Self {
        IdleAcceptor { timeout }
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for IdleAcceptor {
    type Stream = IdleStream<I>;
    type Service = Counted<S>;
    type Future = Ready<io::Result<(IdleStream<I>, Counted<S>)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let quiet = Box::pin(tokio::time::sleep(self.timeout));
        let stream = IdleStream { inner: stream, timeout: self.timeout, quiet, in_flight: in_flight.clone() };
        std::future::ready(Ok((stream, Counted { inner: service, in_flight })))
    }
}

/// A connection's service, counting the requests it is answering.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    in_flight: Arc<AtomicUsize>,
}

impl<S, R> tower_service::Service<R> for Counted<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let answering = InFlight::start(self.in_flight.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let _answering = answering;
            response.await
        })
    }
}

/// One request being answered, from its call to its response (or its cancellation).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection whose reads fail with `TimedOut` once nothing went either way for the
/// timeout while no request was being answered (a request's SQL is bounded by
/// `--max-request-duration`; every byte written counts as activity).
pub struct IdleStream<I> {
    inner: I,
    timeout: Duration,
    quiet: Pin<Box<Sleep>>,
    in_flight: Arc<AtomicUsize>,
}

impl<I> IdleStream<I> {
    fn active(&mut self) {
        self.quiet.as_mut().reset(Instant::now() + self.timeout);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleStream<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending => {
                while this.quiet.as_mut().poll(cx).is_ready() {
                    if this.in_flight.load(Ordering::SeqCst) == 0 {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")));
                    }
                    // Answering a request: not idle; look again a timeout later.
                    this.active();
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleStream<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
