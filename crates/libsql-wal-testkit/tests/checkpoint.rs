//! Synchronous checkpoints (`PRAGMA wal_checkpoint`): they never change what an open reader
//! sees (invariant 5), they report SQLite's numbers truthfully, TRUNCATE leaves no segment,
//! frame numbers keep counting across an emptied log and a reopen (invariant 3), and the
//! result is a plain SQLite file (invariant 6).

use libsql_wal_testkit::support as common;

use std::time::{Duration, Instant};

use libsql_sys::rusqlite::Connection;
use libsql_wal::{LibsqlWalManager, WalConfig, inspect, io::StdIo, open_connection, open_sqlite_connection};

fn checkpoint(conn: &Connection, mode: &str) -> (i64, i64, i64) {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap()
}

fn small_segments() -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max: 16, ..Default::default() })
}

#[test]
fn checkpoint_never_changes_what_an_open_reader_sees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let manager = small_segments();
    let writer = open_connection(&path, &manager).unwrap();
    common::create_reader_table(&writer);
    checkpoint(&writer, "TRUNCATE");
    let reader = open_connection(&path, &manager).unwrap();
    // A tiny cache and a table of ~800 pages: the reader goes back to the log and the file
    // for nearly every page (SQLite keeps a table of ~100 pages cached whatever cache_size).
    reader.execute_batch("PRAGMA cache_size = 2; BEGIN;").unwrap();
    let sum = common::sum_v;
    assert_eq!(sum(&reader), 10_000);
    for round in 0..8 {
        writer.execute_batch("UPDATE t SET v = v + 1").unwrap();
        let (busy, log, done) = checkpoint(&writer, "PASSIVE");
        assert_eq!(sum(&reader), 10_000, "round {round}: the reader's snapshot changed");
        assert_eq!(busy, 0);
        assert!(done < log, "round {round}: the checkpoint copied frames the reader may need ({done} of {log})");
    }
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(sum(&reader), 9 * 10_000);
    let (busy, log, done) = checkpoint(&writer, "FULL");
    assert_eq!((busy, log), (0, done), "with no reader left everything is checkpointed");
}

#[test]
fn full_checkpoint_waits_for_readers_through_the_busy_handler() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let manager = small_segments();
    let writer = open_connection(&path, &manager).unwrap();
    writer.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let reader = open_connection(&path, &manager).unwrap();
    reader.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
    let _: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    for i in 0..40 {
        writer.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    writer.busy_timeout(Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    let (busy, log, done) = checkpoint(&writer, "FULL");
    let waited = started.elapsed();
    assert_eq!(busy, 1, "a FULL checkpoint blocked by a reader must say busy ({log}, {done})");
    assert!(done < log);
    assert!(waited >= Duration::from_millis(150), "gave up after {waited:?}");
    reader.execute_batch("COMMIT").unwrap();
    let (busy, log, done) = checkpoint(&writer, "FULL");
    assert_eq!((busy, log), (0, done));
}

#[test]
fn truncate_leaves_no_segment_and_frame_numbers_keep_counting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let manager = small_segments();
    let conn = open_connection(&path, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x);").unwrap();
    for i in 0..50 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let before = inspect(&path, &manager).unwrap();
    assert!(before.segments.len() > 1, "expected several segments: {before:?}");
    assert_eq!(checkpoint(&conn, "TRUNCATE"), (0, 0, 0));
    let after = inspect(&path, &manager).unwrap();
    assert!(after.segments.is_empty(), "segments left after TRUNCATE: {after:?}");
    assert_eq!(after.last_frame_no, before.last_frame_no);
    conn.execute("INSERT INTO t VALUES (1000)", []).unwrap();
    let next = inspect(&path, &manager).unwrap();
    assert_eq!(next.segments[0].start_frame_no, before.last_frame_no + 1);
    let last = next.last_frame_no;
    drop(conn);
    // The last close checkpointed everything and removed the log; the count goes on.
    assert!(!dir.path().join("d.db-wal").exists());
    let conn = open_connection(&path, &manager).unwrap();
    conn.execute("INSERT INTO t VALUES (1001)", []).unwrap();
    let reopened = inspect(&path, &manager).unwrap();
    assert_eq!(reopened.segments[0].start_frame_no, last + 1, "frame numbers restarted after reopen");
}

/// The three numbers of `PRAGMA wal_checkpoint` are SQLite's, mode by mode.
#[test]
fn pragma_reports_what_sqlite_reports() {
    let dir = tempfile::tempdir().unwrap();
    let script = [
        "CREATE TABLE t(a, b)",
        "INSERT INTO t VALUES (1, zeroblob(3000))",
        "INSERT INTO t VALUES (2, zeroblob(3000))",
        "PRAGMA wal_checkpoint(PASSIVE)",
        "PRAGMA wal_checkpoint(PASSIVE)",
        "INSERT INTO t VALUES (3, zeroblob(3000))",
        "PRAGMA wal_checkpoint(FULL)",
        "INSERT INTO t VALUES (4, zeroblob(3000))",
        "INSERT INTO t VALUES (5, zeroblob(3000))",
        "PRAGMA wal_checkpoint(RESTART)",
        "INSERT INTO t VALUES (6, zeroblob(3000))",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA wal_checkpoint",
        "INSERT INTO t VALUES (7, zeroblob(3000))",
        "PRAGMA wal_checkpoint(PASSIVE)",
    ];
    let run = |conn: &Connection| -> Vec<String> {
        let mut reported = Vec::new();
        for sql in script {
            if sql.starts_with("PRAGMA") {
                let (a, b, c): (i64, i64, i64) =
                    conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
                reported.push(format!("{sql}: {a}|{b}|{c}"));
            } else {
                conn.execute_batch(sql).unwrap();
            }
        }
        reported
    };
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let theirs = run(&open_sqlite_connection(dir.path().join("a/d.db")).unwrap());
    let ours = run(&open_connection(dir.path().join("b/d.db"), &LibsqlWalManager::default()).unwrap());
    assert_eq!(ours, theirs);
}

#[test]
fn after_the_last_close_stock_sqlite_reads_a_plain_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let conn = open_connection(&path, &small_segments()).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(x INTEGER PRIMARY KEY, y);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000)
         INSERT INTO t SELECT i, hex(randomblob(50)) FROM c;
         DELETE FROM t WHERE x % 7 = 0;",
    )
    .unwrap();
    drop(conn);
    assert!(!dir.path().join("d.db-wal").exists(), "the log directory outlived the last connection");
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT count(*) FROM t; PRAGMA integrity_check;")
        .output()
        .expect("stock sqlite3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\nok\n", 5000 - 5000 / 7));
}
