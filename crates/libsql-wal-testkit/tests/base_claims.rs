//! The base of an empty namespace is claimed once. A database whose log does not start at
//! frame 1 uploads a snapshot of its file first; a second snapshot landing at the same moment
//! is another copy's claim (the log diverges) unless it is the very same state, which a
//! closed log's last PUT or a dead process's can leave. And a closed log stops uploading:
//! its next owner in the same process is not raced by it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage, open_connection, restore};
use libsql_wal_testkit::object_stores::InstrumentedStore;

/// A database made by plain SQLite (rollback journal): storage added to it later must start
/// from a snapshot of its file.
fn existing_database(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB)").unwrap();
    for i in 0..20 {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(1000))", [i]).unwrap();
    }
}

fn storage(store: &Arc<InstrumentedStore>) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    };
    Storage::with_object_store("twins://", store.clone(), config)
}

fn manager(storage: &Storage) -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
        .with_storage(storage.clone())
        .with_namespace("n")
        .unwrap()
}

fn snapshots(store: &InstrumentedStore) -> Vec<String> {
    store.keys().into_iter().filter(|k| k.contains("/snapshots/")).collect()
}

fn rows(conn: &Connection) -> Vec<(i64, Vec<u8>)> {
    let mut stmt = conn.prepare("SELECT i, v FROM t ORDER BY i").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn the_same_base_landing_twice_is_one_claim() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("same.db");
    existing_database(&db);
    let store = InstrumentedStore::new();
    store.twin_next_snapshot(|bytes| bytes.to_vec());
    let storage = storage(&store);
    let manager = manager(&storage);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute("INSERT INTO t VALUES (100, x'01')", []).unwrap();
    let durable = flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap();
    assert!(durable.is_some(), "the twin is the same state: the log continues it");
    assert_eq!(snapshots(&store).len(), 1, "the redundant copy is removed: {:?}", store.keys());
    let out = dir.path().join("restored.db");
    restore(&storage, "n", &out, &mut |_, _| {}).unwrap();
    assert_eq!(rows(&Connection::open(&out).unwrap()), rows(&conn));
}

#[test]
fn a_different_base_landing_at_the_same_moment_still_diverges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("other.db");
    existing_database(&db);
    let store = InstrumentedStore::new();
    // Another copy's file: one byte of page 2 differs, the object is otherwise well formed.
    store.twin_next_snapshot(|bytes| {
        const HEADER: usize = 64;
        const PAGE: usize = 4096;
        let mut twin = bytes.to_vec();
        twin[HEADER + PAGE + 100] ^= 0xff;
        let pages = &twin[HEADER..twin.len() - 16];
        let checksum = crc32c::crc32c(pages);
        let at = twin.len() - 16;
        twin[at..at + 4].copy_from_slice(&checksum.to_le_bytes());
        twin
    });
    let storage = storage(&store);
    let manager = manager(&storage);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute("INSERT INTO t VALUES (100, x'01')", []).unwrap();
    let error = flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap_err().to_string();
    assert!(error.contains("another copy claimed the empty namespace"), "{error}");
}

#[test]
fn a_closed_log_uploads_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("closed.db");
    existing_database(&db);
    let store = InstrumentedStore::new();
    let storage = storage(&store);
    store.set_put_delay(Duration::from_millis(800));
    {
        let manager = manager(&storage);
        let _conn = open_connection(&db, &manager).unwrap();
        // Its upload task lists the namespace (empty) and starts the snapshot's PUT.
        std::thread::sleep(Duration::from_millis(200));
    } // Closed while that PUT is on its way.
    store.set_put_delay(Duration::ZERO);
    let manager = manager(&storage);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute("INSERT INTO t VALUES (100, x'01')", []).unwrap();
    let durable = flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap();
    assert!(durable.is_some());
    // The closed log's PUT would have landed by now.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(snapshots(&store).len(), 1, "only the open log's base: {:?}", store.keys());
}
