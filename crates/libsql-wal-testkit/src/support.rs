//! An `Io` for tests: the real file system, plus switches to slow down or fail writes to
//! database files (not segments), and counters of what happened.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use libsql_wal::io::{FileKind, Io, IoFile, StdIo};

#[derive(Default)]
pub struct Switches {
    /// Each write to a database file sleeps this long first.
    pub db_write_delay_ms: AtomicU64,
    /// Writes to database files fail with EIO while set (only to files whose name contains
    /// `fail_only_names_containing`, when that is set).
    pub fail_db_writes: AtomicBool,
    pub fail_only_names_containing: Mutex<Option<String>>,
    pub segment_syncs: AtomicU64,
    pub failed_db_writes: AtomicU64,
    /// Writers inside a database-file write right now, per file, and the most ever seen
    /// inside one file at once.
    in_db_write: Mutex<HashMap<PathBuf, usize>>,
    pub db_writers_max_per_file: AtomicUsize,
    /// The clock, stepped: `Io::now` is this many ms off the real time, and so are the
    /// modification times the writes to database files stamp while it is set (as the system
    /// clock stamps them; a file written before keeps its time).
    pub clock_offset_ms: AtomicI64,
}

impl Switches {
    /// A real time as the stepped clock reads it.
    fn shifted(&self, time: SystemTime) -> SystemTime {
        let offset = self.clock_offset_ms.load(Ordering::SeqCst);
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset < 0 { time - by } else { time + by }
    }

    /// After a write to the database file at `path`: its time as the stepped clock stamps it.
    fn stamp(&self, path: &Path) -> io::Result<()> {
        if self.clock_offset_ms.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        StdIo.set_modified(path, self.shifted(SystemTime::now()))
    }
}

pub struct TestIo {
    inner: StdIo,
    pub switches: Arc<Switches>,
}

impl TestIo {
    pub fn new() -> (Arc<TestIo>, Arc<Switches>) {
        let switches = Arc::new(Switches::default());
        (Arc::new(TestIo { inner: StdIo, switches: switches.clone() }), switches)
    }
}

struct TestFile {
    inner: Box<dyn IoFile>,
    path: PathBuf,
    is_segment: bool,
    is_db: bool,
    switches: Arc<Switches>,
}

impl IoFile for TestFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.is_db {
            return self.inner.write_all_at(buf, offset);
        }
        let s = &self.switches;
        {
            let mut inside = s.in_db_write.lock().unwrap();
            let n = inside.entry(self.path.clone()).or_default();
            *n += 1;
            s.db_writers_max_per_file.fetch_max(*n, Ordering::SeqCst);
        }
        let delay = s.db_write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let selected = match s.fail_only_names_containing.lock().unwrap().as_deref() {
            Some(part) => self.path.to_string_lossy().contains(part),
            None => true,
        };
        let result = if selected && s.fail_db_writes.load(Ordering::SeqCst) {
            s.failed_db_writes.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(5))
        } else {
            self.inner.write_all_at(buf, offset).and_then(|()| s.stamp(&self.path))
        };
        *s.in_db_write.lock().unwrap().get_mut(&self.path).unwrap() -= 1;
        result
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.is_segment {
            self.switches.segment_syncs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        if self.is_db { self.switches.stamp(&self.path) } else { Ok(()) }
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()
    }
    fn try_hold_byte(&self, offset: u64) -> io::Result<bool> {
        self.inner.try_hold_byte(offset)
    }
    fn release_byte(&self, offset: u64) -> io::Result<()> {
        self.inner.release_byte(offset)
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.locked_by_another_process(offset, len)
    }
}

impl Io for TestIo {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let is_segment = name.ends_with(".seg");
        let is_db = !is_segment && name != "lock" && !name.ends_with("-shm");
        Ok(Box::new(TestFile {
            inner: self.inner.open(path, create)?,
            path: path.to_path_buf(),
            is_segment,
            is_db,
            switches: self.switches.clone(),
        }))
    }
    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        self.inner.open_read_only(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_dir(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.inner.canonicalize(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        self.inner.kind(path)
    }
    fn now(&self) -> SystemTime {
        self.switches.shifted(self.inner.now())
    }
    fn random_u32(&self) -> u32 {
        self.inner.random_u32()
    }
}

/// Table `t` of 10,000 rows (`v` = 1 each), about 800 pages: far more than SQLite keeps
/// cached (~100 pages whatever `cache_size`), so a reader with a tiny cache goes back to the
/// log and the database file for nearly every page.
pub fn create_reader_table(conn: &libsql_sys::rusqlite::Connection) {
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, pad BLOB);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 10000)
         INSERT INTO t SELECT i, 1, zeroblob(300) FROM c;",
    )
    .unwrap();
}

/// `SELECT sum(v) FROM t`.
pub fn sum_v(conn: &libsql_sys::rusqlite::Connection) -> i64 {
    conn.query_row("SELECT sum(v) FROM t", [], |r| r.get(0)).unwrap()
}

/// Polls `done` every 10 ms; fails the test, saying what it waited for, after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A checkpointer that ticks and retries fast, so tests do not wait on its defaults.
pub fn fast_checkpointer(concurrency_max: usize) -> libsql_wal::Checkpointer {
    libsql_wal::Checkpointer::new(libsql_wal::CheckpointerConfig {
        concurrency_max,
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(200),
        tick: Duration::from_millis(10),
        seal_on_shutdown: true,
        worker_nice: 10,
    })
}

/// Points S3 clients at a port nobody listens on.
pub const DEAD_S3: [(&str, &str); 5] = [
    ("AWS_ENDPOINT", "http://127.0.0.1:9"),
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// Every file and directory under each of `roots` (a missing root counts as empty): its
/// bytes (files) and modification time, to show that a command changed nothing, not even a
/// file's time, and created nothing.
pub fn tree_state(roots: &[&Path]) -> std::collections::BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)> {
    fn walk(path: &Path, out: &mut std::collections::BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return };
        let bytes = meta.is_file().then(|| std::fs::read(path).unwrap());
        out.insert(path.to_path_buf(), (bytes, meta.modified().unwrap()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for root in roots {
        walk(root, &mut out);
    }
    out
}

/// Panics naming what differs between two [`tree_state`]s.
pub fn assert_same_tree(
    what: &str,
    before: &std::collections::BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>,
    after: &std::collections::BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>,
) {
    for (path, state) in after {
        match before.get(path) {
            None => panic!("{what} created {}", path.display()),
            Some(old) if old.0 != state.0 => panic!("{what} changed the bytes of {}", path.display()),
            Some(old) if old.1 != state.1 => panic!("{what} changed the mtime of {}", path.display()),
            Some(_) => {}
        }
    }
    for path in before.keys() {
        assert!(after.contains_key(path), "{what} removed {}", path.display());
    }
}
