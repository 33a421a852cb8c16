//! Replication between our servers: a primary serves each namespace's log, a replica
//! (`--replica-of URL`) follows it. Wire format: docs/FORMAT.md, *Replication stream*.
//!
//! - `GET /replication/v1/image`: a consistent image of the namespace's database at its last
//!   commit, page 1 carrying that commit's checkpoint mark (its position).
//! - `GET /replication/v1/frames?position=…`: after a position the primary can vouch for,
//!   every committed transaction, whole, as it commits, as 4128-byte frames; before each
//!   run of them, and every [`HEARTBEAT`] while nothing commits, an info frame (frame_no 0)
//!   carrying the primary's last commit. A position it cannot vouch for (another history,
//!   frames checkpointed away) is 409 `REPLICA_POSITION_UNSERVABLE`.
//!
//! The primary's side never blocks a commit: each stream reads committed frames on a
//! blocking thread and sends them through a channel of a few chunks, so a replica that stops
//! reading only stops its own stream (and holds at most those chunks in memory). While a
//! stream is connected, the primary's checkpoints keep the frames after what it was sent.
//!
//! The replica's side, one task per namespace: with no database yet, it downloads an image
//! and installs it; then it streams from its own position (its upstream record) and applies
//! whole transactions, so its readers never see part of one. A dropped or silent stream is
//! reconnected with a growing backoff. A position the primary refuses makes the replica
//! start again from a new image, which replaces its database whole (logged at warn, with
//! the primary's reason): the two histories are never mixed, and readers see the old
//! database or the new one. Credentials the primary refuses (401, 403) are logged once per
//! change and retried with the same backoff.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use libsql_wal::{FramesAfter, Position};
use serde::Deserialize;

use crate::http::HttpError;
use crate::server::Shared;

/// How often a stream with nothing to send says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica that hears nothing for this long reconnects.
const SILENCE_MAX: Duration = Duration::from_secs(8);
/// About how many bytes of frames one read of the log gives.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight per stream: what a replica that stops reading holds of the primary's memory.
const CHANNEL_CHUNKS: usize = 4;
const FRAME: usize = 4128;
/// A run of frames at least this long is preceded by an info frame even when it ends at
/// the primary's last commit: the replica learns it is behind while the run arrives.
const INFO_RUN_BYTES: usize = 64 * FRAME;
/// How long a stream waits after a commit for the next ones, to send them together.
const COALESCE: Duration = Duration::from_millis(1);
/// Response header of a frames stream whose primary wants acknowledgements.
const ACKS_WANTED: &str = "x-libsql-wal-acks-wanted";
/// About how many bytes of received frames a replica applies as one group at most.
const GROUP_BYTES_MAX: usize = 16 << 20;

/// `lineage-frame_no-chain`, lineage and chain in hex.
pub fn format_position(p: &Position) -> String {
    format!("{:08x}-{}-{:08x}", p.lineage, p.frame_no, p.chain)
}

pub fn parse_position(text: &str) -> Option<Position> {
    let mut parts = text.split('-');
    let lineage = u32::from_str_radix(parts.next()?, 16).ok()?;
    let frame_no = parts.next()?.parse().ok()?;
    let chain = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some(Position { lineage, frame_no, chain })
}

fn unservable(why: impl std::fmt::Display) -> HttpError {
    HttpError::new(StatusCode::CONFLICT, "REPLICA_POSITION_UNSERVABLE", why.to_string())
}

fn internal(what: impl std::fmt::Display) -> HttpError {
    HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", what.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| internal(format!("a blocking task failed: {e}")))
}

/// The database of the request's namespace, which must exist (replication never creates one).
fn existing_db(shared: &Shared, headers: &HeaderMap) -> Result<(String, PathBuf), HttpError> {
    existing_db_with_access(shared, headers).map(|(namespace, db, _)| (namespace, db))
}

/// [`existing_db`] and what the request's credentials grant.
fn existing_db_with_access(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, PathBuf, crate::auth::Access), HttpError> {
    let namespace = crate::http::namespace(shared, headers, None)?;
    // Any access that may read the namespace may follow it: a replica reads it all.
    let access = crate::http::authorize(shared, headers, &namespace)?;
    let db = shared.dbs.path_of(&namespace);
    if !db.exists() {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "NAMESPACE_NOT_FOUND", format!("no namespace {namespace}")));
    }
    Ok((namespace, db, access))
}

fn body_of(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    }))
}

/// `GET /replication/v1/image`: the pages in order; the position is page 1's checkpoint
/// mark. An export that fails midway ends the body short, which the replica refuses.
pub async fn image(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Result<Response, HttpError> {
    let (namespace, db) = existing_db(&shared, &headers)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let dbs = shared.dbs.clone();
    tokio::task::spawn_blocking(move || {
        let sent = libsql_wal::export_image(&db, dbs.manager(), &mut |chunk| {
            tx.blocking_send(Bytes::copy_from_slice(chunk))
                .map_err(|_| libsql_wal::Error::Restore("the replica left".into()))
        });
        match sent {
            Ok(Some(_)) | Err(libsql_wal::Error::Restore(_)) => {}
            Ok(None) => tracing::debug!(namespace, "no image yet: the database has no page"),
            Err(e) => tracing::warn!(namespace, "exporting an image failed: {e}"),
        }
    });
    Ok((StatusCode::OK, body_of(rx)).into_response())
}

#[derive(Deserialize)]
pub struct FramesQuery {
    position: String,
    /// The replica's name for `--ack replicas=K` (see `crate::replica_acks`).
    replica: Option<String>,
}

/// A replica's name: 1 to 64 of `[A-Za-z0-9_-]`.
fn replica_id(text: &str) -> Result<&str, HttpError> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(text).ok_or_else(|| HttpError::protocol("replica is 1 to 64 letters, digits, '-' or '_'"))
}

#[derive(Deserialize)]
pub struct AckQuery {
    replica: String,
    frame_no: u64,
}

/// `POST /replication/v1/ack?replica=ID&frame_no=N`: the replica holds the namespace
/// durably up to frame N (counted while its stream is connected).
pub async fn ack(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<AckQuery>,
) -> Result<StatusCode, HttpError> {
    let (namespace, _, access) = existing_db_with_access(&shared, &headers)?;
    if access != crate::auth::Access::ReadWrite {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "AUTH_FORBIDDEN",
            "a replica's acknowledgement counts for --ack replicas=K only with credentials that may write",
        ));
    }
    shared.replica_acks.acknowledged(&namespace, replica_id(&query.replica)?, query.frame_no);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /replication/v1/frames?position=…`.
pub async fn frames(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<FramesQuery>,
) -> Result<Response, HttpError> {
    let (namespace, db, access) = existing_db_with_access(&shared, &headers)?;
    let from = parse_position(&query.position)
        .ok_or_else(|| HttpError::protocol("position is lineage-frame_no-chain (hex, decimal, hex)"))?;
    let replica = query.replica.as_deref().map(replica_id).transpose()?.map(str::to_string);
    let dbs = shared.dbs.clone();
    let follower = blocking(move || libsql_wal::follow(&db, dbs.manager(), from.frame_no))
        .await?
        .map_err(|e| internal(format!("cannot read the log: {e}")))?;
    let follower = Arc::new(follower);
    let reader = follower.clone();
    let first = blocking(move || reader.frames_after(from, CHUNK_BYTES))
        .await?
        .map_err(|e| internal(format!("cannot read the log: {e}")))?;
    if let FramesAfter::Unservable(why) = first {
        release(follower).await;
        return Err(unservable(why));
    }
    let registration = shared.lag.stream(&namespace, peer.to_string(), follower.commits(), from.frame_no);
    // It holds its position durably: that much counts for `--ack replicas=K` at once (only
    // with credentials that may write: anyone who may read could pose as a replica).
    let acks = replica
        .filter(|_| access == crate::auth::Access::ReadWrite)
        .map(|id| shared.replica_acks.connected(&namespace, &id, from.frame_no));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let stream = Stream { tx, stopping: shared.stopping.subscribe(), registration, acks };
    tokio::spawn(produce(follower, from, first, stream));
    let mut response = (StatusCode::OK, body_of(rx)).into_response();
    response
        .headers_mut()
        .insert("content-type", axum::http::HeaderValue::from_static("application/x-libsql-wal-frames"));
    if matches!(shared.ack, crate::server::Ack::Replicas { .. }) {
        // Only a primary that waits on them asks for acknowledgements (a request each).
        response.headers_mut().insert(ACKS_WANTED, axum::http::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// Drops a follower on a blocking thread (it may close the log).
async fn release(follower: Arc<libsql_wal::Follower>) {
    let _ = tokio::task::spawn_blocking(move || drop(follower)).await;
}

/// Where a producer sends, and what ends it besides the replica leaving.
struct Stream {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    /// The server stops.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Its lag, for `/metrics`; told to end when the namespace's files are replaced.
    registration: crate::lag::StreamRegistration,
    /// The replica counted for `--ack replicas=K` while the stream lives.
    acks: Option<crate::replica_acks::Connected>,
}

impl Stream {
    /// Sends `chunk`; false when the stream must end. A replica that stops reading blocks
    /// the send: shutdown must not wait on it.
    async fn send(&mut self, chunk: Bytes) -> bool {
        tokio::select! {
            sent = self.tx.send(chunk) => sent.is_ok(),
            _ = self.stopping.changed() => false,
            () = self.registration.stream.end.notified() => false,
        }
    }
}

/// A frame with frame_no 0 (no frame: never part of a transaction) carrying the primary's
/// last commit at offset 16: sent before each run of frames and as the keep-alive, so the
/// replica knows how far behind it is (docs/FORMAT.md, *Replication*).
fn info_frame(last_commit: u64) -> Bytes {
    let mut frame = vec![0u8; FRAME];
    frame[16..24].copy_from_slice(&last_commit.to_le_bytes());
    Bytes::from(frame)
}

/// The commit time (Unix ms) of the first commit frame in `frames`.
fn first_commit_ms(frames: &[u8]) -> Option<u64> {
    frames.chunks_exact(FRAME).find(|f| size_after(f) != 0).map(|f| u64_at(f, 16))
}

/// Sends what commits after `from`, starting with `first`, until the replica leaves or
/// the log can no longer continue (then the stream ends: the replica reconnects and hears
/// why).
async fn produce(follower: Arc<libsql_wal::Follower>, from: Position, first: FramesAfter, mut stream: Stream) {
    let lag = stream.registration.stream.clone();
    let mut commits = follower.commits();
    let mut at = from;
    let mut next = first;
    let last = *commits.borrow();
    let mut open = stream.send(info_frame(last)).await;
    while open && !*stream.stopping.borrow() {
        match next {
            FramesAfter::Frames { frames, end } => {
                lag.oldest_unsent(first_commit_ms(&frames));
                let last = *commits.borrow();
                // The info frame tells the replica the primary's last commit before a run
                // that takes a while to arrive, or when more is committed than the run
                // holds; a short run that ends at the last commit says it itself (one chunk
                // per run, no info frame: half the bytes and sends of small transactions).
                let chunk = if last > end.frame_no || frames.len() >= INFO_RUN_BYTES {
                    let mut chunk = info_frame(last).to_vec();
                    chunk.extend_from_slice(&frames);
                    Bytes::from(chunk)
                } else {
                    Bytes::from(frames)
                };
                open = stream.send(chunk).await;
                if !open {
                    break;
                }
                at = end;
                follower.advance(end.frame_no);
                lag.sent(end.frame_no);
                if let Some(acks) = &stream.acks {
                    acks.sent(end.frame_no);
                }
            }
            FramesAfter::UpToDate => {
                lag.oldest_unsent(None);
                tokio::select! {
                    changed = commits.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        // The commits of the next moment go in the same read and send: under
                        // a steady load a stream then costs the primary a wake-up per
                        // millisecond, not per commit (at the price of that much lag).
                        tokio::time::sleep(COALESCE).await;
                    }
                    () = tokio::time::sleep(HEARTBEAT) => {
                        let last = *commits.borrow();
                        if !stream.send(info_frame(last)).await {
                            break;
                        }
                    }
                    () = stream.tx.closed() => break,
                    _ = stream.stopping.changed() => break,
                    () = lag.end.notified() => break,
                }
            }
            FramesAfter::Unservable(_) => break,
        }
        commits.borrow_and_update();
        let reader = follower.clone();
        next = match tokio::task::spawn_blocking(move || reader.frames_after(at, CHUNK_BYTES)).await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::warn!("replication stream: cannot read the log: {e}");
                break;
            }
            Err(_) => break,
        };
    }
    drop(stream);
    release(follower).await;
}

/// The replica's side: follows `primary` for `namespace` until the server stops.
pub async fn follow_primary(shared: Arc<Shared>, primary: String, namespace: String) {
    // The read timeout bounds each wait for bytes, the response's head included: a request
    // the primary never answers (a hung primary, a connection gone silent) is silence too.
    let client =
        match reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).read_timeout(SILENCE_MAX).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(namespace, "replica: cannot make an HTTP client: {e}");
                return;
            }
        };
    let lag = shared.lag.replica(&namespace);
    let (acks, acked) = tokio::sync::watch::channel(0u64);
    let primary = primary.trim_end_matches('/').to_string();
    let acknowledging = AbortOnDrop(tokio::spawn(send_acks(
        client.clone(),
        format!("{primary}/replication/v1/ack"),
        namespace.clone(),
        shared.clone(),
        acked,
    )));
    let follower = Following {
        acks_wanted: Default::default(),
        acks,
        from_storage: Default::default(),
        shared,
        primary,
        namespace,
        client,
        lag,
    };
    let _acknowledging = acknowledging;
    let mut failures = 0u32;
    loop {
        // A refused position is not retried as it is: the replica starts again from an image.
        let result = match follower.once(&mut failures).await {
            Err(Stop::Refused(why)) => follower.rebootstrap(&why).await,
            other => other,
        };
        match result {
            Ok(()) => failures = 0,
            Err(Stop::Fatal(why)) => {
                tracing::warn!(namespace = follower.namespace, "replica: not following this namespace: {why}");
                return;
            }
            Err(stop) => {
                failures = failures.saturating_add(1);
                follower.report(stop, failures);
            }
        }
        let delay = Duration::from_millis(50).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(2));
        tokio::time::sleep(delay).await;
    }
}

/// Pieces of a stream read ahead of the group being applied (at most about a MiB each, as
/// the primary sends them): what a replica behind holds in memory at most, with one group.
const READ_AHEAD_CHUNKS: usize = 64;

/// A stream's pieces as they come, sent to the applier: `Ok(None)` when it ends, an error
/// (silence past [`SILENCE_MAX`], a break) and then nothing.
async fn read_ahead(mut response: reqwest::Response, tx: tokio::sync::mpsc::Sender<Result<Option<Bytes>, Stop>>) {
    loop {
        let item = match tokio::time::timeout(SILENCE_MAX, response.chunk()).await {
            Err(_) => Err(Stop::Retry(format!("the primary said nothing for {SILENCE_MAX:?}"))),
            Ok(Err(e)) => Err(Stop::Retry(format!("the stream broke: {e}"))),
            Ok(Ok(chunk)) => Ok(chunk),
        };
        let last = !matches!(item, Ok(Some(_)));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Aborts its task when dropped (with the namespace's following task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells the primary, after each group the replica applied and synced, the frame_no it
/// holds (`POST /replication/v1/ack`, for `--ack replicas=K`): the newest only, again after
/// a failure until it gets through or a newer one replaces it.
async fn send_acks(
    client: reqwest::Client,
    url: String,
    namespace: String,
    shared: Arc<Shared>,
    mut acked: tokio::sync::watch::Receiver<u64>,
) {
    while acked.changed().await.is_ok() {
        loop {
            let frame_no = *acked.borrow_and_update();
            let mut request = client
                .post(&url)
                .header("x-namespace", &namespace)
                .query(&[("replica", shared.replica_name.as_str()), ("frame_no", &frame_no.to_string())]);
            if let Some(token) = &shared.replica_auth_token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => {
                    tracing::debug!(namespace, status = %response.status(), "replica: acknowledgement refused")
                }
                Err(e) => tracing::debug!(namespace, "replica: acknowledgement not sent: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if acked.has_changed().is_err() {
                return;
            }
        }
    }
}

enum Stop {
    /// The primary is unreachable, restarting, or the stream broke: try again.
    Retry(String),
    /// The primary refuses this replica's position (another history, frames it no longer
    /// holds), or the replica no longer knows it: it starts again from an image.
    Refused(String),
    /// The primary refuses this replica's credentials (401 or 403): why, as it says.
    Unauthorized(String),
    /// Following cannot go on without losing data (a database of its own where the
    /// namespace's replica would go): the namespace is not followed.
    Fatal(String),
}

/// How long a re-bootstrap waits for the connections to the namespace to close.
const REPLACE_WAIT: Duration = Duration::from_secs(10);

struct Following {
    /// Whether the primary asked for acknowledgements (`ACKS_WANTED`) on this stream.
    acks_wanted: std::sync::atomic::AtomicBool,
    /// The frame_no this replica holds durably, for the task that tells the primary.
    acks: tokio::sync::watch::Sender<u64>,
    /// Whether the last image came from storage (a refusal of it then asks the primary).
    from_storage: std::sync::atomic::AtomicBool,
    shared: Arc<Shared>,
    primary: String,
    namespace: String,
    client: reqwest::Client,
    lag: Arc<crate::lag::ReplicaLag>,
}

impl Following {
    /// Bootstraps if there is no database yet, then streams until the stream ends. A stream
    /// that says something ends an outage: `failures` (the backoff) starts again from 0.
    async fn once(&self, failures: &mut u32) -> Result<(), Stop> {
        let db = self.shared.dbs.path_of(&self.namespace);
        if !db.exists() {
            self.bootstrap(&db).await?;
        }
        let dbs = self.shared.dbs.clone();
        let at_db = db.clone();
        let at = blocking(move || libsql_wal::replica_position(&at_db, dbs.manager()))
            .await
            .map_err(|_| Stop::Retry("a blocking task failed".into()))?
            .map_err(|e| refused_or_retry(e, "its position"))?;
        self.lag.applied(at.frame_no, false);
        let url = format!(
            "{}/replication/v1/frames?position={}&replica={}",
            self.primary,
            format_position(&at),
            self.shared.replica_name
        );
        let response = self.get(&url).await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Err(Stop::Refused(message_of(response).await));
        }
        if !response.status().is_success() {
            return Err(Stop::Retry(format!("{url}: {}", response.status())));
        }
        // Continued: a later refusal is not this image's (see `obtain_image`).
        self.from_storage.store(false, std::sync::atomic::Ordering::SeqCst);
        self.acks_wanted.store(response.headers().contains_key(ACKS_WANTED), std::sync::atomic::Ordering::SeqCst);
        self.lag.connected(true);
        let streamed = self.stream(response, db, at, failures).await;
        self.lag.connected(false);
        streamed
    }

    /// Applies the stream's transactions as they come, from `at`, until it ends; `failures`
    /// (the reconnection backoff's count) starts again once the stream says something.
    async fn stream(
        &self,
        response: reqwest::Response,
        db: PathBuf,
        mut at: Position,
        failures: &mut u32,
    ) -> Result<(), Stop> {
        // A task of its own reads the stream while a group is applied: hyper fetches the next
        // piece of a body only when asked, so what arrived during an apply would otherwise
        // wait in the socket, and each group would be one transaction.
        let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let _reader = AbortOnDrop(tokio::spawn(read_ahead(response, tx)));
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let Some(first) = rx.recv().await else { return Ok(()) };
            let chunk = match first {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(stop) => return Err(stop),
            };
            *failures = 0;
            pending.extend_from_slice(&chunk);
            // What else has arrived (while the last group was applied) joins this group: one
            // apply, two syncs, however many transactions, so the replica keeps up with a
            // primary that commits faster than one transaction per two syncs.
            let mut ended = false;
            while pending.len() < GROUP_BYTES_MAX {
                match rx.try_recv() {
                    Ok(Ok(Some(more))) => pending.extend_from_slice(&more),
                    Ok(Ok(None)) | Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                    Ok(Err(stop)) => return Err(stop),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                }
            }
            let (whole, heard) = take_whole_transactions(&mut pending);
            if let Some(last_commit) = heard {
                self.lag.heard(last_commit);
            }
            if !whole.is_empty() {
                let (dbs, db) = (self.shared.dbs.clone(), db.clone());
                let after = at.frame_no;
                at = blocking(move || libsql_wal::apply_frames(&db, dbs.manager(), &whole))
                    .await
                    .map_err(|_| Stop::Retry("a blocking task failed".into()))?
                    .map_err(|e| refused_or_retry(e, &format!("applying frames after {after}")))?;
                self.lag.applied(at.frame_no, false);
                // Synced: the primary may count it for `--ack replicas=K`.
                if self.acks_wanted.load(std::sync::atomic::Ordering::SeqCst) {
                    self.acks.send_replace(at.frame_no);
                }
            }
            if ended {
                return Ok(());
            }
        }
    }

    /// A GET to the primary, with this replica's credentials if it has any. A 401 or 403
    /// is [`Stop::Unauthorized`]; any other answer means the credentials passed.
    async fn get(&self, url: &str) -> Result<reqwest::Response, Stop> {
        let mut request = self.client.get(url).header("x-namespace", &self.namespace);
        if let Some(token) = &self.shared.replica_auth_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| Stop::Retry(format!("{url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Stop::Unauthorized(format!("{status}: {}", message_of(response).await)));
        }
        if self.lag.auth_refused(None) {
            tracing::info!(namespace = self.namespace, "replica: the primary accepts this replica's credentials now");
        }
        Ok(response)
    }

    /// Logs why following failed: a refusal of credentials once per change (not at every
    /// retry), other failures past the first few (a primary restarting is normal).
    fn report(&self, stop: Stop, failures: u32) {
        let namespace = &self.namespace;
        match stop {
            Stop::Retry(why) if failures > 3 => tracing::warn!(namespace, "replica: {why} (retrying)"),
            Stop::Retry(_) => {}
            Stop::Unauthorized(why) => {
                if self.lag.auth_refused(Some(&why)) {
                    let hint = match self.shared.replica_auth_token {
                        Some(_) => "check the token given with --replica-auth-token",
                        None => "give one with --replica-auth-token or LIBSQL_WAL_REPLICA_AUTH_TOKEN",
                    };
                    tracing::error!(
                        namespace,
                        "replica: the primary refuses this replica's credentials ({why}): {hint}; retrying"
                    );
                }
            }
            Stop::Refused(why) => tracing::error!(namespace, "replica: cannot start again from an image: {why}"),
            Stop::Fatal(why) => tracing::error!(namespace, "replica: {why}"),
        }
    }

    /// Downloads an image of the primary's database (from storage first, if the replica
    /// has `--storage`) and installs it as this replica's.
    async fn bootstrap(&self, db: &Path) -> Result<(), Stop> {
        let (image, bytes) = self.obtain_image(db).await?;
        let (dbs, image_path, db_path) = (self.shared.dbs.clone(), image.clone(), db.to_path_buf());
        let installed = blocking(move || libsql_wal::install_image(&image_path, &db_path, dbs.manager()))
            .await
            .map_err(|_| Stop::Retry("a blocking task failed".into()))?
            .map_err(|e| Stop::Retry(format!("installing the image: {e}")));
        if installed.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        let position = installed?;
        self.lag.applied(position.frame_no, true);
        tracing::info!(
            namespace = self.namespace,
            frame_no = position.frame_no,
            bytes,
            "replica: started from an image"
        );
        Ok(())
    }

    /// Replaces this replica's database with a new image of the primary's: the primary
    /// refused its position (`why`), so its own history has no use any more (a replica is a
    /// cache of its primary). Readers see the old database or the new one, never a mix.
    async fn rebootstrap(&self, why: &str) -> Result<(), Stop> {
        tracing::warn!(
            namespace = self.namespace,
            "replica: the primary refuses this replica's position ({why}): starting again from an image of the \
             primary (this replica's own history is dropped)"
        );
        let db = self.shared.dbs.path_of(&self.namespace);
        let (image, bytes) = self.obtain_image(&db).await?;
        let replaced = self.replace_with(&image, &db).await;
        if replaced.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        let position = replaced?;
        self.lag.applied(position.frame_no, true);
        tracing::warn!(
            namespace = self.namespace,
            frame_no = position.frame_no,
            bytes,
            "replica: started again from an image of the primary"
        );
        Ok(())
    }

    /// Whether `db` has an upstream record (it was made a replica).
    fn is_replica(&self, db: &Path) -> bool {
        let mut record = db.as_os_str().to_owned();
        record.push("-upstream");
        Path::new(&record).exists()
    }

    /// Puts `image` in place of the database `db` once no connection holds it: new ones
    /// wait meanwhile, idle streams on it are ended (their transactions rolled back), and
    /// so are the replication streams this replica serves from it.
    async fn replace_with(&self, image: &Path, db: &Path) -> Result<Position, Stop> {
        let _held = self.shared.dbs.hold_opens(&self.namespace);
        let deadline = tokio::time::Instant::now() + REPLACE_WAIT;
        loop {
            self.shared.batons.end_streams_of(&self.namespace, &self.shared.dbs).await;
            self.shared.lag.end_streams_of(&self.namespace);
            // Embedded replicas' tables keep the log open; loaded again, they find the new
            // history and send their replicas a new image.
            self.shared.generations.put_away(db);
            let (dbs, image_path, db_path) = (self.shared.dbs.clone(), image.to_path_buf(), db.to_path_buf());
            let replaced = blocking(move || libsql_wal::replace_with_image(&image_path, &db_path, dbs.manager()))
                .await
                .map_err(|_| Stop::Retry("a blocking task failed".into()))?;
            match replaced {
                Ok(position) => return Ok(position),
                Err(libsql_wal::Error::LogInUse { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e @ libsql_wal::Error::CannotOpen { .. }) if !self.is_replica(db) => {
                    return Err(Stop::Fatal(format!("{e}")));
                }
                Err(e) => return Err(Stop::Retry(format!("replacing the database with a new image: {e}"))),
            }
        }
    }

    /// An image to start from, beside `db`: restored from storage (with `--storage`; the
    /// primary then sends only the frames after it), unless the last image came from there
    /// and the primary refused to continue it (storage behind what the primary still holds,
    /// or of another history): then the primary's own.
    async fn obtain_image(&self, db: &Path) -> Result<(PathBuf, u64), Stop> {
        let from_storage = self.from_storage.swap(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(storage) = self.shared.catch_up_storage.clone()
            && !from_storage
        {
            let image = db.with_extension(format!("restored-{}", std::process::id()));
            let (namespace, path) = (self.namespace.clone(), image.clone());
            let restored = blocking(move || crate::catch_up::restore_image(&storage, &namespace, &path))
                .await
                .map_err(|_| Stop::Retry("a blocking task failed".into()))?;
            match restored {
                Ok(Some(bytes)) => {
                    self.from_storage.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!(namespace = self.namespace, bytes, "replica: image restored from storage");
                    return Ok((image, bytes));
                }
                Ok(None) => {}
                Err(why) => tracing::warn!(namespace = self.namespace, "replica: {why}; asking the primary instead"),
            }
        }
        self.download_image(db).await
    }

    /// Downloads an image of the primary's database beside `db`, synced; returns its path
    /// and length.
    async fn download_image(&self, db: &Path) -> Result<(PathBuf, u64), Stop> {
        let url = format!("{}/replication/v1/image", self.primary);
        let mut response = self.get(&url).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND && !db.exists() {
            // Asked for by a client, but the primary has no such namespace: not followed
            // (asked for again, it is tried again), so clients cannot make a replica poll
            // its primary for names without end.
            return Err(Stop::Fatal(format!("the primary has no namespace {} (yet)", self.namespace)));
        }
        if !response.status().is_success() {
            return Err(Stop::Retry(format!("{url}: {}", response.status())));
        }
        let image = db.with_extension(format!("image-{}", std::process::id()));
        let mut bytes: u64 = 0;
        let file = std::fs::File::create(&image).map_err(|e| Stop::Retry(format!("{}: {e}", image.display())))?;
        let mut writer = std::io::BufWriter::new(file);
        let downloaded = async {
            while let Some(chunk) =
                response.chunk().await.map_err(|e| Stop::Retry(format!("downloading the image broke: {e}")))?
            {
                std::io::Write::write_all(&mut writer, &chunk).map_err(|e| Stop::Retry(e.to_string()))?;
                bytes += chunk.len() as u64;
            }
            let file = writer.into_inner().map_err(|e| Stop::Retry(e.to_string()))?;
            file.sync_all().map_err(|e| Stop::Retry(e.to_string()))?;
            if bytes == 0 {
                return Err(Stop::Retry("the primary has no page of this namespace yet".into()));
            }
            Ok(())
        }
        .await;
        if let Err(stop) = downloaded {
            let _ = std::fs::remove_file(&image);
            return Err(stop);
        }
        Ok((image, bytes))
    }
}

/// A replica's position refused by its own log (another history, or no longer known) is
/// a reason to start again from an image; any other error (I/O) is retried as it is.
fn refused_or_retry(e: libsql_wal::Error, doing: &str) -> Stop {
    match e {
        libsql_wal::Error::Diverged { .. } => Stop::Refused(format!("{doing}: {e}")),
        e => Stop::Retry(format!("{doing}: {e}")),
    }
}

/// The message of an error answer (`{"message", "code"}`), else its text.
async fn message_of(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => json["message"].as_str().map_or(text.clone(), str::to_string),
        Err(_) => text,
    }
}

fn u64_at(frame: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(frame[at..at + 8].try_into().expect("8 bytes"))
}

fn size_after(frame: &[u8]) -> u32 {
    u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"))
}

/// Takes the whole transactions at the front of `pending` (info frames dropped), leaving
/// the start of an unfinished one; and the primary's last commit, as the newest info frame
/// among them says (`None`: none said, or an older primary's keep-alive, all zeros).
fn take_whole_transactions(pending: &mut Vec<u8>) -> (Vec<u8>, Option<u64>) {
    let mut whole = Vec::new();
    let mut heard = None;
    let mut txn_start = 0;
    let mut at = 0;
    while at + FRAME <= pending.len() {
        let frame = &pending[at..at + FRAME];
        at += FRAME;
        if u64_at(frame, 8) == 0 {
            // An info frame (or keep-alive), only ever sent between transactions.
            heard = Some(u64_at(frame, 16)).filter(|&n| n > 0).or(heard);
            txn_start = at;
        } else if size_after(frame) != 0 {
            whole.extend_from_slice(&pending[txn_start..at]);
            txn_start = at;
        }
    }
    pending.drain(..txn_start);
    (whole, heard)
}
