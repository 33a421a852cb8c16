//! One writer at a time, SQLite's way: a second writer gets SQLITE_BUSY at once (the thread
//! is never parked, so two connections on one thread cannot deadlock), `busy_timeout` makes
//! it retry for about that long, and a reader whose snapshot went stale gets
//! SQLITE_BUSY_SNAPSHOT when it tries to write.

use std::time::{Duration, Instant};

use libsql_sys::rusqlite::{self, ffi};
use libsql_wal::{LibsqlWalManager, open_connection};

fn extended_code(e: &rusqlite::Error) -> i32 {
    e.sqlite_error().map_or(-1, |e| e.extended_code)
}

fn setup() -> (tempfile::TempDir, LibsqlWalManager) {
    let dir = tempfile::tempdir().unwrap();
    let manager = LibsqlWalManager::default();
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    (dir, manager)
}

#[test]
fn second_writer_on_the_same_thread_gets_busy_at_once() {
    let (dir, manager) = setup();
    let a = open_connection(dir.path().join("d.db"), &manager).unwrap();
    let b = open_connection(dir.path().join("d.db"), &manager).unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);").unwrap();
    let started = Instant::now();
    let err = b.execute_batch("BEGIN IMMEDIATE").unwrap_err();
    assert_eq!(extended_code(&err), ffi::SQLITE_BUSY, "{err}");
    assert!(started.elapsed() < Duration::from_millis(100), "took {:?}", started.elapsed());
    // The first writer is unaffected and commits; then the second can write.
    a.execute_batch("COMMIT").unwrap();
    b.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (3); COMMIT;").unwrap();
    let n: i64 = a.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
}

#[test]
fn busy_timeout_waits_about_that_long_then_fails() {
    let (dir, manager) = setup();
    let a = open_connection(dir.path().join("d.db"), &manager).unwrap();
    let b = open_connection(dir.path().join("d.db"), &manager).unwrap();
    b.busy_timeout(Duration::from_millis(200)).unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);").unwrap();
    let started = Instant::now();
    let err = b.execute_batch("INSERT INTO t VALUES (3)").unwrap_err();
    let waited = started.elapsed();
    assert_eq!(extended_code(&err), ffi::SQLITE_BUSY, "{err}");
    assert!(waited >= Duration::from_millis(190), "gave up after {waited:?}, before the timeout");
    assert!(waited < Duration::from_millis(1500), "waited {waited:?}: the timeout was not honoured");
    a.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn busy_timeout_succeeds_when_the_writer_finishes_in_time() {
    let (dir, manager) = setup();
    let path = dir.path().join("d.db");
    let a = open_connection(&path, &manager).unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);").unwrap();
    let other = std::thread::spawn({
        let manager = manager.clone();
        move || {
            let b = open_connection(&path, &manager).unwrap();
            b.busy_timeout(Duration::from_secs(5)).unwrap();
            b.execute_batch("INSERT INTO t VALUES (3)").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    a.execute_batch("COMMIT").unwrap();
    other.join().unwrap();
    let n: i64 = a.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
}

#[test]
fn stale_reader_that_writes_gets_busy_snapshot() {
    let (dir, manager) = setup();
    let a = open_connection(dir.path().join("d.db"), &manager).unwrap();
    let b = open_connection(dir.path().join("d.db"), &manager).unwrap();
    b.execute_batch("BEGIN").unwrap();
    let before: i64 = b.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    a.execute_batch("INSERT INTO t VALUES (2)").unwrap();
    let err = b.execute_batch("INSERT INTO t VALUES (3)").unwrap_err();
    assert_eq!(extended_code(&err), ffi::SQLITE_BUSY_SNAPSHOT, "{err}");
    // The stale snapshot is still readable and unchanged.
    let still: i64 = b.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(still, before);
    b.execute_batch("ROLLBACK").unwrap();
    b.execute_batch("INSERT INTO t VALUES (3)").unwrap();
    let n: i64 = a.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
}
