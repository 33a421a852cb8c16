//! The CLI's defects issue, through the binary: output to a full device never aborts
//! (stdout and stderr on /dev/full), SQL bytes reach SQLite as they are (compared with stock
//! `sqlite3`), a SQL argument may start with `--`, inspecting a missing local store creates
//! nothing, a checkpoint held back by storage says why, and no credential of a store URL
//! appears in an error.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

/// Points S3 clients at a port nobody listens on.
const DEAD_S3: [(&str, &str); 5] = [
    ("AWS_ENDPOINT", "http://127.0.0.1:9"),
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).envs(DEAD_S3).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn full_device() -> Stdio {
    Stdio::from(OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
}
// ---- 5: logging and printing never panic -------------------------------------------------

#[test]
fn output_to_a_full_device_never_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("full.db");
    let sql = "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3); SELECT x FROM t; SELECT nope;";
    // Debug logging: the log's tracing events fire inside SQLite's callbacks, where a panic
    // aborts the process (it did: "failed printing to stderr", SIGABRT).
    let status = Command::new(BIN)
        .args([OsStr::new("exec"), db.as_os_str(), OsStr::new(sql)])
        .env("LIBSQL_WAL_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(full_device())
        .stderr(full_device())
        .status()
        .unwrap();
    assert_eq!(status.signal(), None, "killed by a signal: {status:?}");
    // The rows could not be written: a clean failure.
    assert_eq!(status.code(), Some(1), "{status:?}");

    // Only stderr full: every row still printed, the failing statement reported on stdout.
    let out = Command::new(BIN)
        .args([OsStr::new("exec"), db.as_os_str(), OsStr::new("SELECT x FROM t; SELECT nope;")])
        .env("LIBSQL_WAL_LOG", "debug")
        .stderr(full_device())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), None, "{:?}", out.status);
    assert_eq!(text(&out.stdout), "1\n2\n3\nError: no such column: nope\n");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn every_command_survives_a_full_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("info.db");
    assert!(
        run(&[OsStr::new("exec"), db.as_os_str(), OsStr::new("CREATE TABLE t(x); INSERT INTO t VALUES(1);")])
            .status
            .success()
    );
    let store = format!("file://{}", dir.path().join("store").display());
    for args in [
        vec!["info".into(), db.clone().into_os_string()],
        vec!["verify".into(), db.clone().into_os_string()],
        vec!["checkpoint".into(), db.clone().into_os_string()],
        vec!["storage".into(), "ls".into(), store.into()],
        vec!["--help".into()],
    ] {
        let status = Command::new(BIN).args(&args).stdout(full_device()).stderr(full_device()).status().unwrap();
        assert_eq!(status.signal(), None, "{args:?}: {status:?}");
        assert!(matches!(status.code(), Some(0..=2)), "{args:?}: {status:?}");
    }
}
