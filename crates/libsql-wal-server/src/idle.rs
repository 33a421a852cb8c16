//! Connections that go quiet are closed (`--idle-connection-timeout`): a connection with no
//! request being answered, over which nothing went either way for that long (idle between
//! keep-alive requests, never sending a request at all, or trickling a request head in
//! slower than that), ends with a timed-out read. Without this, idle connections hold their
//! descriptors for ever, and the databases run out of them. A request being answered is
//! never cut: hyper keeps reading while a handler runs (to see the client leave), so the
//! connection's service counts its requests in flight and the timer waits for none. A
//! response whose body streams after its handler returned (a cursor's lines, quiet while a
//! step's SQL runs) counts while its body waits for the server's next line, not while the
//! server waits for the client to take one: the body takes an [`InFlight`] for each such
//! wait from the [`Answering`] the service puts in each request's extensions.
//!
//! That leaves a request whose head came but whose body does not: it is in flight, so the
//! connection's timer spares it, while its handler waits for the body holding one of
//! `--max-concurrent-requests`' places. [`timed_body`] bounds that wait where the body is
//! read: quiet for the idle timeout, or not all there within `--body-read-timeout`, and
//! the body fails ([`BodyTimeout`]), which ends the request with 408.

use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt as _;
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

/// Sets `TCP_NODELAY` on each accepted connection, then hands it to `A`. A response written
/// in several pieces (a replication stream's frames, a cursor's lines) would otherwise wait
/// on Nagle's algorithm for the client's delayed ACK: tens of milliseconds per piece.
#[derive(Debug, Clone, Copy)]
pub struct NoDelay<A>(pub A);

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for NoDelay<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = A::Future;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        self.0.accept(stream, service)
    }
}

/// A connection's service, counting the requests it is answering.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    in_flight: Arc<AtomicUsize>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Counted<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let answering = InFlight::start(self.in_flight.clone());
        request.extensions_mut().insert(Answering(self.in_flight.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let _answering = answering;
            response.await
        })
    }
}

/// The count of the requests a connection is answering, as each request's extension: a
/// response body that outlives its handler counts the connection as answering with
/// [`Answering::start`] while it waits for what it sends next.
#[derive(Clone)]
pub struct Answering(Arc<AtomicUsize>);

impl Answering {
    pub fn start(&self) -> InFlight {
        InFlight::start(self.0.clone())
    }
}

/// One request being answered, from its call to its response (or its cancellation), or a
/// streamed body's wait for its next part.
pub struct InFlight(Arc<AtomicUsize>);

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

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimeout {
    /// No byte of it came for the idle timeout.
    Quiet(Duration),
    /// It was not all there within `--body-read-timeout`, however steadily it trickled.
    Whole(Duration),
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyTimeout::Quiet(after) => {
                write!(f, "no byte of the request body came for {after:?} (--idle-connection-timeout)")
            }
            BodyTimeout::Whole(after) => {
                write!(f, "the request body did not all come within {after:?} (--body-read-timeout)")
            }
        }
    }
}

impl std::error::Error for BodyTimeout {}

/// `body`, failing with [`BodyTimeout`] (also recorded in `cut`, for the handler to answer
/// 408 rather than a generic body error) once no chunk came for `quiet_max`, or once
/// `whole_max` has passed since this call before its end. Both are needed: the quiet bound
/// alone lets a byte every `quiet_max` hold a 10 MiB body for years; the whole bound alone
/// would let a body that stopped hold its place until it passed.
pub fn timed_body(body: Body, quiet_max: Duration, whole_max: Duration, cut: Arc<OnceLock<BodyTimeout>>) -> Body {
    let whole_end = Instant::now().checked_add(whole_max);
    let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |data| {
        let cut = cut.clone();
        async move {
            // `None`: the body already failed; the stream ends after its error.
            let mut data = data?;
            let quiet_end = Instant::now().checked_add(quiet_max);
            let (end, why) = match (quiet_end, whole_end) {
                (Some(quiet), Some(whole)) if whole <= quiet => (Some(whole), BodyTimeout::Whole(whole_max)),
                (Some(quiet), _) => (Some(quiet), BodyTimeout::Quiet(quiet_max)),
                (None, Some(whole)) => (Some(whole), BodyTimeout::Whole(whole_max)),
                // Both bounds too far to be represented: no bound.
                (None, None) => (None, BodyTimeout::Whole(whole_max)),
            };
            let next = match end {
                Some(end) => tokio::time::timeout_at(end, data.next()).await,
                None => Ok(data.next().await),
            };
            match next {
                Ok(Some(chunk)) => Some((chunk, Some(data))),
                Ok(None) => None,
                Err(_elapsed) => {
                    let _ = cut.set(why);
                    Some((Err(axum::Error::new(why)), None))
                }
            }
        }
    });
    Body::from_stream(chunks)
}
