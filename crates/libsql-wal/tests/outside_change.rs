//! A database file written outside libsql-wal after a clean close (stock `sqlite3`, which
//! may open it once the log directory is gone) is logged whole at the next open, as one
//! commit: storage then holds the change and restore gives the file as it was found plus
//! what came after. Before, the log continued the old frame_no on top of pages storage
//! never had, and restore refused the namespace or rebuilt a database that never existed.
//! A file nothing wrote (reopened, or just restored) is not logged again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::{FileKind, Io, IoFile, StdIo};
use libsql_wal::{
    LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage, inspect, open_connection, restore,
};

fn local_store(dir: &Path) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    };
    Storage::open_with(&format!("file://{}", dir.display()), &[], config).unwrap()
}

fn manager(storage: &Storage) -> LibsqlWalManager {
    manager_on(storage, StdIo::shared())
}

fn manager_on(storage: &Storage, io: Arc<dyn Io>) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 64, segment_age_max: None, ..Default::default() };
    LibsqlWalManager::new(io, config).with_storage(storage.clone()).with_namespace("n").unwrap()
}

/// A file system that keeps whole seconds only (ext4 with 128-byte inodes, FAT, some
/// network ones): a time set is cut to its second.
struct WholeSeconds(Arc<dyn Io>);

impl Io for WholeSeconds {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn IoFile>> {
        self.0.open(path, create)
    }
    fn open_read_only(&self, path: &Path) -> std::io::Result<Box<dyn IoFile>> {
        self.0.open_read_only(path)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.0.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.0.sync_dir(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.0.list_dir(path)
    }
    fn canonicalize(&self, path: &Path) -> std::io::Result<PathBuf> {
        self.0.canonicalize(path)
    }
    fn kind(&self, path: &Path) -> std::io::Result<Option<FileKind>> {
        self.0.kind(path)
    }
    fn now(&self) -> SystemTime {
        self.0.now()
    }
    fn set_modified(&self, path: &Path, time: SystemTime) -> std::io::Result<()> {
        let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.0.set_modified(path, UNIX_EPOCH + Duration::from_secs(seconds))
    }
    fn random_u32(&self) -> u32 {
        self.0.random_u32()
    }
}

/// Commits `n` rows tagged `tag` and waits until storage has them; closes cleanly.
fn write_and_flush(db: &Path, storage: &Storage, tag: &str, n: usize) -> u64 {
    write_and_flush_on(db, storage, tag, n, StdIo::shared())
}

fn write_and_flush_on(db: &Path, storage: &Storage, tag: &str, n: usize, io: Arc<dyn Io>) -> u64 {
    let manager = manager_on(storage, io);
    let conn = open_connection(db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB)").unwrap();
    for _ in 0..n {
        conn.execute("INSERT INTO t(tag, v) VALUES (?1, randomblob(1500))", [tag]).unwrap();
    }
    flush_to_storage(db, Some(Duration::from_secs(60)), &manager).unwrap().expect("durable")
}

fn tags(db: &Path) -> Vec<(String, i64)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT tag, count(*) FROM t GROUP BY tag ORDER BY tag").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

fn integrity(db: &Path) -> String {
    Connection::open(db).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// The frames in the log right after an open with storage (nothing written).
fn frames_at_open(db: &Path, storage: &Storage) -> (u64, usize) {
    let manager = manager(storage);
    let _conn = open_connection(db, &manager).unwrap();
    let info = inspect(db, &manager).unwrap();
    (info.last_frame_no, info.segments.len())
}

#[test]
fn a_file_written_by_stock_sqlite_after_a_clean_close_is_logged_whole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("edited.db");
    let before = write_and_flush(&db, &storage, "ours", 30);
    assert!(!dir.path().join("edited.db-wal").exists(), "a clean close hands the file back");
    {
        // Stock SQLite, in its own WAL mode: new rows, fewer old ones.
        let stock = Connection::open(&db).unwrap();
        stock
            .execute_batch(
                "INSERT INTO t(tag, v) SELECT 'stock', randomblob(900) FROM t LIMIT 7;
                 DELETE FROM t WHERE tag = 'ours' AND id % 3 = 0;",
            )
            .unwrap();
    }
    let found = tags(&db);
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    let (last, segments) = frames_at_open(&db, &storage);
    assert_eq!(last, before + pages, "every page of the file, as one commit after the last known frame");
    assert!(segments >= 1);
    let end = write_and_flush(&db, &storage, "after", 2);
    let out = dir.path().join("restored.db");
    let report = restore(&storage, "n", &out, &mut |_, _| {}).unwrap();
    assert_eq!(report.frame_no, end);
    let mut expected = found.clone();
    expected.insert(0, ("after".to_string(), 2));
    assert_eq!(tags(&out), expected, "the file as stock SQLite left it, then our commits");
    assert_eq!(tags(&db), expected);
    assert_eq!(integrity(&out), "ok");
}

#[test]
fn a_file_nothing_wrote_is_not_logged_again() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("kept.db");
    let last = write_and_flush(&db, &storage, "ours", 30);
    // Read by stock SQLite (reading writes nothing), then reopened twice.
    assert_eq!(tags(&db), vec![("ours".to_string(), 30)]);
    for _ in 0..2 {
        assert_eq!(frames_at_open(&db, &storage), (last, 0));
    }
    // A restored copy is stamped for its mark too.
    let out = dir.path().join("restored.db");
    restore(&storage, "n", &out, &mut |_, _| {}).unwrap();
    assert_eq!(frames_at_open(&out, &storage), (last, 0));
}

/// Where the stamp cannot be kept, nothing can be told: a change is assumed, and the file
/// logged whole at each open. Before, such an open went on as if unchanged, and restore gave
/// a malformed database after a stock `sqlite3` edit (adversarial pass).
#[test]
fn where_no_stamp_is_kept_the_file_is_taken_as_changed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("coarse.db");
    let io: Arc<dyn Io> = Arc::new(WholeSeconds(StdIo::shared()));
    write_and_flush_on(&db, &storage, "ours", 30, io.clone());
    // A stock edit in the same second as the checkpoint: its time cannot tell it apart.
    Connection::open(&db).unwrap().execute_batch("DELETE FROM t WHERE id % 4 = 0").unwrap();
    let end = write_and_flush_on(&db, &storage, "after", 2, io);
    let out = dir.path().join("restored.db");
    assert_eq!(restore(&storage, "n", &out, &mut |_, _| {}).unwrap().frame_no, end);
    assert_eq!(tags(&out), tags(&db), "restore gives what the file holds");
    assert_eq!(integrity(&out), "ok");
}

/// A plain SQLite file opened with storage once without a commit: its base snapshot named a
/// lineage the file did not hold, so every later open drew another one and its own
/// namespace refused it for good, and restore had nothing (adversarial pass). The new
/// lineage is in the file's mark from the first open on.
#[test]
fn a_plain_file_opened_with_storage_without_a_commit_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("plain.db");
    {
        let stock = Connection::open(&db).unwrap();
        stock
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB); INSERT INTO t(tag) VALUES ('stock');",
            )
            .unwrap();
    }
    {
        let manager = manager(&storage);
        let conn = open_connection(&db, &manager).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        assert!(flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap().is_some());
    }
    let end = write_and_flush(&db, &storage, "ours", 3);
    let out = dir.path().join("restored.db");
    assert_eq!(restore(&storage, "n", &out, &mut |_, _| {}).unwrap().frame_no, end);
    assert_eq!(tags(&out), tags(&db));
    assert_eq!(tags(&db), vec![("ours".to_string(), 3), ("stock".to_string(), 1)]);
}
