//! The names of the crate's metrics and the handles the code paths count through (the
//! public face is [`crate::metrics`], which re-exports the names). A leaf: it names no other
//! module of the crate, so the log, segments, storage and the checkpointer may all count
//! through it.
//!
//! The handles are taken from the process's recorder once, at the first use, and kept:
//! counting a commit is then an atomic add (nothing at all without a recorder), with no
//! look-up, allocation or label formatting.

use std::sync::OnceLock;

use ::metrics::{Counter, Histogram, counter, histogram};

/// Counter: write transactions committed (one per commit frame written).
pub const COMMITS_TOTAL: &str = "libsql_wal_commits_total";
/// Counter: frames of committed transactions appended to segments (a page a transaction
/// wrote twice is one frame: it is rewritten in place).
pub const FRAMES_WRITTEN_TOTAL: &str = "libsql_wal_frames_written_total";
/// Counter, label `file` (`segment`, `database`, `directory`, `record`): fsyncs and
/// fdatasyncs a log issues — a segment (a FULL commit, a seal, recovery), the database file
/// (each checkpoint syncs it twice: the pages, then the mark), a directory (new or removed
/// segment names), the durable record (`<db>-wal/durable`).
pub const SYNCS_TOTAL: &str = "libsql_wal_syncs_total";
/// Counter: checkpoint steps that copied sealed segments into the database file.
pub const CHECKPOINTS_TOTAL: &str = "libsql_wal_checkpoints_total";
/// Counter: frames of the segments those steps copied and dropped.
pub const CHECKPOINTED_FRAMES_TOTAL: &str = "libsql_wal_checkpointed_frames_total";
/// Histogram (seconds): how long each of those steps took (copy, syncs, mark, removal).
pub const CHECKPOINT_DURATION_SECONDS: &str = "libsql_wal_checkpoint_duration_seconds";
/// Counter: checkpoints (background or foreground) that failed.
pub const CHECKPOINT_ERRORS_TOTAL: &str = "libsql_wal_checkpoint_errors_total";
/// Counter, label `kind` (`segment`, `snapshot`): objects the upload tasks stored (a
/// sealed segment, or the snapshot base of an empty namespace).
pub const UPLOADS_TOTAL: &str = "libsql_wal_uploads_total";
/// Counter, label `kind` (as above): bytes of those objects.
pub const UPLOADED_BYTES_TOTAL: &str = "libsql_wal_uploaded_bytes_total";
/// Counter: failed steps of the upload tasks (a request, a timeout, the durable record's
/// write), each retried after a backoff.
pub const UPLOAD_ERRORS_TOTAL: &str = "libsql_wal_upload_errors_total";
/// Gauge: logs open in the process, in use or idle.
pub const OPEN_LOGS: &str = "libsql_wal_open_logs";
/// Gauge: of those, logs without connections kept open (`keep_open_when_idle`).
pub const IDLE_LOGS: &str = "libsql_wal_idle_logs";
/// Gauge: descriptors the idle logs hold at most (what `set_idle_open_files_max` bounds).
pub const IDLE_LOG_OPEN_FILES: &str = "libsql_wal_idle_log_open_files";
/// Gauge, label `namespace`: the durable frame_no of an open log with storage (absent while
/// unknown).
pub const DURABLE_FRAME_NO: &str = "libsql_wal_durable_frame_no";
/// Gauge, label `namespace`: frames committed by an open log with storage that storage
/// does not hold yet (last commit − durable frame_no, which counts as 0 while unknown).
pub const STORAGE_LAG_FRAMES: &str = "libsql_wal_storage_lag_frames";
/// Gauge, label `namespace`: how long ago the oldest commit storage lacks was made (to its
/// segment's first commit), 0 when storage holds every commit.
pub const STORAGE_LAG_SECONDS: &str = "libsql_wal_storage_lag_seconds";
/// Gauge: the largest `libsql_wal_storage_lag_frames` of the open logs (0 without any).
pub const STORAGE_LAG_FRAMES_MAX: &str = "libsql_wal_storage_lag_frames_max";
/// Gauge: the largest `libsql_wal_storage_lag_seconds` of the open logs (0 without any).
pub const STORAGE_LAG_SECONDS_MAX: &str = "libsql_wal_storage_lag_seconds_max";

/// What a sync was of (the `file` label of [`SYNCS_TOTAL`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Synced {
    Segment,
    Database,
    Directory,
    Record,
}

/// What an upload stored (the `kind` label of [`UPLOADS_TOTAL`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Uploaded {
    Segment,
    Snapshot,
}

/// The handles of the counters and histograms, one per series.
pub(crate) struct Instruments {
    pub commits: Counter,
    pub frames_written: Counter,
    syncs: [Counter; 4],
    pub checkpoints: Counter,
    pub checkpointed_frames: Counter,
    pub checkpoint_duration: Histogram,
    pub checkpoint_errors: Counter,
    uploads: [Counter; 2],
    uploaded_bytes: [Counter; 2],
    pub upload_errors: Counter,
}

impl Instruments {
    fn new() -> Self {
        Instruments {
            commits: counter!(COMMITS_TOTAL),
            frames_written: counter!(FRAMES_WRITTEN_TOTAL),
            syncs: [
                counter!(SYNCS_TOTAL, "file" => "segment"),
                counter!(SYNCS_TOTAL, "file" => "database"),
                counter!(SYNCS_TOTAL, "file" => "directory"),
                counter!(SYNCS_TOTAL, "file" => "record"),
            ],
            checkpoints: counter!(CHECKPOINTS_TOTAL),
            checkpointed_frames: counter!(CHECKPOINTED_FRAMES_TOTAL),
            checkpoint_duration: histogram!(CHECKPOINT_DURATION_SECONDS),
            checkpoint_errors: counter!(CHECKPOINT_ERRORS_TOTAL),
            uploads: [counter!(UPLOADS_TOTAL, "kind" => "segment"), counter!(UPLOADS_TOTAL, "kind" => "snapshot")],
            uploaded_bytes: [
                counter!(UPLOADED_BYTES_TOTAL, "kind" => "segment"),
                counter!(UPLOADED_BYTES_TOTAL, "kind" => "snapshot"),
            ],
            upload_errors: counter!(UPLOAD_ERRORS_TOTAL),
        }
    }

    pub fn synced(&self, what: Synced) {
        self.syncs[what as usize].increment(1);
    }

    pub fn uploaded(&self, what: Uploaded, bytes: u64) {
        self.uploads[what as usize].increment(1);
        self.uploaded_bytes[what as usize].increment(bytes);
    }
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The handles, taken from the recorder installed at the first call.
pub(crate) fn get() -> &'static Instruments {
    INSTRUMENTS.get_or_init(Instruments::new)
}

/// Counts one sync of `what`.
pub(crate) fn synced(what: Synced) {
    get().synced(what);
}
