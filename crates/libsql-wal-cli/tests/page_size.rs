//! A database whose page size is not 4096 is refused with a clear error and left untouched.
//!
//! `libsql-sys`'s page header iterator assumes 4096-byte pages (BRIEF §4), so our WAL must
//! refuse other page sizes before writing anything: not the database file, not a log directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_wal::{LibsqlWalManager, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Creates a database with stock sqlite3 in `journal_mode` and returns its path.
fn create_with_stock_sqlite(dir: &Path, page_size: u32, journal_mode: &str) -> PathBuf {
    let db = dir.join("small-pages.db");
    let sql = format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode={journal_mode}; \
         CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT); \
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) \
         INSERT INTO t SELECT x, printf('row %d %s', x, hex(zeroblob(40))) FROM c;"
    );
    let out = Command::new("sqlite3").arg(&db).arg(&sql).output().expect("run sqlite3");
    assert!(out.status.success(), "sqlite3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA page_size; PRAGMA journal_mode; SELECT count(*) FROM t;")
        .output()
        .expect("run sqlite3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        [page_size.to_string().as_str(), journal_mode, "200"],
        "the fixture is not what the test expects"
    );
    db
}

/// Everything beside the database in its directory (the database itself excluded).
fn siblings(dir: &Path, db: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != db)
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn check_refused(page_size: u32, journal_mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = create_with_stock_sqlite(dir.path(), page_size, journal_mode);
    let before = std::fs::read(&db).unwrap();
    assert_eq!(
        u16::from_be_bytes([before[16], before[17]]) as u32,
        if page_size == 65536 { 1 } else { page_size },
        "header page size"
    );

    // The library refuses with a message that names both page sizes.
    let manager = LibsqlWalManager::default();
    match open_connection(&db, &manager) {
        Ok(_) => panic!("open_connection accepted a database with {page_size}-byte pages"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(&page_size.to_string()), "message does not name {page_size}: {message}");
            assert!(message.contains("4096"), "message does not name 4096: {message}");
        }
    }
    assert!(!log_dir(&db).exists(), "open_connection left a -wal behind");

    // So does the CLI, with a non-zero exit and the reason on stderr, and no rows.
    let out = Command::new(BIN)
        .arg("exec")
        .arg(&db)
        .arg("SELECT count(*) FROM t; INSERT INTO t VALUES (1000, 'x');")
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI succeeded on {page_size}-byte pages: {stdout}");
    assert!(
        stderr.contains("page") && stderr.contains(&page_size.to_string()),
        "the CLI's error does not mention the page size: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    assert!(!stdout.contains("200"), "the CLI printed a row: {stdout}");

    // Nothing was touched.
    let after = std::fs::read(&db).unwrap();
    assert!(before == after, "the database file changed ({} → {} bytes)", before.len(), after.len());
    assert!(!log_dir(&db).exists(), "a -wal was left behind");
    assert_eq!(siblings(dir.path(), &db), Vec::<String>::new(), "files appeared beside the database");

    // And stock sqlite3 still reads it.
    let out = Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check; SELECT count(*) FROM t;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["ok", "200"]);
}

#[test]
fn page_size_1024_is_refused_and_left_untouched() {
    check_refused(1024, "delete");
}

/// A WAL-mode database (SQLite's log checkpointed and gone) is refused the same way.
#[test]
fn page_size_1024_in_wal_mode_is_refused_and_left_untouched() {
    check_refused(1024, "wal");
}

/// 65536 is stored as 1 in the header: the message must still say 65536.
#[test]
fn page_size_65536_is_refused_and_left_untouched() {
    check_refused(65536, "delete");
}

/// A 1024-byte-page database with a leftover SQLite `-wal` (stock sqlite3 told not to
/// checkpoint on close). `open_connection` documents that it refuses such a database "without
/// touching the file", and its error says "the file was left untouched": so the database file
/// and SQLite's `-wal` must both be byte-for-byte as they were.
#[test]
fn page_size_1024_with_a_leftover_sqlite_wal_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("small-pages.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(".dbconfig no_ckpt_on_close on")
        .arg(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT); \
             INSERT INTO t VALUES (1, 'one'), (2, 'two');",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    let wal = log_dir(&db);
    assert!(wal.is_file() && std::fs::metadata(&wal).unwrap().len() > 0, "fixture: no SQLite -wal left");
    let db_before = std::fs::read(&db).unwrap();
    let wal_before = std::fs::read(&wal).unwrap();

    let manager = LibsqlWalManager::default();
    match open_connection(&db, &manager) {
        Ok(_) => panic!("open_connection accepted a database with 1024-byte pages"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("1024") && message.contains("4096"), "unclear message: {message}");
        }
    }
    let db_after = std::fs::read(&db).unwrap();
    let wal_after = std::fs::read(&wal).ok();
    assert!(
        db_before == db_after && wal_after.as_deref() == Some(&wal_before[..]),
        "refused, but the files were changed: database {} → {} bytes, SQLite -wal {} → {:?} bytes",
        db_before.len(),
        db_after.len(),
        wal_before.len(),
        wal_after.map(|w| w.len())
    );
}
