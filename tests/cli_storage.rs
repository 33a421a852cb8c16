//! The CLI with storage: `exec --storage` waits for durability (and says so during an
//! outage), `--no-wait` returns at once and leaves the upload to the next process, `info`
//! shows the lag, `storage ls` lists namespaces and objects, `restore` rebuilds from the
//! store alone, bad input (namespace, URL) is a clear error, and a mistyped `--storage` does
//! not re-target a log shipped elsewhere unless `--move-to-store` says so.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::DEAD_S3;

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).envs(DEAD_S3).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn segments_in(log_dir: &Path) -> usize {
    std::fs::read_dir(log_dir)
        .map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg")).count())
}

fn script(from: i64, to: i64) -> String {
    let mut sql = String::from("CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, v BLOB);");
    for i in from..to {
        sql.push_str(&format!("INSERT INTO t VALUES({i}, zeroblob({}));", (i * 31) % 2000));
    }
    sql
}

#[test]
fn exec_no_wait_during_an_outage_then_the_next_exec_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let db_arg = db.to_str().unwrap();
    let log_dir = dir.path().join("shop.db-wal");

    // Storage unreachable, --no-wait: returns, keeps every segment (none is durable).
    let started = Instant::now();
    let out = run(&["exec", "--storage", "s3://bucket/x", "--no-wait", db_arg, &script(0, 300)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(segments_in(&log_dir) > 0, "segments kept for upload");

    let out = run(&["info", "--storage", "s3://bucket/x", db_arg]);
    let info = stdout(&out);
    assert!(info.contains("storage: s3://bucket/x namespace shop"), "{info}");
    assert!(info.contains("durable frame_no: unknown"), "{info}");
    assert!(info.contains("last storage error"), "{info}");

    // Without --no-wait, exec waits and says why; we kill it (a crash while waiting).
    let mut child = Command::new(BIN)
        .args(["exec", "--storage", "s3://bucket/x", db_arg, "INSERT INTO t VALUES(1000, 1)"])
        .envs(DEAD_S3)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert!(child.try_wait().unwrap().is_none(), "exec waits while storage is down");
    child.kill().unwrap();
    let waited = child.wait_with_output().unwrap();
    assert!(stderr(&waited).contains("waiting for storage"), "{}", stderr(&waited));

    // A local store: the next exec uploads everything (a snapshot base, then the segments),
    // waits, and the last close checkpoints and removes the log.
    let store = format!("file://{}", dir.path().join("store").display());
    let out = run(&["exec", "--storage", &store, db_arg, "SELECT count(*) FROM t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "301");
    assert!(!log_dir.exists(), "everything durable and checkpointed");

    let out = run(&["storage", "ls", &store]);
    assert!(stdout(&out).starts_with("shop  durable up to frame "), "{}", stdout(&out));
    let out = run(&["storage", "ls", &store, "shop"]);
    let listing = stdout(&out);
    assert!(listing.contains("segment  frames 1..="), "{listing}");
    assert!(listing.contains("snapshot at frame 0"), "{listing}");

    let restored = dir.path().join("restored.db");
    let out = run(&["restore", "--storage", &store, "--namespace", "shop", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("restored shop"), "{}", stdout(&out));
    let out = run(&["exec", restored.to_str().unwrap(), "SELECT count(*), sum(length(v)) FROM t"]);
    let want: i64 = (0..300).map(|i| (i * 31) % 2000).sum::<i64>() + 1;
    assert_eq!(stdout(&out).trim(), format!("301|{want}"));
}

#[test]
fn bad_storage_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let db_arg = db.to_str().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    for (args, expected) in [
        (vec!["exec", "--storage", &store, "--namespace", "../up", db_arg, "SELECT 1"], "invalid namespace"),
        (vec!["exec", "--storage", "ftp://host/x", db_arg, "SELECT 1"], "unsupported scheme"),
        (vec!["exec", "--storage", "file://relative", db_arg, "SELECT 1"], "storage"),
        (vec!["restore", "--storage", &store, "--namespace", "none", db_arg], "holds nothing"),
        (vec!["storage", "ls", "not a url"], "not a URL"),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    assert!(!db.exists(), "no database created by a refused command");
}

#[test]
fn a_mistyped_storage_url_is_refused_unless_the_move_is_asked_for() {
    use libsql_wal::{LibsqlWalManager, Storage, WalConfig, flush_to_storage, io::StdIo, open_connection};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let db_arg = db.to_str().unwrap();
    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    let (url_a, url_b) = (format!("file://{}", store_a.display()), format!("file://{}", store_b.display()));
    // Shipped to store a, the log kept (no checkpoint at close), so its durable record stays.
    let config = WalConfig { checkpoint_on_close: false, ..WalConfig::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config).with_storage(Storage::open(&url_a).unwrap());
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch(&script(0, 50)).unwrap();
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);

    for command in [
        &["exec", "--storage", &url_b, db_arg, "SELECT count(*) FROM t"][..],
        &["checkpoint", "--storage", &url_b, db_arg],
    ] {
        let out = run(command);
        assert!(!out.status.success(), "{command:?} re-targeted the log");
        let error = stderr(&out);
        assert!(
            error.contains("shipped to another store or namespace") && error.contains("--move-to-store"),
            "{error}"
        );
        assert_eq!(stdout(&out), "", "{command:?}");
    }
    assert!(!store_b.exists(), "the mistyped store was written");
    assert!(stdout(&run(&["exec", "--help"])).contains("--move-to-store"));

    // Asked for, the move ships the whole history to store b.
    let out = run(&["exec", "--storage", &url_b, "--move-to-store", db_arg, "SELECT count(*) FROM t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "50\n");
    let out = run(&["storage", "ls", &url_b]);
    assert!(stdout(&out).starts_with("shop  durable up to frame "), "{}", stdout(&out));
}
