//! A failed fsync is sticky (PostgreSQL's lesson): after a sync of a segment or of the
//! database file fails, the kernel may have dropped the dirty pages, so the log refuses every
//! later write with SQLITE_IOERR, even once syncs work again, until it is closed and
//! recovered from disk. Reads of what is committed go on.

use std::path::Path;
use std::sync::Arc;

use libsql_sys::rusqlite::{Connection, ErrorCode, ffi};
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};
use libsql_wal_testkit::faulty::{Fault, FaultyIo, LostWrites};

fn manager(io: &FaultyIo) -> LibsqlWalManager {
    let config = WalConfig { segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    LibsqlWalManager::new(Arc::new(io.clone()), config)
}

fn extended_code(e: &libsql_sys::rusqlite::Error) -> Option<i32> {
    e.sqlite_error().map(|e| e.extended_code)
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

/// Arms a failure at each mutating operation of one FULL commit in turn, until the one that
/// fails is a sync (SQLITE_IOERR_FSYNC). Returns the open database at that point.
fn database_after_a_failed_sync(
    dir: &Path,
) -> (FaultyIo, LibsqlWalManager, libsql_sys::Connection<libsql_wal::LibsqlWal>) {
    for op in 1..20 {
        let db = dir.join(format!("d{op}.db"));
        let io = FaultyIo::new(op, LostWrites::All);
        let manager = manager(&io);
        let conn = open_connection(&db, &manager).unwrap();
        conn.execute_batch("PRAGMA synchronous = FULL; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        io.arm(op, Fault::Fail);
        let failed = conn.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        if extended_code(&failed) == Some(ffi::SQLITE_IOERR_FSYNC) {
            return (io, manager, conn);
        }
    }
    panic!("no operation of a FULL commit was a sync");
}

#[test]
fn after_a_failed_sync_the_log_refuses_writes_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (_io, manager, conn) = database_after_a_failed_sync(dir.path());
    // Syncs work again (the fault was one-shot), yet no write is accepted.
    for _ in 0..3 {
        let refused = conn.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
        assert_eq!(refused.sqlite_error_code(), Some(ErrorCode::SystemIoFailure), "{refused}");
    }
    // Reads of what was committed go on.
    assert_eq!(count(&conn), 1);
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
    assert!(checkpoint.is_err() || checkpoint == Ok(1), "a checkpoint wrote the database file after a failed sync");
    // Closed and recovered from disk: writable again, nothing committed lost.
    let db = conn.path().unwrap().to_string();
    drop(conn);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute("INSERT INTO t VALUES (4)", []).unwrap();
    assert_eq!(count(&conn), 2);
}
