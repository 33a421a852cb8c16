//! `PRAGMA synchronous`: under FULL every commit is synced to the segment file before COMMIT
//! returns; under NORMAL commits are not synced (only seals and checkpoints sync). Counted
//! through an `Io` that wraps the real one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use libsql_wal::io::{FileKind, Io, IoFile, StdIo};
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

/// Counts `sync_data` calls on segment files.
struct CountingIo {
    inner: StdIo,
    segment_syncs: Arc<AtomicU64>,
}

struct CountingFile {
    inner: Box<dyn IoFile>,
    is_segment: bool,
    segment_syncs: Arc<AtomicU64>,
}

impl IoFile for CountingFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.is_segment {
            self.segment_syncs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()
    }
    fn try_lock_byte(&self, offset: u64) -> io::Result<bool> {
        self.inner.try_lock_byte(offset)
    }
}

impl Io for CountingIo {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        Ok(Box::new(CountingFile {
            inner: self.inner.open(path, create)?,
            is_segment: path.extension().is_some_and(|e| e == "seg"),
            segment_syncs: self.segment_syncs.clone(),
        }))
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
        self.inner.now()
    }
    fn random_u32(&self) -> u32 {
        self.inner.random_u32()
    }
}

/// Commits `commits` one-row transactions under `synchronous` and returns the segment syncs
/// they caused.
fn syncs_for(synchronous: &str, commits: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let segment_syncs = Arc::new(AtomicU64::new(0));
    let io = Arc::new(CountingIo { inner: StdIo, segment_syncs: segment_syncs.clone() });
    // Large segments: no seal (which syncs) happens during the measured commits.
    let config = WalConfig { segment_frames_max: 1_000_000, ..Default::default() };
    let manager = LibsqlWalManager::new(io, config);
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = {synchronous}; CREATE TABLE t(x); INSERT INTO t VALUES (0);"
    ))
    .unwrap();
    let before = segment_syncs.load(Ordering::SeqCst);
    for i in 0..commits {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    segment_syncs.load(Ordering::SeqCst) - before
}

#[test]
fn synchronous_full_syncs_every_commit() {
    let syncs = syncs_for("FULL", 50);
    assert!(syncs >= 50, "50 FULL commits made only {syncs} segment syncs");
}

#[test]
fn synchronous_normal_does_not_sync_commits() {
    let syncs = syncs_for("NORMAL", 50);
    assert_eq!(syncs, 0, "NORMAL commits synced the segment {syncs} times");
}
