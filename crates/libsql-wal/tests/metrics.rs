//! `libsql_wal::metrics`: the counters move with real work — commits, frames, syncs (segment,
//! database file, directory, durable record), checkpoints (runs, their duration, a failure),
//! uploads to a `file://` store (count, bytes, a failure) — and `update_gauges` sets the open
//! logs and, per namespace of an open log with storage, the durable frame_no and the lag.
//!
//! One recorder for the whole binary, installed before any database is opened (the crate
//! takes its handles at their first use); the tests run in parallel, so each one compares
//! counters before and after its own work (they only grow) and uses its own namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libsql_wal::io::{FileKind, Io, IoFile, StdIo};
use libsql_wal::metrics::{self as m, update_gauges};
use libsql_wal::{CheckpointMode, LibsqlWalManager, Storage, StorageConfig, WalConfig, checkpoint, open_connection};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// A recorder keeping every series by its rendered key, `name{label=value,…}` (labels
/// sorted): counters and gauges as atomics, histograms as their samples. Nothing is reset
/// when read.
#[derive(Clone, Default)]
struct TestRecorder {
    counters: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    gauges: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    histograms: Arc<Mutex<HashMap<String, Arc<Samples>>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    if labels.is_empty() { key.name().to_string() } else { format!("{}{{{}}}", key.name(), labels.join(",")) }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counters.lock().unwrap().entry(render(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.gauges.lock().unwrap().entry(render(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.lock().unwrap().entry(render(key)).or_default().clone())
    }
}

impl TestRecorder {
    fn counter(&self, key: &str) -> u64 {
        self.counters.lock().unwrap().get(key).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn gauge(&self, key: &str) -> Option<f64> {
        self.gauges.lock().unwrap().get(key).map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        self.histograms.lock().unwrap().get(key).map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = TestRecorder::default();
        metrics::set_global_recorder(recorder.clone()).expect("the only recorder of this binary");
        m::describe();
        recorder
    })
}

fn labeled(name: &str, label: &str, value: &str) -> String {
    format!("{name}{{{label}={value}}}")
}

fn local_manager(config: WalConfig) -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), config)
}

fn quiet_config() -> WalConfig {
    WalConfig { segment_age_max: None, ..WalConfig::default() }
}

fn store(dir: &Path) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(50),
        ..StorageConfig::default()
    };
    Storage::open_with(&format!("file://{}", dir.display()), &[], config).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn commits_frames_syncs_and_checkpoints_are_counted() {
    let r = recorder();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("local.db");
    let manager = local_manager(WalConfig { checkpoint_on_close: false, ..quiet_config() });
    let segment_syncs = labeled(m::SYNCS_TOTAL, "file", "segment");
    let db_syncs = labeled(m::SYNCS_TOTAL, "file", "database");
    let dir_syncs = labeled(m::SYNCS_TOTAL, "file", "directory");
    let (commits, frames, syncs) =
        (r.counter(m::COMMITS_TOTAL), r.counter(m::FRAMES_WRITTEN_TOTAL), r.counter(&segment_syncs));
    let (dirs, checkpoints, checkpointed) =
        (r.counter(&dir_syncs), r.counter(m::CHECKPOINTS_TOTAL), r.counter(m::CHECKPOINTED_FRAMES_TOTAL));

    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(x)").unwrap();
    for i in 0..20 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    // 21 commits, each of at least one frame, each synced (FULL), the first segment's name too.
    assert!(r.counter(m::COMMITS_TOTAL) >= commits + 21);
    assert!(r.counter(m::FRAMES_WRITTEN_TOTAL) >= frames + 21);
    assert!(r.counter(&segment_syncs) >= syncs + 21);
    assert!(r.counter(&dir_syncs) > dirs);

    let (db_before, samples_before) = (r.counter(&db_syncs), r.samples(m::CHECKPOINT_DURATION_SECONDS).len());
    let result = checkpoint(&db, CheckpointMode::Truncate, &manager).unwrap();
    assert!(!result.busy);
    assert!(r.counter(m::CHECKPOINTS_TOTAL) > checkpoints);
    assert!(r.counter(m::CHECKPOINTED_FRAMES_TOTAL) >= checkpointed + 21);
    assert!(r.counter(&db_syncs) >= db_before + 2, "the pages, then the mark");
    let samples = r.samples(m::CHECKPOINT_DURATION_SECONDS);
    assert!(samples.len() > samples_before);
    assert!(samples.iter().all(|&s| (0.0..60.0).contains(&s)), "{samples:?}");
    drop(conn);

    // The log is closed now: it counts in no gauge.
    update_gauges();
    assert!(r.gauge(m::OPEN_LOGS).is_some());
}

/// StdIo, but every fdatasync of a `.db` file fails: checkpoints fail, commits do not.
struct FailingDbSync;

struct FailingFile(Box<dyn IoFile>, bool);

impl IoFile for FailingFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.1 { Err(std::io::Error::other("injected: sync of the database file")) } else { self.0.sync_data() }
    }
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn try_lock_exclusive(&self) -> std::io::Result<bool> {
        self.0.try_lock_exclusive()
    }
    fn unlock(&self) -> std::io::Result<()> {
        self.0.unlock()
    }
    fn try_hold_byte(&self, offset: u64) -> std::io::Result<bool> {
        self.0.try_hold_byte(offset)
    }
    fn release_byte(&self, offset: u64) -> std::io::Result<()> {
        self.0.release_byte(offset)
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.0.locked_by_another_process(offset, len)
    }
}

fn is_db(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "db")
}

impl Io for FailingDbSync {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn IoFile>> {
        Ok(Box::new(FailingFile(StdIo.open(path, create)?, is_db(path))))
    }
    fn open_read_only(&self, path: &Path) -> std::io::Result<Box<dyn IoFile>> {
        Ok(Box::new(FailingFile(StdIo.open_read_only(path)?, is_db(path))))
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        StdIo.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        StdIo.sync_dir(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<PathBuf>> {
        StdIo.list_dir(path)
    }
    fn canonicalize(&self, path: &Path) -> std::io::Result<PathBuf> {
        StdIo.canonicalize(path)
    }
    fn kind(&self, path: &Path) -> std::io::Result<Option<FileKind>> {
        StdIo.kind(path)
    }
    fn now(&self) -> std::time::SystemTime {
        StdIo.now()
    }
    fn random_u32(&self) -> u32 {
        StdIo.random_u32()
    }
}

#[test]
fn a_failed_checkpoint_is_counted() {
    let r = recorder();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("failing.db");
    let config = WalConfig { checkpoint_on_close: false, ..quiet_config() };
    let manager = LibsqlWalManager::new(Arc::new(FailingDbSync), config);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)").unwrap();
    let errors = r.counter(m::CHECKPOINT_ERRORS_TOTAL);
    assert!(checkpoint(&db, CheckpointMode::Truncate, &manager).is_err());
    assert!(r.counter(m::CHECKPOINT_ERRORS_TOTAL) > errors);
    drop(conn);
}

#[test]
fn uploads_and_the_durable_gauges_follow_storage() {
    let r = recorder();
    let dir = tempfile::tempdir().unwrap();
    let storage = store(&dir.path().join("store"));
    let db = dir.path().join("shipped.db");
    let manager = local_manager(quiet_config()).with_storage(storage).with_namespace("metrics-shipped").unwrap();
    let (segment_uploads, segment_bytes) =
        (labeled(m::UPLOADS_TOTAL, "kind", "segment"), labeled(m::UPLOADED_BYTES_TOTAL, "kind", "segment"));
    let (uploads, bytes, records) =
        (r.counter(&segment_uploads), r.counter(&segment_bytes), r.counter(&labeled(m::SYNCS_TOTAL, "file", "record")));
    let (durable, lag, lag_seconds) = (
        labeled(m::DURABLE_FRAME_NO, "namespace", "metrics-shipped"),
        labeled(m::STORAGE_LAG_FRAMES, "namespace", "metrics-shipped"),
        labeled(m::STORAGE_LAG_SECONDS, "namespace", "metrics-shipped"),
    );

    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for i in 0..10 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    // Nothing sealed yet, so nothing durable: the lag is every frame committed.
    update_gauges();
    assert!(r.gauge(&lag).is_some_and(|l| l >= 11.0), "lag {:?}", r.gauge(&lag));
    assert!(r.gauge(&lag_seconds).is_some_and(|s| s >= 0.0));
    assert!(r.gauge(m::STORAGE_LAG_FRAMES_MAX).is_some_and(|l| l >= 11.0));
    assert!(r.gauge(m::OPEN_LOGS).is_some_and(|n| n >= 1.0));

    let last = libsql_wal::flush_to_storage(&db, Some(Duration::from_secs(20)), &manager).unwrap().unwrap();
    assert!(r.counter(&segment_uploads) > uploads);
    assert!(r.counter(&segment_bytes) > bytes + 11 * 4096, "a segment of 11 frames at least");
    assert!(r.counter(&labeled(m::SYNCS_TOTAL, "file", "record")) > records);
    update_gauges();
    assert_eq!(r.gauge(&durable), Some(last as f64));
    assert_eq!(r.gauge(&lag), Some(0.0));
    assert_eq!(r.gauge(&lag_seconds), Some(0.0));
    drop(conn);
}

#[test]
fn a_failed_upload_is_counted() {
    let r = recorder();
    let dir = tempfile::tempdir().unwrap();
    // The store's directory is a regular file: every request fails (and is retried).
    let blocked = dir.path().join("store");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let storage = store(&blocked);
    let db = dir.path().join("stuck.db");
    let manager = local_manager(quiet_config()).with_storage(storage).with_namespace("metrics-stuck").unwrap();
    let errors = r.counter(m::UPLOAD_ERRORS_TOTAL);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)").unwrap();
    assert!(libsql_wal::flush_to_storage(&db, Some(Duration::from_millis(200)), &manager).unwrap().is_none());
    wait_until("a failed upload step", || r.counter(m::UPLOAD_ERRORS_TOTAL) > errors);
    update_gauges();
    let lag = labeled(m::STORAGE_LAG_FRAMES, "namespace", "metrics-stuck");
    assert!(r.gauge(&lag).is_some_and(|l| l >= 2.0), "lag {:?}", r.gauge(&lag));
    // The empty store was listed (a missing directory reads as empty): nothing durable.
    let durable = r.gauge(&labeled(m::DURABLE_FRAME_NO, "namespace", "metrics-stuck"));
    assert!(durable.unwrap_or(0.0) == 0.0, "durable {durable:?}");
    drop(conn);
}

#[test]
fn a_snapshot_base_is_counted_as_one() {
    let r = recorder();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("existing.db");
    // A database with history before storage: checkpointed into its file at the last close.
    let conn = open_connection(&db, &local_manager(quiet_config())).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)").unwrap();
    drop(conn);
    let (snapshots, bytes) =
        (labeled(m::UPLOADS_TOTAL, "kind", "snapshot"), labeled(m::UPLOADED_BYTES_TOTAL, "kind", "snapshot"));
    let (before, bytes_before) = (r.counter(&snapshots), r.counter(&bytes));
    let storage = store(&dir.path().join("store"));
    let manager = local_manager(quiet_config()).with_storage(storage).with_namespace("metrics-existing").unwrap();
    let conn = open_connection(&db, &manager).unwrap();
    wait_until("the snapshot base", || r.counter(&snapshots) > before);
    assert!(r.counter(&bytes) >= bytes_before + 2 * 4096, "two pages at least");
    drop(conn);
}

#[test]
fn every_metric_is_listed_once() {
    let mut names: Vec<&str> = m::METRICS.iter().map(|i| i.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), m::METRICS.len());
    for info in m::METRICS {
        assert!(info.name.starts_with("libsql_wal_"), "{}", info.name);
        match info.kind {
            m::MetricKind::Counter => assert!(info.name.ends_with("_total"), "{}", info.name),
            _ => assert!(!info.name.ends_with("_total"), "{}", info.name),
        }
    }
    // ARCHITECTURE.md names each of them.
    let architecture =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md")).unwrap();
    for info in m::METRICS {
        assert!(architecture.contains(info.name), "ARCHITECTURE.md does not name {}", info.name);
    }
}
