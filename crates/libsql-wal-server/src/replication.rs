//! Replication between our servers: a primary serves each namespace's log, a replica
//! (`--replica-of URL`) follows it. Wire format: docs/FORMAT.md, *Replication stream*.
//!
//! - `GET /replication/v1/image`: a consistent image of the namespace's database at its last
//!   commit, page 1 carrying that commit's checkpoint mark (its position).
//! - `GET /replication/v1/frames?position=…`: after a position the primary can vouch for,
//!   every committed transaction, whole, as it commits, as 4128-byte frames; while nothing
//!   commits, a keep-alive frame (frame_no 0) every [`HEARTBEAT`]. A position it cannot
//!   vouch for (another history, frames checkpointed away) is 409 `REPLICA_POSITION_UNSERVABLE`.
//!
//! The primary's side never blocks a commit: each stream reads committed frames on a
//! blocking thread and sends them through a channel of a few chunks, so a replica that stops
//! reading only stops its own stream (and holds at most those chunks in memory). While a
//! stream is connected, the primary's checkpoints keep the frames after what it was sent.
//!
//! The replica's side, one task per namespace: with no database yet, it downloads an image
//! and installs it; then it streams from its own position (its upstream record) and applies
//! whole transactions, so its readers never see part of one. A dropped or silent stream is
//! reconnected with a growing backoff. A position the primary refuses stops the namespace
//! following (logged, with what to do): it is never mixed with another history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
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
    let namespace = crate::http::namespace(shared, headers, None)?;
    // Any access that may read the namespace may follow it: a replica reads it all.
    crate::http::authorize(shared, headers, &namespace)?;
    let db = shared.dbs.path_of(&namespace);
    if !db.exists() {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "NAMESPACE_NOT_FOUND", format!("no namespace {namespace}")));
    }
    Ok((namespace, db))
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
}

/// `GET /replication/v1/frames?position=…`.
pub async fn frames(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<FramesQuery>,
) -> Result<Response, HttpError> {
    let (_, db) = existing_db(&shared, &headers)?;
    let from = parse_position(&query.position)
        .ok_or_else(|| HttpError::protocol("position is lineage-frame_no-chain (hex, decimal, hex)"))?;
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    tokio::spawn(produce(follower, from, first, tx, shared.stopping.subscribe()));
    let mut response = (StatusCode::OK, body_of(rx)).into_response();
    response
        .headers_mut()
        .insert("content-type", axum::http::HeaderValue::from_static("application/x-libsql-wal-frames"));
    Ok(response)
}

/// Drops a follower on a blocking thread (it may close the log).
async fn release(follower: Arc<libsql_wal::Follower>) {
    let _ = tokio::task::spawn_blocking(move || drop(follower)).await;
}

/// Sends what commits after `from`, starting with `first`, until the replica leaves or
/// the log can no longer continue (then the stream ends: the replica reconnects and hears
/// why).
async fn produce(
    follower: Arc<libsql_wal::Follower>,
    from: Position,
    first: FramesAfter,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut commits = follower.commits();
    let mut at = from;
    let mut next = first;
    loop {
        let stopped = *stopping.borrow();
        if stopped {
            break;
        }
        match next {
            FramesAfter::Frames { frames, end } => {
                // A replica that stops reading blocks this send: shutdown must not wait on it.
                let sent = tokio::select! {
                    sent = tx.send(Bytes::from(frames)) => sent.is_ok(),
                    _ = stopping.changed() => false,
                };
                if !sent {
                    break;
                }
                at = end;
                follower.advance(end.frame_no);
            }
            FramesAfter::UpToDate => {
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(HEARTBEAT) => {
                        if tx.send(Bytes::from(vec![0u8; FRAME])).await.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                    _ = stopping.changed() => break,
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
    let follower = Following { shared, primary: primary.trim_end_matches('/').to_string(), namespace, client };
    let mut failures = 0u32;
    loop {
        match follower.once(&mut failures).await {
            Ok(()) => failures = 0,
            Err(Stop::Retry(why)) => {
                failures = failures.saturating_add(1);
                // The first failures are the normal ones (a primary restarting): quiet.
                if failures > 3 {
                    tracing::warn!(namespace = follower.namespace, "replica: {why} (retrying)");
                }
            }
            Err(Stop::Refused(why)) => {
                failures = failures.saturating_add(1);
                tracing::error!(
                    namespace = follower.namespace,
                    "replica: the primary cannot continue this replica: {why}; it keeps its state and retries \
                     (remove {} and its -wal and -upstream files to start it again from an image)",
                    follower.shared.dbs.path_of(&follower.namespace).display()
                );
            }
        }
        let delay = Duration::from_millis(50).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(2));
        tokio::time::sleep(delay).await;
    }
}

enum Stop {
    /// The primary is unreachable, restarting, or the stream broke: try again.
    Retry(String),
    /// The primary refuses this replica's position (another history, frames it no longer
    /// holds): never mixed in; retried slowly in case the primary comes back to it.
    Refused(String),
}

struct Following {
    shared: Arc<Shared>,
    primary: String,
    namespace: String,
    client: reqwest::Client,
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
        let mut at = blocking(move || libsql_wal::replica_position(&at_db, dbs.manager()))
            .await
            .map_err(|_| Stop::Retry("a blocking task failed".into()))?
            .map_err(|e| Stop::Refused(e.to_string()))?;
        let url = format!("{}/replication/v1/frames?position={}", self.primary, format_position(&at));
        let response = self.get(&url).await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Err(Stop::Refused(response.text().await.unwrap_or_default()));
        }
        if !response.status().is_success() {
            return Err(Stop::Retry(format!("{url}: {}", response.status())));
        }
        let mut response = response;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(SILENCE_MAX, response.chunk()).await {
                Err(_) => return Err(Stop::Retry(format!("the primary said nothing for {SILENCE_MAX:?}"))),
                Ok(Err(e)) => return Err(Stop::Retry(format!("the stream broke: {e}"))),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            *failures = 0;
            pending.extend_from_slice(&chunk);
            let whole = take_whole_transactions(&mut pending);
            if whole.is_empty() {
                continue;
            }
            let (dbs, db) = (self.shared.dbs.clone(), db.clone());
            at = blocking(move || libsql_wal::apply_frames(&db, dbs.manager(), &whole))
                .await
                .map_err(|_| Stop::Retry("a blocking task failed".into()))?
                .map_err(|e| Stop::Refused(format!("applying frames after {}: {e}", at.frame_no)))?;
        }
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, Stop> {
        self.client
            .get(url)
            .header("x-namespace", &self.namespace)
            .send()
            .await
            .map_err(|e| Stop::Retry(format!("{url}: {e}")))
    }

    /// Downloads an image of the primary's database and installs it as this replica's.
    async fn bootstrap(&self, db: &std::path::Path) -> Result<(), Stop> {
        let url = format!("{}/replication/v1/image", self.primary);
        let mut response = self.get(&url).await?;
        if !response.status().is_success() {
            return Err(Stop::Retry(format!("{url}: {}", response.status())));
        }
        let image = db.with_extension(format!("image-{}", std::process::id()));
        let mut bytes: u64 = 0;
        let file = std::fs::File::create(&image).map_err(|e| Stop::Retry(format!("{}: {e}", image.display())))?;
        let mut writer = std::io::BufWriter::new(file);
        let result = async {
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
            let (dbs, image, db) = (self.shared.dbs.clone(), image.clone(), db.to_path_buf());
            blocking(move || libsql_wal::install_image(&image, &db, dbs.manager()))
                .await
                .map_err(|_| Stop::Retry("a blocking task failed".into()))?
                .map_err(|e| Stop::Retry(format!("installing the image: {e}")))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        let position = result?;
        tracing::info!(
            namespace = self.namespace,
            frame_no = position.frame_no,
            bytes,
            "replica: started from an image"
        );
        Ok(())
    }
}

/// Takes the whole transactions at the front of `pending` (keep-alive frames dropped),
/// leaving the start of an unfinished one.
fn take_whole_transactions(pending: &mut Vec<u8>) -> Vec<u8> {
    let mut whole = Vec::new();
    let mut txn_start = 0;
    let mut at = 0;
    while at + FRAME <= pending.len() {
        let frame = &pending[at..at + FRAME];
        let frame_no = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
        let size_after = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        at += FRAME;
        if frame_no == 0 {
            // A keep-alive, only ever sent between transactions.
            txn_start = at;
        } else if size_after != 0 {
            whole.extend_from_slice(&pending[txn_start..at]);
            txn_start = at;
        }
    }
    pending.drain(..txn_start);
    whole
}
