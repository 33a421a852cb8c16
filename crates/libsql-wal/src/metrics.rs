//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: the crate counts
//! commits, frames, syncs, checkpoints and uploads as they happen, and sets gauges of the
//! open logs and of the storage lag when asked ([`update_gauges`]). Without a recorder
//! installed nothing is recorded and the counting costs next to nothing.
//!
//! # Using them
//!
//! Install a recorder (for example `metrics-exporter-prometheus`'s, as `libsql-wal serve`
//! does for its `GET /metrics`) with `metrics::set_global_recorder` **before the first
//! database is opened**: the crate takes its counter and histogram handles from the global
//! recorder at their first use and keeps them (so a commit counts with one atomic add, no
//! look-up), so a recorder installed later, or a thread-local one
//! (`metrics::with_local_recorder`), sees none of them. Then call [`update_gauges`] right
//! before each scrape or export. [`describe`] registers each metric's help text.
//!
//! # The metrics
//!
//! Every name is a `pub const` below, with its type, labels and meaning; [`METRICS`] lists
//! them as data. Counters (`_total`) count from the process start, summed over every log of
//! the process:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `libsql_wal_commits_total` | counter | | write transactions committed |
//! | `libsql_wal_frames_written_total` | counter | | frames of committed transactions |
//! | `libsql_wal_syncs_total` | counter | `file`: `segment`, `database`, `directory`, `record` | fsync/fdatasync calls of the logs |
//! | `libsql_wal_checkpoints_total` | counter | | checkpoint steps that copied segments into the database file |
//! | `libsql_wal_checkpointed_frames_total` | counter | | frames those steps copied and dropped |
//! | `libsql_wal_checkpoint_duration_seconds` | histogram | | how long each step took |
//! | `libsql_wal_checkpoint_errors_total` | counter | | failed checkpoints |
//! | `libsql_wal_uploads_total` | counter | `kind`: `segment`, `snapshot` | objects uploaded |
//! | `libsql_wal_uploaded_bytes_total` | counter | `kind` | bytes uploaded |
//! | `libsql_wal_upload_errors_total` | counter | | failed upload steps (each retried) |
//! | `libsql_wal_open_logs` | gauge | | logs open, in use or idle |
//! | `libsql_wal_idle_logs` | gauge | | idle logs kept open |
//! | `libsql_wal_idle_log_open_files` | gauge | | descriptors idle logs hold |
//! | `libsql_wal_durable_frame_no` | gauge | `namespace` | durable frame_no of an open log |
//! | `libsql_wal_storage_lag_frames` | gauge | `namespace` | frames committed, not yet in storage |
//! | `libsql_wal_storage_lag_seconds` | gauge | `namespace` | age of the oldest commit storage lacks |
//! | `libsql_wal_storage_lag_frames_max` | gauge | | the largest lag in frames of the open logs |
//! | `libsql_wal_storage_lag_seconds_max` | gauge | | the largest lag in seconds of the open logs |
//!
//! # Bounded series
//!
//! Labels take values from short fixed lists (`file`, `kind`), except `namespace`, and a
//! namespace label is only ever set by [`update_gauges`], only for the logs **open** in
//! the process at that moment **with storage**. Open logs are bounded: idle ones by the
//! registry's descriptor budget (`set_idle_open_files_max`, 256 by default, three or more
//! per log), the rest by the connections in use. So with thousands of namespaces a call
//! sets at most as many namespace series as logs are open, not one per namespace ever
//! used. A log that closes is no longer updated: its series keep their last values in a
//! recorder that never forgets a series, so such a recorder should drop gauges not updated
//! for a while (`metrics-exporter-prometheus`: `idle_timeout(MetricKindMask::GAUGE, …)`;
//! `libsql-wal serve` drops them at the first scrape that no longer updates them). Nothing
//! is labeled on the commit path.

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};

pub use crate::instruments::{
    CHECKPOINT_DURATION_SECONDS, CHECKPOINT_ERRORS_TOTAL, CHECKPOINTED_FRAMES_TOTAL, CHECKPOINTS_TOTAL, COMMITS_TOTAL,
    DURABLE_FRAME_NO, FRAMES_WRITTEN_TOTAL, IDLE_LOG_OPEN_FILES, IDLE_LOGS, OPEN_LOGS, STORAGE_LAG_FRAMES,
    STORAGE_LAG_FRAMES_MAX, STORAGE_LAG_SECONDS, STORAGE_LAG_SECONDS_MAX, SYNCS_TOTAL, UPLOAD_ERRORS_TOTAL,
    UPLOADED_BYTES_TOTAL, UPLOADS_TOTAL,
};

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the crate: its name, type, label names and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn info(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> MetricInfo {
    MetricInfo { name, kind, labels, help }
}

/// Every metric the crate emits.
pub const METRICS: &[MetricInfo] = {
    use MetricKind::{Counter, Gauge, Histogram};
    &[
        info(COMMITS_TOTAL, Counter, &[], "Write transactions committed."),
        info(FRAMES_WRITTEN_TOTAL, Counter, &[], "Frames of committed transactions appended to segments."),
        info(
            SYNCS_TOTAL,
            Counter,
            &["file"],
            "fsync/fdatasync calls of the logs, by file (segment, database, directory, record).",
        ),
        info(CHECKPOINTS_TOTAL, Counter, &[], "Checkpoint steps that copied sealed segments into the database file."),
        info(CHECKPOINTED_FRAMES_TOTAL, Counter, &[], "Frames copied and dropped by checkpoints."),
        info(
            CHECKPOINT_DURATION_SECONDS,
            Histogram,
            &[],
            "Duration of each checkpoint step (copy, syncs, mark, removal).",
        ),
        info(CHECKPOINT_ERRORS_TOTAL, Counter, &[], "Checkpoints that failed."),
        info(UPLOADS_TOTAL, Counter, &["kind"], "Objects uploaded to storage, by kind (segment, snapshot)."),
        info(UPLOADED_BYTES_TOTAL, Counter, &["kind"], "Bytes uploaded to storage, by kind."),
        info(UPLOAD_ERRORS_TOTAL, Counter, &[], "Failed upload steps (each is retried)."),
        info(OPEN_LOGS, Gauge, &[], "Logs open in the process, in use or idle."),
        info(IDLE_LOGS, Gauge, &[], "Logs without connections kept open."),
        info(IDLE_LOG_OPEN_FILES, Gauge, &[], "File descriptors the idle logs hold at most."),
        info(DURABLE_FRAME_NO, Gauge, &["namespace"], "Durable frame_no of an open log with storage."),
        info(
            STORAGE_LAG_FRAMES,
            Gauge,
            &["namespace"],
            "Frames committed by an open log that storage does not hold yet.",
        ),
        info(
            STORAGE_LAG_SECONDS,
            Gauge,
            &["namespace"],
            "Age of the oldest commit of an open log that storage does not hold yet.",
        ),
        info(STORAGE_LAG_FRAMES_MAX, Gauge, &[], "The largest storage lag in frames of the open logs."),
        info(STORAGE_LAG_SECONDS_MAX, Gauge, &[], "The largest storage lag in seconds of the open logs."),
    ]
};

/// Registers the help text (and unit) of every metric with the installed recorder.
pub fn describe() {
    for metric in METRICS {
        let unit = if metric.name.ends_with("_seconds") || metric.name.ends_with("_seconds_max") {
            Some(Unit::Seconds)
        } else if metric.name.ends_with("_bytes_total") {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (metric.kind, unit) {
            (MetricKind::Counter, Some(unit)) => describe_counter!(metric.name, unit, metric.help),
            (MetricKind::Counter, None) => describe_counter!(metric.name, metric.help),
            (MetricKind::Gauge, Some(unit)) => describe_gauge!(metric.name, unit, metric.help),
            (MetricKind::Gauge, None) => describe_gauge!(metric.name, metric.help),
            (MetricKind::Histogram, Some(unit)) => describe_histogram!(metric.name, unit, metric.help),
            (MetricKind::Histogram, None) => describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Sets the gauges: open and idle logs, and for each log open with storage its durable
/// frame_no and lag (labeled by namespace; see *Bounded series* above), plus the largest
/// lags. Call it right before a scrape; it takes the registry's lock for a moment, then
/// looks at each open log on its own.
pub fn update_gauges() {
    let stats = crate::registry::registry_stats();
    gauge!(OPEN_LOGS).set(stats.logs as f64);
    gauge!(IDLE_LOGS).set(stats.idle_logs as f64);
    gauge!(IDLE_LOG_OPEN_FILES).set(stats.idle_open_files as f64);
    let (mut frames_max, mut seconds_max) = (0u64, 0f64);
    for log in crate::registry::live_logs() {
        let Some(lag) = log.storage_lag() else { continue };
        let namespace = lag.namespace;
        if let Some(durable) = lag.durable_frame_no {
            gauge!(DURABLE_FRAME_NO, "namespace" => namespace.clone()).set(durable as f64);
        }
        gauge!(STORAGE_LAG_FRAMES, "namespace" => namespace.clone()).set(lag.frames as f64);
        gauge!(STORAGE_LAG_SECONDS, "namespace" => namespace).set(lag.seconds);
        frames_max = frames_max.max(lag.frames);
        seconds_max = seconds_max.max(lag.seconds);
    }
    gauge!(STORAGE_LAG_FRAMES_MAX).set(frames_max as f64);
    gauge!(STORAGE_LAG_SECONDS_MAX).set(seconds_max);
}
