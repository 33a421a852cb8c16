//! The CLI's defects issue, through the binary: output to a full device never aborts
//! (stdout and stderr on /dev/full) and a command that only prints fails when its output is
//! lost, SQL errors go to stderr and rows to stdout, SQL bytes reach SQLite as they are
//! (compared with stock `sqlite3`), a SQL argument may start with `--`, inspecting a missing
//! local store creates nothing, a checkpoint held back by storage says why, and no credential
//! of a store URL appears in an error.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::DEAD_S3;
use libsql_wal_testkit::support as common;

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).envs(DEAD_S3).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn full_device() -> Stdio {
    Stdio::from(OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
}

fn sqlite3_available() -> bool {
    Command::new("sqlite3").arg("-version").output().is_ok_and(|o| o.status.success())
}

/// What stock `sqlite3` prints for `script` on a fresh database.
fn sqlite3_output(dir: &Path, script: &Path) -> Output {
    let db = dir.join("stock.db");
    Command::new("sqlite3").arg(&db).stdin(std::fs::File::open(script).unwrap()).output().unwrap()
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

    // Only stderr full: every row still printed; the failing statement's error (on stderr)
    // is lost, but the exit code still says it failed.
    let out = Command::new(BIN)
        .args([OsStr::new("exec"), db.as_os_str(), OsStr::new("SELECT x FROM t; SELECT nope;")])
        .env("LIBSQL_WAL_LOG", "debug")
        .stderr(full_device())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), None, "{:?}", out.status);
    assert_eq!(text(&out.stdout), "1\n2\n3\n");
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

// ---- exec: SQL errors on stderr, results on stdout (as `sqlite3`) --------------------------

#[test]
fn exec_prints_sql_errors_on_stderr_and_rows_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    for wal in ["libsql", "sqlite"] {
        let db = dir.path().join(format!("{wal}.db"));
        let sql = "CREATE TABLE t(x); INSERT INTO t VALUES (7); SELECT x FROM t; SELECT nope; SELECT x + 1 FROM t;";
        let out = run(&[OsStr::new("exec"), OsStr::new("--wal"), OsStr::new(wal), db.as_os_str(), OsStr::new(sql)]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(stdout, "7\n8\n", "{wal}: only rows on stdout");
        assert!(stderr.contains("Error: no such column: nope\n"), "{wal}: the error is not on stderr: {stderr:?}");
        assert_eq!(out.status.code(), Some(1), "{wal}: a failed statement fails the command");
    }
}

/// A command whose only job is to print fails when its output cannot be written (before,
/// `--help >/dev/full` exited 0, clap dropping the error), and says so on stderr.
#[test]
fn printing_commands_fail_on_a_full_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let store = format!("file://{}", dir.path().join("store").display());
    let db_arg = db.to_str().unwrap();
    let out = run(&["exec", "--storage", &store, db_arg, "CREATE TABLE t(x); INSERT INTO t VALUES(1);"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in [
        &["--help"][..],
        &["--version"],
        &["info", "--help"],
        &["storage", "ls", "--help"],
        &["info", db_arg],
        &["info", "--storage", &store, db_arg],
        &["verify", db_arg],
        &["storage", "ls", &store],
        &["storage", "ls", &store, "shop"],
    ] {
        let out = Command::new(BIN).args(args).stdout(full_device()).output().unwrap();
        assert_eq!(out.status.signal(), None, "{args:?}: {:?}", out.status);
        assert_eq!(out.status.code(), Some(1), "{args:?}: a lost output must fail the command");
        assert!(text(&out.stderr).contains("cannot write to stdout"), "{args:?}: {}", text(&out.stderr));
    }
    // The same commands still succeed when their output can be written.
    let out = run(&["--help"]);
    assert!(out.status.success() && text(&out.stdout).contains("Usage"), "{}", text(&out.stdout));
}

// ---- 9: SQL bytes reach SQLite unchanged -------------------------------------------------

/// Invalid UTF-8 in literals, identifiers and comments: stored and printed byte for byte as
/// stock `sqlite3` does (before, each became U+FFFD: EF BF BD).
#[test]
fn invalid_utf8_reaches_sqlite_as_sqlite3_gives_it() {
    if !sqlite3_available() {
        eprintln!("sqlite3 not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut script: Vec<u8> = b"CREATE TABLE t(x);\n".to_vec();
    for value in [&b"a\xffb"[..], b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf;", b"ok \xe2\x82"] {
        script.extend_from_slice(b"INSERT INTO t VALUES('");
        script.extend_from_slice(value);
        script.extend_from_slice(b"'); -- comment \xfe\n");
    }
    script.extend_from_slice(b"CREATE TABLE \"\xff\xfe\"(y); INSERT INTO \"\xff\xfe\" VALUES('\x80');\n");
    script.extend_from_slice(b"SELECT hex(x), length(CAST(x AS BLOB)) FROM t;\n");
    script.extend_from_slice(b"SELECT hex(y), hex(name) FROM \"\xff\xfe\", sqlite_schema WHERE type = 'table';\n");
    script.extend_from_slice(b"SELECT x FROM t WHERE rowid = 1;\n");
    let file = dir.path().join("bytes.sql");
    std::fs::write(&file, &script).unwrap();

    let stock = sqlite3_output(dir.path(), &file);
    assert!(stock.status.success(), "{}", text(&stock.stderr));
    assert!(text(&stock.stdout).contains("61FF62|3"), "{}", text(&stock.stdout));

    let ours = run(&[OsStr::new("exec"), dir.path().join("ours.db").as_os_str(), OsStr::new("-f"), file.as_os_str()]);
    assert!(ours.status.success(), "{}", text(&ours.stdout));
    assert_eq!(ours.stdout, stock.stdout, "ours:\n{}\nsqlite3:\n{}", text(&ours.stdout), text(&stock.stdout));

    // The same bytes as an argument (not UTF-8: an OsStr on Unix).
    let arg = OsStr::from_bytes(&script);
    let ours = run(&[OsStr::new("exec"), dir.path().join("arg.db").as_os_str(), arg]);
    assert!(ours.status.success(), "{}", text(&ours.stdout));
    assert_eq!(ours.stdout, stock.stdout);
}

/// A NUL inside a literal: SQLite reads no SQL past a NUL, so the statement fails with
/// SQLite's own error (before, the NUL silently became a space and the row was stored
/// changed). `sqlite3`'s line reader drops the rest of such a line instead, which joins
/// the next lines to it: that is not copied. The statements after it still run.
#[test]
fn nul_in_a_literal_is_refused_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nul.sql");
    std::fs::write(
        &file,
        b"CREATE TABLE t(x);\nINSERT INTO t VALUES('a\0b');\nINSERT INTO t VALUES(x'00');\nSELECT 1; \0 SELECT 2;\nSELECT hex(x) FROM t;\n",
    )
    .unwrap();
    let out = run(&[OsStr::new("exec"), dir.path().join("nul.db").as_os_str(), OsStr::new("-f"), file.as_os_str()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("612062"), "the NUL became a space: {stdout}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["1", "00"], "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error: ")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(errors[0].starts_with("Error: unrecognized token: \"'a"), "{stderr}");
    assert!(errors[1].contains("NUL"), "{stderr}");
}

// ---- 12: a SQL argument may start with `--` ------------------------------------------------

#[test]
fn sql_argument_starting_with_dashes_is_the_sql() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dash.db");
    for (sql, expected) in [
        ("-- a comment\nselect 1;", "1\n"),
        ("--wal sqlite\nselect 2;", "2\n"),
        ("-1 + 4", ""),
        ("/* x */ select -3;", "-3\n"),
    ] {
        let out = run(&[OsStr::new("exec"), db.as_os_str(), OsStr::new(sql)]);
        if expected.is_empty() {
            // Not SQL, but taken as SQL: SQLite's error (on stderr), not clap's.
            assert!(text(&out.stderr).starts_with("Error: near \"-\""), "{sql:?}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), "", "{sql:?}");
        } else {
            assert!(out.status.success(), "{sql:?}: {}{}", text(&out.stdout), text(&out.stderr));
            assert_eq!(text(&out.stdout), expected, "{sql:?}");
        }
    }
    // Options still work around it.
    let out =
        run(&[OsStr::new("exec"), OsStr::new("--wal"), OsStr::new("sqlite"), db.as_os_str(), OsStr::new("select 4")]);
    assert_eq!(text(&out.stdout), "4\n", "{}", text(&out.stderr));
    let file = dir.path().join("s.sql");
    std::fs::write(&file, "-- from a file\nselect 5;").unwrap();
    let out = run(&[OsStr::new("exec"), db.as_os_str(), OsStr::new("-f"), file.as_os_str()]);
    assert_eq!(text(&out.stdout), "5\n", "{}", text(&out.stderr));
}

// ---- 12: inspecting a missing local store creates nothing ----------------------------------

#[test]
fn inspecting_a_missing_local_store_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let url = format!("file://{}", missing.join("deep/store").display());

    let out = run(&["storage", "ls", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "no namespaces");
    let out = run(&["storage", "ls", &url, "shop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("0 objects"), "{}", text(&out.stdout));
    let restored = dir.path().join("restored.db");
    let out = run(&["restore", "--storage", &url, "--namespace", "shop", restored.to_str().unwrap()]);
    assert!(!out.status.success(), "nothing to restore");
    assert!(!missing.exists(), "an inspecting command created the store");

    // Writing to it creates it.
    let db = dir.path().join("shop.db");
    let out = run(&["exec", "--storage", &url, db.to_str().unwrap(), "CREATE TABLE t(x); INSERT INTO t VALUES(1);"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(missing.join("deep/store/shop").is_dir(), "the first upload creates the store");
    let out = run(&["storage", "ls", &url]);
    assert!(text(&out.stdout).starts_with("shop  durable up to frame"), "{}", text(&out.stdout));
}

// ---- 12: a checkpoint held back by storage says why -----------------------------------------

#[test]
fn checkpoint_held_back_by_storage_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    let db_arg = db.to_str().unwrap();
    let mut script = String::from("CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB);");
    for i in 0..200 {
        script.push_str(&format!("INSERT INTO t VALUES({i}, zeroblob(3000));"));
    }
    // Storage down: nothing becomes durable, so nothing may be checkpointed.
    let out = run(&["exec", "--storage", "s3://bucket/x", "--no-wait", db_arg, &script]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    for storage in [&["--storage", "s3://bucket/x"][..], &[][..]] {
        let mut args = vec!["checkpoint", db_arg, "--mode", "truncate"];
        args.extend_from_slice(storage);
        let out = run(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let fields: Vec<&str> = stdout.trim_end().split('|').collect();
        assert_eq!(fields.len(), 3, "SQLite's busy|log|checkpointed: {stdout}");
        assert_eq!((fields[0], fields[2]), ("1", "0"), "{stdout}");
        assert!(stderr.contains("checkpoint held back:"), "{storage:?}: no reason given: {stderr}");
        assert!(stderr.contains("not yet in storage") || stderr.contains("not known to be in storage"), "{stderr}");
    }
}

// ---- 11: no credential in any error ---------------------------------------------------------

#[test]
fn no_credential_of_a_store_url_in_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("creds.db");
    for url in [
        "az://acct:AzSecret1@container/p?sig=AzSecret2",
        "s3://key:S3Secret1@bucket/p?X-Amz-Signature=S3Secret2",
        "gs://user:GsSecret1@bucket/p?token=GsSecret2",
        "file://user:FileSecret1@elsewhere/p?token=FileSecret2",
        "ftp://user:FtpSecret1@host/p?token=FtpSecret2",
    ] {
        for args in [vec!["storage", "ls", url], vec!["info", "--storage", url, db.to_str().unwrap()]] {
            let out =
                Command::new(BIN).args(&args).envs(DEAD_S3).env("GOOGLE_SERVICE_ACCOUNT_KEY", "{}").output().unwrap();
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            for secret in ["Secret1", "Secret2"] {
                assert!(!all.contains(secret), "{args:?} shows {secret}: {all}");
            }
        }
    }
}

/// A reader count no machine gives threads for is refused as a usage error (before: the
/// thread spawns ran out of memory, the process aborted and left its scratch database).
#[test]
fn stress_refuses_more_readers_than_it_can_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["stress", "--readers", "100000", "--seconds", "1"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not in 0..=4096") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a scratch database was left behind");
}
