//! Replication lag, as `GET /metrics` shows it, on both sides.
//!
//! A primary keeps one [`StreamLag`] per replica streaming from it (registered for the
//! stream's life: [`Lag::stream`]), a replica one [`ReplicaLag`] per namespace it follows.
//! Both are plain atomics the replication tasks update as they go; the gauges are set from
//! them right before each scrape ([`Lag::update_gauges`]), so a stream that ended is not
//! refreshed and its series go at the next scrape (the exporter's idle timeout).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `libsql_wal_replication_streams` | gauge | `namespace` | primary: replicas streaming the namespace |
//! | `libsql_wal_replication_stream_lag_frames` | gauge | `namespace`, `stream`, `peer` | primary: last commit's frame_no minus the frame_no the stream was sent up to |
//! | `libsql_wal_replication_stream_lag_seconds` | gauge | `namespace`, `stream`, `peer` | primary: age of the oldest commit not sent yet (0 when caught up) |
//! | `libsql_wal_replica_connected` | gauge | `namespace` | replica: 1 while its stream from the primary is open |
//! | `libsql_wal_replica_lag_frames` | gauge | `namespace` | replica: the primary's last commit, as last heard, minus the last one applied here |
//! | `libsql_wal_replica_lag_seconds` | gauge | `namespace` | replica: how long it has known of a primary commit not applied here yet (0 when caught up) |
//! | `libsql_wal_replica_auth_refused` | gauge | `namespace` | replica: 1 while the primary refuses its credentials (401 or 403) |
//!
//! Bounded series: a stream's series live as long as the stream (`stream` is a number per
//! process, `peer` the replica's address), a replica's as long as it follows the namespace.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ::metrics::{describe_gauge, gauge};

pub const REPLICATION_STREAMS: &str = "libsql_wal_replication_streams";
pub const STREAM_LAG_FRAMES: &str = "libsql_wal_replication_stream_lag_frames";
pub const STREAM_LAG_SECONDS: &str = "libsql_wal_replication_stream_lag_seconds";
pub const REPLICA_CONNECTED: &str = "libsql_wal_replica_connected";
pub const REPLICA_LAG_FRAMES: &str = "libsql_wal_replica_lag_frames";
pub const REPLICA_LAG_SECONDS: &str = "libsql_wal_replica_lag_seconds";
pub const REPLICA_AUTH_REFUSED: &str = "libsql_wal_replica_auth_refused";

pub fn describe() {
    describe_gauge!(REPLICATION_STREAMS, "Replicas streaming a namespace from this primary.");
    describe_gauge!(STREAM_LAG_FRAMES, "Frames committed on this primary that a replica stream was not sent yet.");
    describe_gauge!(
        STREAM_LAG_SECONDS,
        "Age of the oldest commit a replica stream was not sent yet (0 when caught up)."
    );
    describe_gauge!(REPLICA_CONNECTED, "1 while this replica's stream from its primary is open.");
    describe_gauge!(
        REPLICA_LAG_FRAMES,
        "Frames the primary committed (as last heard) that this replica has not applied."
    );
    describe_gauge!(REPLICA_LAG_SECONDS, "How long this replica has known of a primary commit it has not applied yet.");
    describe_gauge!(REPLICA_AUTH_REFUSED, "1 while the primary refuses this replica's credentials (401 or 403).");
}

/// Both sides' state, shared by the replication tasks and `GET /metrics`.
#[derive(Default)]
pub struct Lag {
    streams: Mutex<BTreeMap<u64, Arc<StreamLag>>>,
    next_stream: AtomicU64,
    replicas: Mutex<BTreeMap<String, Arc<ReplicaLag>>>,
}

/// One replica's stream from this primary.
pub struct StreamLag {
    namespace: String,
    peer: String,
    /// The primary's last commit (the log's commit channel).
    commits: tokio::sync::watch::Receiver<u64>,
    /// Every frame up to this one was sent.
    sent: AtomicU64,
    /// Commit time (Unix ms) of the oldest commit not sent yet; 0 when none is known.
    oldest_unsent_ms: AtomicU64,
    /// Told when the stream must end (its namespace is being replaced).
    pub end: tokio::sync::Notify,
}

impl StreamLag {
    pub fn sent(&self, frame_no: u64) {
        self.sent.store(frame_no, Ordering::Relaxed);
    }

    /// The next frames to send hold a commit made at `unix_ms`, the oldest not sent;
    /// `None`: everything committed was sent.
    pub fn oldest_unsent(&self, unix_ms: Option<u64>) {
        self.oldest_unsent_ms.store(unix_ms.unwrap_or(0), Ordering::Relaxed);
    }

    fn frames_behind(&self) -> u64 {
        self.commits.borrow().saturating_sub(self.sent.load(Ordering::Relaxed))
    }

    fn seconds_behind(&self, frames_behind: u64) -> f64 {
        let oldest = self.oldest_unsent_ms.load(Ordering::Relaxed);
        if frames_behind == 0 || oldest == 0 {
            return 0.0;
        }
        unix_ms_now().saturating_sub(oldest) as f64 / 1000.0
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unregisters its stream when dropped (the stream ended, however).
pub struct StreamRegistration {
    lag: Arc<Lag>,
    id: u64,
    pub stream: Arc<StreamLag>,
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        self.lag.streams.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A followed namespace, on a replica.
#[derive(Default)]
pub struct ReplicaLag {
    connected: AtomicBool,
    /// The last frame_no applied here (the primary's numbering).
    applied: AtomicU64,
    /// The primary's last commit, as last heard (0: not heard yet).
    primary_last: AtomicU64,
    /// Since when a primary commit not applied here has been known.
    behind_since: Mutex<Option<Instant>>,
    /// Why the primary refuses this replica's credentials, while it does.
    auth_refused: Mutex<Option<String>>,
}

impl ReplicaLag {
    pub fn connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The primary's last commit is `frame_no`.
    pub fn heard(&self, frame_no: u64) {
        self.primary_last.fetch_max(frame_no, Ordering::Relaxed);
        self.settle();
    }

    /// Everything up to `frame_no` is applied here. After a new image the primary's last
    /// commit is heard again, so what was heard of another history is forgotten.
    pub fn applied(&self, frame_no: u64, new_history: bool) {
        self.applied.store(frame_no, Ordering::Relaxed);
        if new_history {
            self.primary_last.store(frame_no, Ordering::Relaxed);
        }
        self.heard(frame_no);
    }

    fn settle(&self) {
        let behind = self.primary_last.load(Ordering::Relaxed) > self.applied.load(Ordering::Relaxed);
        let mut since = self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        match (behind, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// Records that the primary refuses (`Some(why)`) or accepts (`None`) this replica's
    /// credentials; true when that is a change (worth a log line).
    pub fn auth_refused(&self, why: Option<&str>) -> bool {
        let mut refused = self.auth_refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.as_deref() == why {
            return false;
        }
        *refused = why.map(str::to_string);
        true
    }

    fn lag_frames(&self) -> u64 {
        self.primary_last.load(Ordering::Relaxed).saturating_sub(self.applied.load(Ordering::Relaxed))
    }

    fn lag_seconds(&self) -> f64 {
        let since = *self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(0.0, |since| since.elapsed().as_secs_f64())
    }
}

impl Lag {
    /// Registers a replica's stream of `namespace` from `peer`, sent everything up to `sent`.
    pub fn stream(
        self: &Arc<Self>,
        namespace: &str,
        peer: String,
        commits: tokio::sync::watch::Receiver<u64>,
        sent: u64,
    ) -> StreamRegistration {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(StreamLag {
            namespace: namespace.to_string(),
            peer,
            commits,
            sent: AtomicU64::new(sent),
            oldest_unsent_ms: AtomicU64::new(0),
            end: tokio::sync::Notify::new(),
        });
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).insert(id, stream.clone());
        StreamRegistration { lag: self.clone(), id, stream }
    }

    /// Tells every stream of `namespace` to end (its files are being replaced).
    pub fn end_streams_of(&self, namespace: &str) {
        for stream in self.streams.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if stream.namespace == namespace {
                stream.end.notify_one();
            }
        }
    }

    /// The state of a namespace this replica follows (made at the first call).
    pub fn replica(&self, namespace: &str) -> Arc<ReplicaLag> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        replicas.entry(namespace.to_string()).or_default().clone()
    }

    /// Sets every gauge of this module from the current state (right before a scrape).
    pub fn update_gauges(&self) {
        let streams: Vec<(u64, Arc<StreamLag>)> =
            self.streams.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, s)| (*id, s.clone())).collect();
        let mut per_namespace: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, stream) in &streams {
            *per_namespace.entry(&stream.namespace).or_default() += 1;
            let labels =
                [("namespace", stream.namespace.clone()), ("stream", id.to_string()), ("peer", stream.peer.clone())];
            let frames = stream.frames_behind();
            gauge!(STREAM_LAG_FRAMES, &labels).set(frames as f64);
            gauge!(STREAM_LAG_SECONDS, &labels).set(stream.seconds_behind(frames));
        }
        for (namespace, count) in per_namespace {
            gauge!(REPLICATION_STREAMS, "namespace" => namespace.to_string()).set(count as f64);
        }
        let replicas: Vec<(String, Arc<ReplicaLag>)> = self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(namespace, lag)| (namespace.clone(), lag.clone()))
            .collect();
        for (namespace, lag) in replicas {
            let connected = if lag.connected.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
            gauge!(REPLICA_CONNECTED, "namespace" => namespace.clone()).set(connected);
            gauge!(REPLICA_LAG_FRAMES, "namespace" => namespace.clone()).set(lag.lag_frames() as f64);
            gauge!(REPLICA_LAG_SECONDS, "namespace" => namespace.clone()).set(lag.lag_seconds());
            let refused = lag.auth_refused.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            gauge!(REPLICA_AUTH_REFUSED, "namespace" => namespace).set(if refused { 1.0 } else { 0.0 });
        }
    }
}
