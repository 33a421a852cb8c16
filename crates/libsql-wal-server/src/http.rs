//! The HTTP face: routes, the namespace of a request, and the Hrana endpoints. A handler
//! parses, picks the stream (new, or the one behind the baton), runs the requests on a
//! blocking thread, and answers; SQLite is never called on an async thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, FromRequest, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde::Serialize;

use crate::auth::{Access, Refusal};
use crate::batons::{self, Client, Full, Room, Slot};
use crate::databases::{DEFAULT_NAMESPACE, Deadline, check_namespace};
use crate::hrana::proto::{self, CursorRequest, CursorResponse, PipelineRequest, PipelineResponse, StreamRequest};
use crate::hrana::stmt::Version;
use crate::hrana::stream::Stream;
use crate::idle::Answering;
use crate::server::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    let body_max = shared.limits.body_bytes_max;
    let hrana = Router::new()
        .route("/v2/pipeline", post(pipeline_v2))
        .route("/v3/pipeline", post(pipeline_v3))
        .route("/v3/cursor", post(cursor))
        .route("/dev/{namespace}/v2/pipeline", post(dev_pipeline_v2))
        .route("/dev/{namespace}/v3/pipeline", post(dev_pipeline_v3))
        .route("/dev/{namespace}/v3/cursor", post(dev_cursor))
        // Embedded replicas (`syncUrl`): pull; a push is refused (crate::sync).
        .route("/info", get(crate::sync::info_default))
        .route("/export/{generation}", get(crate::sync::export_default))
        .route("/sync/{generation}/{start}/{end}", get(crate::sync::pull_default).post(crate::sync::push))
        .route("/sync/{generation}/{start}/{end}/{baton}", post(crate::sync::push))
        .route("/dev/{namespace}/info", get(crate::sync::info_dev))
        .route("/dev/{namespace}/export/{generation}", get(crate::sync::export_dev))
        .route("/dev/{namespace}/sync/{generation}/{start}/{end}", get(crate::sync::pull_dev).post(crate::sync::push))
        .route("/dev/{namespace}/sync/{generation}/{start}/{end}/{baton}", post(crate::sync::push))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), admit))
        .layer(DefaultBodyLimit::max(body_max));
    Router::new()
        // As sqld: an empty 200; its name and version as plain text; the same greeting for
        // either version check.
        .route("/health", get(|| async { "" }))
        .route("/version", get(|| async { concat!("libsql-wal-server ", env!("CARGO_PKG_VERSION")) }))
        // Version checks: JSON only. A client that asks for `v3-protobuf` gets 404 and
        // falls back (libSQL's clients do), so no protobuf route is offered half-done.
        .route("/v2", get(|| async { HRANA_GREETING }))
        .route("/v3", get(|| async { HRANA_GREETING }))
        .merge(hrana)
        .route("/replication/v1/image", get(crate::replication::image))
        .route("/replication/v1/frames", get(crate::replication::frames))
        .route("/replication/v1/ack", post(crate::replication::ack))
        .route("/metrics", get(crate::metrics::render))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(shared)
}

/// What sqld answers `GET /v2` and `GET /v3` with.
const HRANA_GREETING: &str = "Hello, this is HTTP API v2 (Hrana over HTTP)";

/// At most `concurrent_requests_max` Hrana requests run at once; the next wait in line up
/// to `request_queue_timeout`, then get 503. Bounds threads and open connections under load.
async fn admit(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let permit = tokio::time::timeout(shared.limits.request_queue_timeout, shared.requests.acquire()).await;
    match permit {
        Ok(Ok(_permit)) => next.run(request).await,
        _ => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_BUSY",
            format!(
                "{} requests are running and this one waited {:?} (--max-concurrent-requests); retry later",
                shared.limits.concurrent_requests_max, shared.limits.request_queue_timeout
            ),
        )
        .into_response(),
    }
}

/// An error that ends the request (not a statement's error, which is a result): a JSON
/// `{"message", "code"}`, or for a protocol error the message alone as plain text.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    error: proto::Error,
    plain: bool,
    /// Say `Connection: close` (HTTP/1): the connection ends after this answer.
    closing: bool,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            error: proto::Error { message: message.into(), code: code.into() },
            plain: false,
            closing: false,
        }
    }

    /// A request the protocol does not allow: 400 with the reason as plain text, sqld's form
    /// (its `ProtocolError`s), which libSQL's clients show as the error's message.
    pub fn protocol(why: impl std::fmt::Display) -> Self {
        HttpError { plain: true, ..HttpError::new(StatusCode::BAD_REQUEST, "PROTOCOL_ERROR", why.to_string()) }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = if self.plain {
            (self.status, [(header::CONTENT_TYPE, "text/plain")], self.error.message).into_response()
        } else {
            (self.status, json_body(&self.error)).into_response()
        };
        if self.closing {
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}

fn json_body<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the response: {e}")).into_response(),
    }
}

/// The namespace a request is for, as libSQL's server chooses it: on `/dev/<namespace>/…`
/// the path alone; else the `x-namespace` header, else the host's first label
/// (`db.example.com` → `db`; not for an IP address or a one-label host, and not with
/// `--no-host-namespaces`), else `default`.
pub(crate) fn namespace(shared: &Shared, headers: &HeaderMap, from_path: Option<&str>) -> Result<String, HttpError> {
    let chosen = if let Some(name) = from_path {
        Some(name.to_string())
    } else if let Some(value) = headers.get("x-namespace") {
        Some(value.to_str().map_err(|_| invalid_namespace("the x-namespace header is not text"))?.to_string())
    } else if shared.host_namespaces {
        // Host names are case-insensitive: `Foo.example.com` is `foo.example.com`.
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(first_label).map(str::to_ascii_lowercase)
    } else {
        None
    };
    let namespace = chosen.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    check_namespace(&namespace).map_err(invalid_namespace)?;
    Ok(namespace)
}

fn first_label(host: &str) -> Option<&str> {
    // `[::1]:8080`, `127.0.0.1:8080`: addresses, not names.
    if host.starts_with('[') {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    name.split_once('.').map(|(label, _)| label).filter(|label| !label.is_empty())
}

/// What the request's credentials grant on `namespace` (401 or 403 if nothing).
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap, namespace: &str) -> Result<Access, HttpError> {
    shared.auth.check(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), namespace).map_err(|refusal| {
        match refusal {
            Refusal::Unauthorized(why) => HttpError::new(StatusCode::UNAUTHORIZED, "AUTH_UNAUTHORIZED", why),
            Refusal::Forbidden(why) => HttpError::new(StatusCode::FORBIDDEN, "AUTH_FORBIDDEN", why),
        }
    })
}

fn invalid_namespace(why: impl std::fmt::Display) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, "NAMESPACE_INVALID", format!("invalid namespace: {why}"))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::protocol(format!("Cannot deserialize client message from JSON: {e}")))
}

/// Whether `baton` has the form of the batons we give (32 hex digits): one that does not
/// is sqld's "invalid baton"; one that does but names no open stream was used, expired or
/// closed, which our table cannot tell apart: `STREAM_EXPIRED`, the one of those a correct
/// client can meet.
fn well_formed(baton: &str) -> bool {
    baton.len() == 32 && baton.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Hrana request's body, at most `--max-body-bytes` long. Beyond that: 413 with the JSON
/// error body of every other refusal, code `BODY_TOO_LARGE` (axum's own rejection is plain
/// text; libSQL's server sets no bound at all, so there is no code of its to follow). A
/// body that stops coming or trickles in too long ([`crate::idle::timed_body`]): 408
/// `BODY_TIMEOUT`, and on HTTP/1 the connection closes (the rest of that body, which
/// would have to be read before a next request, may never come).
pub struct HranaBody(Bytes);

impl FromRequest<Arc<Shared>> for HranaBody {
    type Rejection = HttpError;

    async fn from_request(request: axum::extract::Request, shared: &Arc<Shared>) -> Result<Self, HttpError> {
        let cut = Arc::new(std::sync::OnceLock::new());
        let http1 = request.version() <= axum::http::Version::HTTP_11;
        let limits = &shared.limits;
        let request = request.map(|body| {
            crate::idle::timed_body(body, limits.idle_connection_timeout, limits.body_read_timeout, cut.clone())
        });
        match Bytes::from_request(request, shared).await {
            Ok(body) => Ok(HranaBody(body)),
            Err(_) if let Some(why) = cut.get() => Err(HttpError {
                closing: http1,
                ..HttpError::new(StatusCode::REQUEST_TIMEOUT, "BODY_TIMEOUT", why.to_string())
            }),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!("the request body is over {} bytes (--max-body-bytes)", shared.limits.body_bytes_max),
            )),
            Err(rejection) => Err(HttpError::new(
                rejection.status(),
                "PROTOCOL_ERROR",
                format!("cannot read the request body: {}", rejection.body_text()),
            )),
        }
    }
}

fn stream_expired() -> HttpError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "STREAM_EXPIRED",
        "The stream has expired due to inactivity, or its baton was already used or never given",
    )
}

fn too_many_streams(limits: &crate::Limits, full: Full) -> HttpError {
    match full {
        Full::Server => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STREAMS_EXHAUSTED",
            format!("The server holds its limit of {} open streams (--max-batons); retry later", limits.batons_max),
        ),
        // Not the server's state but this client's own doing: 429, so that it is not
        // taken for an overloaded server.
        Full::Client => HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "CLIENT_STREAMS_EXHAUSTED",
            format!(
                "This client holds its limit of {} open streams (--max-batons-per-client); close the streams \
                 it no longer uses (a pipeline ending with `close`), or retry once they expire (--baton-timeout)",
                limits.batons_per_client_max
            ),
        ),
    }
}

/// Who a request comes from, as `--max-batons-per-client` counts: its JWT when JWTs are
/// the credentials (each client may have its own), else its peer's address (a shared
/// token is everyone's).
fn client_of(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> Client {
    match shared.auth.client_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Some(token) => Client::Token(std::hash::BuildHasher::hash_one(&shared.client_keys, token)),
        None => Client::address(peer.ip()),
    }
}

/// The stream a request runs on: the one behind its baton, or a new one opened by
/// `client`; with its place under `--max-batons` (and `client`'s quota) if it may be kept
/// (taken atomically with the check: see [`batons::Batons::reserve`]).
fn stream_for<'a>(
    shared: &'a Shared,
    baton: Option<&str>,
    namespace: &str,
    access: Access,
    client: Client,
    needs_room: bool,
) -> Result<(Slot, Option<Room<'a>>), HttpError> {
    match baton {
        Some(baton) if !well_formed(baton) => Err(HttpError::protocol("Received an invalid baton")),
        Some(baton) => {
            let (slot, room) = shared.batons.take(baton).ok_or_else(stream_expired)?;
            Ok((slot, Some(room)))
        }
        None => {
            let room = if needs_room {
                Some(shared.batons.reserve(client).map_err(|full| too_many_streams(&shared.limits, full))?)
            } else {
                None
            };
            Ok((batons::new_slot(Stream::new(namespace.to_string(), access == Access::ReadOnly)), room))
        }
    }
}

async fn dev_pipeline_v2(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_pipeline(shared, headers, peer, Some(ns), Version::Hrana2, body).await
}

async fn dev_pipeline_v3(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_pipeline(shared, headers, peer, Some(ns), Version::Hrana3, body).await
}

async fn pipeline_v2(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_pipeline(shared, headers, peer, None, Version::Hrana2, body).await
}

async fn pipeline_v3(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_pipeline(shared, headers, peer, None, Version::Hrana3, body).await
}

async fn run_pipeline(
    shared: Arc<Shared>,
    headers: HeaderMap,
    peer: SocketAddr,
    path_ns: Option<String>,
    version: Version,
    body: Bytes,
) -> Result<Response, HttpError> {
    let namespace = namespace(&shared, &headers, path_ns.as_deref())?;
    let access = authorize(&shared, &headers, &namespace)?;
    let request: PipelineRequest = parse(&body)?;
    if let Some(frame_no) = crate::read_your_writes::wanted(&headers)? {
        crate::read_your_writes::wait(&shared, &namespace, frame_no).await?;
    }
    // A pipeline that ends by closing its stream never needs a baton.
    let closes = matches!(request.requests.last(), Some(StreamRequest::Close));
    let client = client_of(&shared, &headers, peer);
    let (slot, room) = stream_for(&shared, request.baton.as_deref(), &namespace, access, client, !closes)?;
    let mut held = slot.clone().lock_owned().await;
    if let Err(e) = check_stream(&held, &namespace, access) {
        // The baton is used up: end its stream (rolling back) off the async threads.
        end_stream(&shared, held.stream.take()).await;
        return Err(e);
    }
    let worker = shared.clone();
    let namespace_ = namespace.clone();
    // Dropped with this request if its client goes away: the SQL stops, the stream ends.
    let client_gone =
        StopIfClientLeaves { deadline: held.stream.as_ref().map(Stream::deadline), stop: Deadline::cancel };
    let (held, results, open, durable, frame_no) = tokio::task::spawn_blocking(move || {
        let namespace = namespace_;
        let Some(stream) = held.stream.as_mut() else { return (held, Ok(Vec::new()), false, Ok(()), None) };
        // The first request the protocol refuses ends the pipeline (and, below, the stream).
        // `--max-response-bytes` bounds the whole response, not each result: every request
        // runs within what the results before it left (RESPONSE_TOO_LARGE past it).
        let mut left = worker.limits.response_bytes_max;
        let results: Result<Vec<_>, _> = request
            .requests
            .into_iter()
            .map(|r| {
                let limits = crate::limits::Limits { response_bytes_max: left.max(1), ..worker.limits.clone() };
                let result = stream.handle(r, version, &worker.dbs, &limits);
                if let Ok(result) = &result {
                    left = left.saturating_sub(encoded_len(result));
                }
                result
            })
            .collect();
        // Nobody would learn the next baton of a stream whose client left: end it now
        // (rolling back) rather than at its expiry.
        let cancelled = stream.deadline().is_cancelled();
        let open = !stream.is_closed() && results.is_ok() && !cancelled;
        held.idle_since = std::time::Instant::now();
        // Where the namespace is now: at or past this pipeline's own commits.
        let frame_no = crate::read_your_writes::frame_no_now(&worker, &namespace);
        if !open && let Some(stream) = held.stream.take() {
            stream.end(&worker.dbs);
        }
        let durable = if results.is_ok() { worker.wait_durable(&namespace) } else { Ok(()) };
        (held, results, open, durable, frame_no)
    })
    .await
    .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("the request failed: {e}")))?;
    client_gone.disarm();
    let results = results.map_err(HttpError::protocol)?;
    if let Err(why) = durable {
        drop(held);
        if open {
            // The client learns nothing of this stream's fate but the error: end it.
            end_stream(&shared, slot.lock().await.stream.take()).await;
        }
        return Err(not_acknowledged(shared.ack, why));
    }
    if held.stream.is_none() && open {
        return Err(stream_expired());
    }
    drop(held);
    let baton = if open { Some(keep(&shared, slot, room, client).await?) } else { None };
    let mut response = json_body(&PipelineResponse { baton, base_url: None, results });
    if let Some(frame_no) = frame_no {
        let (name, value) = crate::read_your_writes::header(frame_no);
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// A baton's stream serves only its own namespace, and only credentials granting what the
/// stream was opened with (a read-only token cannot take over a read-write stream).
fn check_stream(held: &batons::Held, namespace: &str, access: Access) -> Result<(), HttpError> {
    match &held.stream {
        Some(stream) if stream.namespace() != namespace => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "NAMESPACE_MISMATCH",
            format!("the baton belongs to a stream of namespace {}, not {namespace}", stream.namespace()),
        )),
        Some(stream) if stream.read_only() != (access == Access::ReadOnly) => Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "AUTH_FORBIDDEN",
            "the baton belongs to a stream opened with other credentials",
        )),
        _ => Ok(()),
    }
}

fn not_acknowledged(ack: crate::server::Ack, why: String) -> HttpError {
    match ack {
        crate::server::Ack::Replicas { .. } => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REPLICAS_NOT_ACKED",
            format!("the commit is in the primary's log but not known held by enough replicas (--ack replicas): {why}"),
        ),
        _ => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_DURABLE",
            format!("the commit is in the local log but not known durable in storage (--ack durable): {why}"),
        ),
    }
}

/// Keeps the stream for its next request in its place under `--max-batons` (one is taken
/// now, for `client`, if the request had none: a pipeline ending in `close` whose stream
/// stayed open), or ends it if there is no place or no baton can be made.
async fn keep(shared: &Arc<Shared>, slot: Slot, room: Option<Room<'_>>, client: Client) -> Result<String, HttpError> {
    let room = match room {
        Some(room) => Ok(room),
        None => shared.batons.reserve(client),
    };
    let kept = match room {
        Ok(room) => shared.batons.keep(slot, room).map_err(|slot| (slot, no_baton())),
        Err(full) => Err((slot, too_many_streams(&shared.limits, full))),
    };
    match kept {
        Ok(baton) => Ok(baton),
        Err((slot, error)) => {
            let stream = slot.lock().await.stream.take();
            end_stream(shared, stream).await;
            Err(error)
        }
    }
}

/// Stops a stream's SQL when dropped before [`StopIfClientLeaves::disarm`]: the handler of
/// an HTTP request (or a cursor's body) is dropped when its client disconnects, while the
/// SQL runs on a blocking thread that would otherwise go on until `--max-request-duration`.
/// `stop` says how: [`Deadline::cancel`] for a pipeline (its stream ends: nobody learns its
/// next baton), [`Deadline::expire`] for a cursor (its stream stays for the baton the client
/// got in the first line).
struct StopIfClientLeaves {
    deadline: Option<Arc<Deadline>>,
    stop: fn(&Deadline),
}

impl StopIfClientLeaves {
    fn disarm(mut self) {
        self.deadline = None;
    }
}

impl Drop for StopIfClientLeaves {
    fn drop(&mut self) {
        if let Some(deadline) = &self.deadline {
            (self.stop)(deadline);
        }
    }
}

async fn end_stream(shared: &Arc<Shared>, stream: Option<Stream>) {
    if let Some(stream) = stream {
        let dbs = shared.dbs.clone();
        let _ = tokio::task::spawn_blocking(move || stream.end(&dbs)).await;
    }
}

fn no_baton() -> HttpError {
    HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "cannot draw a random baton; the stream was closed")
}

async fn dev_cursor(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    answering: Option<Extension<Answering>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_cursor(shared, headers, peer, answering, Some(ns), body).await
}

async fn cursor(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    answering: Option<Extension<Answering>>,
    headers: HeaderMap,
    HranaBody(body): HranaBody,
) -> Result<Response, HttpError> {
    run_cursor(shared, headers, peer, answering, None, body).await
}

/// `/v3/cursor`: the batch's entries stream out as lines while it runs. The baton goes out
/// first, so the stream is kept before the batch ends; a request on it waits for the batch.
async fn run_cursor(
    shared: Arc<Shared>,
    headers: HeaderMap,
    peer: SocketAddr,
    answering: Option<Extension<Answering>>,
    path_ns: Option<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let namespace = namespace(&shared, &headers, path_ns.as_deref())?;
    let access = authorize(&shared, &headers, &namespace)?;
    let request: CursorRequest = parse(&body)?;
    if let Some(frame_no) = crate::read_your_writes::wanted(&headers)? {
        crate::read_your_writes::wait(&shared, &namespace, frame_no).await?;
    }
    let client = client_of(&shared, &headers, peer);
    let (slot, room) = stream_for(&shared, request.baton.as_deref(), &namespace, access, client, true)?;
    // `stream_for` gives a place whenever it is asked for one.
    let Some(room) = room else { return Err(too_many_streams(&shared.limits, Full::Server)) };
    let mut held = slot.clone().lock_owned().await;
    if let Err(e) = check_stream(&held, &namespace, access) {
        end_stream(&shared, held.stream.take()).await;
        return Err(e);
    }
    let Some(stream) = held.stream.as_ref() else { return Err(stream_expired()) };
    let deadline = stream.deadline();
    // sqld refuses a batch the protocol does not allow before it answers, and drops the stream.
    if let Err(why) = stream.check_cursor(&request.batch, Version::Hrana3, &shared.limits) {
        end_stream(&shared, held.stream.take()).await;
        return Err(HttpError::protocol(why));
    }
    // Kept while still locked: the next request on the new baton waits for this batch.
    let baton = match shared.batons.keep(slot, room) {
        Ok(baton) => baton,
        Err(_) => {
            end_stream(&shared, held.stream.take()).await;
            return Err(no_baton());
        }
    };
    let mut first = serde_json::to_vec(&CursorResponse { baton: Some(baton), base_url: None }).unwrap_or_default();
    first.push(b'\n');
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let worker = shared.clone();
    tokio::task::spawn_blocking(move || {
        let Some(stream) = held.stream.as_mut() else { return };
        let mut emit = |entry: proto::CursorEntry| {
            // `--ack durable`: a step's end (what tells the client it is done) waits until
            // its commit is durable; a batch that cannot get there ends with an error entry.
            let (entry, go_on) = match entry {
                proto::CursorEntry::StepEnd { .. } => match worker.wait_durable(&namespace) {
                    Ok(()) => (entry, true),
                    Err(why) => (proto::CursorEntry::Error { error: not_acknowledged(worker.ack, why).error }, false),
                },
                entry => (entry, true),
            };
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            tx.blocking_send(Bytes::from(line)).is_ok() && go_on
        };
        stream.run_cursor(&request.batch, Version::Hrana3, &worker.dbs, &worker.limits, &mut emit);
        held.idle_since = std::time::Instant::now();
    });
    // The body dropped before its end (the client left): the batch's SQL stops. Its stream
    // stays, as the client holds its baton from the first line. Armed here, before the
    // body exists, so that an early leave is never overwritten by a later arming.
    deadline.arm(shared.limits.request_duration_max);
    let client_gone = StopIfClientLeaves { deadline: Some(deadline), stop: Deadline::expire };
    // The lines come while the batch runs, after this handler returned, with nothing on the
    // connection while a step's SQL runs: the connection counts as answering while the body
    // waits for its next line (else `--idle-connection-timeout` would cut a step quiet that
    // long), and only then: a client that stops reading leaves a line unsent, nothing
    // counted, and its connection is cut after the idle timeout (the batch then stops at
    // its next line).
    let answering = answering.map(|Extension(answering)| answering);
    let lines = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(first)) }).chain(
        futures::stream::unfold((rx, client_gone, answering), |(mut rx, client_gone, answering)| async move {
            let waiting = answering.as_ref().map(Answering::start);
            let line = rx.recv().await;
            drop(waiting);
            match line {
                Some(line) => Some((Ok(line), (rx, client_gone, answering))),
                None => {
                    client_gone.disarm();
                    None
                }
            }
        }),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain")], Body::from_stream(lines)).into_response())
}

/// The length of `value` in JSON, counted without keeping the text.
fn encoded_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX, // nothing more is answered after a result that cannot be sent
    }
}
