//! `libsql-wal verify`: a sound log and database pass (exit 0); a torn tail is a warning
//! (recovery cuts it); a bad frame in a sealed segment or missing frames are errors (exit 1);
//! verify itself changes nothing before it opens the database.

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_wal::{LibsqlWalManager, WalConfig, io::StdIo, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

/// A database whose log keeps several sealed segments and a current one.
fn database_with_a_log(dir: &Path) -> PathBuf {
    let path = dir.join("d.db");
    let config =
        WalConfig { segment_frames_max: 4, segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config);
    let conn = open_connection(&path, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB)").unwrap();
    for _ in 0..20 {
        conn.execute("INSERT INTO t(pad) VALUES (randomblob(2000))", []).unwrap();
    }
    path
}

fn segments(db: &Path) -> Vec<PathBuf> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-wal");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn verify(db: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("verify").arg(db).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_sound_log_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    assert!(out.contains("sealed, frames 1..="), "{out}");
    assert!(out.contains("integrity_check: ok"), "{out}");
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
}

#[test]
fn a_plain_sqlite_database_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    Command::new("sqlite3").arg(&db).arg("CREATE TABLE t(x); INSERT INTO t VALUES (1);").status().unwrap();
    let (ok, out) = verify(&db);
    assert!(ok && out.contains("no log"), "{out}");
}

#[test]
fn a_torn_tail_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let tail = segments(&db).pop().unwrap();
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes.extend_from_slice(&[0xEE; 5000]);
    std::fs::write(&tail, bytes).unwrap();
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    assert!(out.contains("bytes after the last commit frame") && out.contains("1 warnings"), "{out}");
}

#[test]
fn a_bad_frame_in_a_sealed_segment_is_an_error_and_nothing_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let sealed = segments(&db).remove(1);
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[64 + 24 + 100] ^= 0xFF;
    std::fs::write(&sealed, &bytes).unwrap();
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(out.contains("bad frame at frame_no") && out.contains("integrity_check skipped"), "{out}");
    assert_eq!(std::fs::read(&sealed).unwrap(), bytes, "verify changed the damaged segment");
}

#[test]
fn missing_frames_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    std::fs::remove_file(segments(&db).remove(1)).unwrap();
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(out.contains("frames are missing"), "{out}");
}
