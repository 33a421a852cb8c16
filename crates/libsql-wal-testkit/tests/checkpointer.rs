//! The background checkpointer: a bounded number of checkpoints at once across databases,
//! never two at once on one database, retries after failures until they succeed (nothing
//! lost, no panic), quiet databases sealed by age, readers' snapshots untouched, SQLite's
//! autocheckpoint off, and a clean shutdown that leaves plain SQLite files.

use libsql_wal_testkit::support as common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestIo, fast_checkpointer, wait_until};
use libsql_sys::rusqlite::Connection;
use libsql_wal::{LibsqlWalManager, WalConfig, inspect, open_connection};

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

fn small_segments() -> WalConfig {
    WalConfig { segment_frames_max: 8, segment_age_max: None, ..Default::default() }
}

fn fill(conn: &Connection, rows: i64) {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x INTEGER PRIMARY KEY, pad BLOB)").unwrap();
    for _ in 0..rows {
        conn.execute("INSERT INTO t(pad) VALUES (randomblob(3000))", []).unwrap();
    }
}

fn stock_sqlite(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3").arg(db).arg(sql).output().expect("stock sqlite3");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn never_more_than_k_checkpoints_at_once_nor_two_on_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let (io, switches) = TestIo::new();
    switches.db_write_delay_ms.store(2, Ordering::SeqCst);
    let checkpointer = fast_checkpointer(2);
    let manager = LibsqlWalManager::new(io, small_segments()).with_checkpointer(checkpointer.clone());
    let paths: Vec<PathBuf> = (0..8).map(|i| dir.path().join(format!("d{i}.db"))).collect();
    let conns: Vec<_> = paths.iter().map(|p| open_connection(p, &manager).unwrap()).collect();
    // Interleave commits so every database keeps sealing segments while others copy.
    for _ in 0..12 {
        for conn in &conns {
            fill(conn, 2);
        }
    }
    assert!(checkpointer.drain(Duration::from_secs(60)));
    let stats = checkpointer.stats();
    assert!(stats.completed >= 8, "{stats:?}");
    assert_eq!(stats.running_max_seen, 2, "limit 2 must be reached but never passed: {stats:?}");
    assert_eq!(switches.db_writers_max_per_file.load(Ordering::SeqCst), 1, "one database checkpointed twice at once");
    for (path, conn) in paths.iter().zip(&conns) {
        assert_eq!(count(conn), 24);
        let info = inspect(path, &manager).unwrap();
        assert!(info.segments.iter().all(|s| !s.sealed), "sealed segments left behind in {}", path.display());
    }
}

#[test]
fn failing_database_writes_are_retried_until_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let (io, switches) = TestIo::new();
    let checkpointer = fast_checkpointer(1);
    let manager = LibsqlWalManager::new(io, small_segments()).with_checkpointer(checkpointer.clone());
    let conn = open_connection(&path, &manager).unwrap();
    fill(&conn, 1);
    assert!(checkpointer.drain(Duration::from_secs(10)));
    switches.fail_db_writes.store(true, Ordering::SeqCst);
    fill(&conn, 40);
    wait_until("several failed checkpoints", Duration::from_secs(10), || {
        inspect(&path, &manager).unwrap().checkpoint_errors >= 3
    });
    let info = inspect(&path, &manager).unwrap();
    assert!(info.last_checkpoint_error.as_deref().unwrap_or("").contains("d.db"), "{info:?}");
    // Commits and reads go on while checkpoints fail.
    fill(&conn, 5);
    assert_eq!(count(&conn), 46);
    switches.fail_db_writes.store(false, Ordering::SeqCst);
    wait_until("the log to be checkpointed", Duration::from_secs(10), || {
        inspect(&path, &manager).unwrap().segments.iter().all(|s| !s.sealed)
    });
    assert!(checkpointer.stats().failed >= 3);
    assert_eq!(count(&conn), 46);
    drop(conn);
    assert_eq!(stock_sqlite(&path, "SELECT count(*) FROM t; PRAGMA integrity_check;"), "46\nok\n");
}

#[test]
fn one_failing_database_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (dir.path().join("bad.db"), dir.path().join("good.db"));
    let (io, switches) = TestIo::new();
    *switches.fail_only_names_containing.lock().unwrap() = Some("bad.db".into());
    switches.fail_db_writes.store(true, Ordering::SeqCst);
    let checkpointer = fast_checkpointer(1);
    let manager = LibsqlWalManager::new(io, small_segments()).with_checkpointer(checkpointer.clone());
    let bad_conn = open_connection(&bad, &manager).unwrap();
    let good_conn = open_connection(&good, &manager).unwrap();
    for _ in 0..10 {
        fill(&bad_conn, 3);
        fill(&good_conn, 3);
    }
    // With one worker, the failing database keeps coming back; the good one still drains.
    wait_until("the good database to be checkpointed", Duration::from_secs(10), || {
        inspect(&good, &manager).unwrap().segments.iter().all(|s| !s.sealed)
    });
    let bad_info = inspect(&bad, &manager).unwrap();
    assert!(bad_info.checkpoint_errors > 0 && bad_info.segments.iter().any(|s| s.sealed), "{bad_info:?}");
    assert_eq!(inspect(&good, &manager).unwrap().checkpoint_errors, 0);
    assert_eq!((count(&bad_conn), count(&good_conn)), (30, 30));
    switches.fail_db_writes.store(false, Ordering::SeqCst);
    wait_until("the bad database to recover", Duration::from_secs(10), || {
        inspect(&bad, &manager).unwrap().segments.iter().all(|s| !s.sealed)
    });
}

#[test]
fn a_quiet_database_gets_its_tail_sealed_and_checkpointed_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let checkpointer = fast_checkpointer(1);
    let config = WalConfig {
        segment_frames_max: u32::MAX,
        segment_age_max: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let manager = LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config).with_checkpointer(checkpointer);
    let conn = open_connection(&path, &manager).unwrap();
    fill(&conn, 3);
    assert!(!inspect(&path, &manager).unwrap().segments.is_empty());
    wait_until("the quiet tail to reach the database file", Duration::from_secs(10), || {
        let info = inspect(&path, &manager).unwrap();
        info.segments.is_empty() && info.db_file_pages >= 4
    });
    assert_eq!(count(&conn), 3);
}

#[test]
fn background_checkpoints_never_change_what_an_open_reader_sees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let checkpointer = fast_checkpointer(2);
    let manager = LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), small_segments())
        .with_checkpointer(checkpointer.clone());
    let writer = open_connection(&path, &manager).unwrap();
    common::create_reader_table(&writer);
    assert!(checkpointer.drain(Duration::from_secs(10)));
    let reader = open_connection(&path, &manager).unwrap();
    reader.execute_batch("PRAGMA cache_size = 2; BEGIN;").unwrap();
    let sum = common::sum_v;
    assert_eq!(sum(&reader), 10_000);
    for round in 0..8 {
        writer.execute_batch("UPDATE t SET v = v + 1").unwrap();
        assert!(checkpointer.drain(Duration::from_secs(10)));
        assert_eq!(sum(&reader), 10_000, "round {round}: a background checkpoint changed the reader's snapshot");
    }
    let held = inspect(&path, &manager).unwrap();
    assert!(held.segments.iter().any(|s| s.sealed), "the reader should hold sealed segments back");
    reader.execute_batch("COMMIT").unwrap();
    // The reader going away lets the held-back segments through.
    wait_until("held-back segments to be checkpointed", Duration::from_secs(10), || {
        inspect(&path, &manager).unwrap().segments.iter().all(|s| !s.sealed)
    });
    assert_eq!(sum(&reader), 90_000);
}

#[test]
fn sqlite_autocheckpoint_does_not_run_with_a_background_checkpointer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let config = WalConfig { segment_frames_max: u32::MAX, segment_age_max: None, ..Default::default() };
    let manager =
        LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config).with_checkpointer(fast_checkpointer(1));
    let conn = open_connection(&path, &manager).unwrap();
    fill(&conn, 1500);
    let info = inspect(&path, &manager).unwrap();
    let frames: u32 = info.segments.iter().map(|s| s.frames).sum();
    // SQLite's autocheckpoint (1000 frames) would have emptied the log on the commit path.
    assert!(frames > 1500, "the log was checkpointed on the commit path: {frames} frames left");
    assert_eq!(info.db_file_pages, 1, "nothing may reach the database file yet");
}

#[test]
fn shutdown_seals_and_drains_and_every_database_is_plain_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let checkpointer = fast_checkpointer(2);
    let config = WalConfig {
        segment_frames_max: 1_000_000,
        segment_age_max: None,
        checkpoint_on_close: false,
        ..Default::default()
    };
    let manager =
        LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config).with_checkpointer(checkpointer.clone());
    let paths: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("d{i}.db"))).collect();
    let conns: Vec<_> = paths.iter().map(|p| open_connection(p, &manager).unwrap()).collect();
    for conn in &conns {
        fill(conn, 30);
    }
    checkpointer.shutdown(Duration::from_secs(30));
    for path in &paths {
        let info = inspect(path, &manager).unwrap();
        assert!(info.segments.iter().all(|s| s.frames == 0 || !s.sealed), "{info:?}");
        assert!(info.db_file_pages > 30, "shutdown did not checkpoint {}: {info:?}", path.display());
    }
    for conn in &conns {
        assert_eq!(count(conn), 30);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    drop(conns);
    for path in &paths {
        assert_eq!(stock_sqlite(path, "SELECT count(*) FROM t; PRAGMA integrity_check;"), "30\nok\n");
    }
}

/// With a background checkpointer, a full segment is sealed by the checkpointer, not by the
/// commit that filled it: NORMAL commits never wait for a flush (a seal syncs the whole
/// segment, milliseconds while a checkpoint copies). Once the checkpointer runs, the full
/// segments are sealed, copied and removed. Without a checkpointer, the seal is on the
/// commit path, as before.
#[test]
fn a_full_segment_is_sealed_by_the_checkpointer_not_by_the_commit_that_filled_it() {
    use libsql_wal_testkit::faulty::{FaultyIo, LostWrites};
    let dir = tempfile::tempdir().unwrap();
    for background in [true, false] {
        let io = FaultyIo::new(0, LostWrites::All);
        let checkpointer = fast_checkpointer(1);
        let mut manager = LibsqlWalManager::new(std::sync::Arc::new(io.clone()), small_segments());
        if background {
            manager = manager.with_checkpointer(checkpointer.clone());
        }
        checkpointer.pause();
        let db = dir.path().join(format!("background-{background}.db"));
        let conn = open_connection(&db, &manager).unwrap();
        conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
        fill(&conn, 1); // creates the log (its directory is synced once)
        let before = io.syncs();
        fill(&conn, 59);
        let segments = inspect(&db, &manager).unwrap().segments;
        assert!(segments.len() >= 5, "expected several segments, got {}", segments.len());
        if !background {
            assert!(io.syncs() > before, "without a checkpointer the commit path seals");
            continue;
        }
        assert_eq!(io.syncs(), before, "a NORMAL commit synced something");
        assert!(segments.iter().all(|s| !s.sealed), "a segment was sealed on the commit path");
        checkpointer.resume();
        wait_until("the full segments checkpointed", Duration::from_secs(20), || {
            inspect(&db, &manager).unwrap().segments.len() <= 1
        });
        assert!(io.syncs() > before);
        assert_eq!(count(&conn), 60);
        drop(conn);
        assert_eq!(stock_sqlite(&db, "PRAGMA integrity_check; SELECT count(*) FROM t;"), "ok\n60\n");
    }
}

/// A FULL commit after NORMAL ones that filled unsealed segments makes those durable too
/// (their frames, and every segment's directory entry) before it returns: else a power cut
/// could keep it and lose a commit before it. `tests/crash.rs` checks the outcome under
/// power cuts; this checks the flushes happen on the FULL commit itself.
#[test]
fn a_full_commit_flushes_the_unsealed_segments_before_its_own() {
    use libsql_wal_testkit::faulty::{FaultyIo, LostWrites};
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::new(0, LostWrites::All);
    let config = WalConfig { defer_seals: true, ..small_segments() };
    let manager = LibsqlWalManager::new(std::sync::Arc::new(io.clone()), config);
    let db = dir.path().join("d.db");
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    fill(&conn, 40);
    let unsealed = inspect(&db, &manager).unwrap().segments.len() as u64;
    assert!(unsealed >= 4, "expected several unsealed segments, got {unsealed}");
    let before = io.syncs();
    conn.execute_batch("PRAGMA synchronous = FULL; INSERT INTO t(pad) VALUES (randomblob(10))").unwrap();
    // Each older unsealed segment, the directory, the commit's own segment.
    assert!(io.syncs() - before > unsealed, "{} syncs for {unsealed} segments", io.syncs() - before);
    let (before, segments_before) = (io.syncs(), inspect(&db, &manager).unwrap().segments.len());
    conn.execute_batch("INSERT INTO t(pad) VALUES (randomblob(10))").unwrap();
    // Its own segment; and the directory if the commit started a new segment.
    let new_segment = inspect(&db, &manager).unwrap().segments.len() > segments_before;
    assert_eq!(io.syncs() - before, 1 + new_segment as u64, "a second FULL commit flushes more than its own");
}

/// `segment_frames_max: 0` means a segment per transaction, and never an empty or
/// uncommitted segment sealed: a checkpoint used to take the newest segment, holding only a
/// spilled transaction's frames, for a full one, and its seal asserted (a panic inside
/// SQLite's call).
#[test]
fn a_zero_segment_size_never_seals_a_segment_without_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { segment_frames_max: 0, defer_seals: true, ..small_segments() };
    let manager = LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config);
    let db = dir.path().join("zero.db");
    let writer = open_connection(&db, &manager).unwrap();
    fill(&writer, 3);
    // A transaction larger than the page cache spills frames into a new segment.
    writer.execute_batch("PRAGMA cache_size = 5; BEGIN;").unwrap();
    for _ in 0..100 {
        writer.execute("INSERT INTO t(pad) VALUES (randomblob(3000))", []).unwrap();
    }
    let other = open_connection(&db, &manager).unwrap();
    other.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    writer.execute_batch("COMMIT").unwrap();
    other.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert_eq!(count(&other), 103);
    drop((writer, other));
    assert_eq!(stock_sqlite(&db, "PRAGMA integrity_check; SELECT count(*) FROM t;"), "ok\n103\n");
}
