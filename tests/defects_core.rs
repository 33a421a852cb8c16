//! Regression tests for defects in ownership, the registry, the checkpointer and the `Wal`
//! boundary. Each test fails without its fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

fn plain_manager() -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
}

/// A database `real.db` with a table and a hard link `hard.db` to it.
fn hard_linked_db(dir: &Path) -> (PathBuf, PathBuf) {
    let real = dir.join("real.db");
    let hard = dir.join("hard.db");
    let conn = open_connection(&real, &plain_manager()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (0);").unwrap();
    drop(conn);
    assert!(!log_dir(&real).exists(), "fixture: the log outlived its connection");
    std::fs::hard_link(&real, &hard).unwrap();
    (real, hard)
}

// ---- 4. Ownership follows the file, not its name ---------------------------------------

/// This process owns `real.db`; another process writing through the hard link `hard.db`
/// must be refused as "in use" (before: it wrote into a second log, lost at our close).
#[test]
fn another_process_is_refused_through_a_hard_link() {
    let dir = tempfile::tempdir().unwrap();
    let (real, hard) = hard_linked_db(dir.path());
    let conn = open_connection(&real, &plain_manager()).unwrap();
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();

    let out = Command::new(BIN).arg("exec").arg(&hard).arg("INSERT INTO t VALUES (2)").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a process wrote through a hard link of an owned database: {stdout} {stderr}");
    assert!(stderr.contains("in use") || stdout.contains("in use"), "not an \"in use\" error: {stdout:?} {stderr:?}");
    assert!(!log_dir(&hard).exists(), "the refused process left a log directory behind");

    // And the other way round: through the first name while the second is owned.
    drop(conn);
    let conn = open_connection(&hard, &plain_manager()).unwrap();
    let out = Command::new(BIN).arg("exec").arg(&real).arg("INSERT INTO t VALUES (3)").output().unwrap();
    assert!(!out.status.success(), "a process wrote through the first name while the link is owned");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(conn);

    let conn = open_connection(&real, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2, "rows 0 and 1, nothing else");
}

/// In one process, two names of one file share one log: every commit through either name
/// is kept (before: two logs, and half the rows were lost at reopen).
#[test]
fn two_names_of_one_file_share_one_log_in_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let (real, hard) = hard_linked_db(dir.path());
    let manager = plain_manager();
    let a = open_connection(&real, &manager).unwrap();
    let b = open_connection(&hard, &manager).unwrap();
    for i in 0..300 {
        a.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        b.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    assert_eq!(count(&a), 601, "the first name does not see the commits made through the second");
    assert_eq!(count(&b), 601, "the second name does not see the commits made through the first");
    assert!(!log_dir(&hard).exists(), "a second log directory for the same file");
    drop(a);
    drop(b);
    assert!(!log_dir(&real).exists(), "the log was not closed with its last connection");
    for db in [&real, &hard] {
        let conn = open_connection(db, &plain_manager()).unwrap();
        assert_eq!(count(&conn), 601, "rows lost, reading through {}", db.display());
    }
    let out =
        Command::new("sqlite3").arg(&real).arg("SELECT count(*) FROM t; PRAGMA integrity_check;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "601\nok\n");
}
