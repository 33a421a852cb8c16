//! The CLI with storage: `exec --storage` waits for durability (and says so during an
//! outage), `--no-wait` returns at once and leaves the upload to the next process, `info`
//! shows the lag, `storage ls` lists namespaces and objects, `restore` rebuilds from the
//! store alone, bad input (namespace, URL) is a clear error, and a mistyped `--storage` does
//! not re-target a log shipped elsewhere unless `--move-to-store` says so.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::DEAD_S3;
use libsql_wal_testkit::support as common;

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

    // The first exec's clean close could not give the file back: it says so (before:
    // nothing, and stock sqlite3 then refused a database that had been "closed").
    let said = stderr(&out);
    assert!(said.contains("kept the log directory") && said.contains("not durable in storage yet"), "{said}");
    // Nor can a process not given the storage; it says why.
    let out = run(&["exec", db_arg, "SELECT count(*) FROM t"]);
    assert_eq!(stdout(&out).trim(), "300", "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("kept the log directory") && said.contains("this process was not given"), "{said}");

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

/// `info` changes nothing (defects issue): on a log with full segments left unsealed, a torn
/// tail and frames not yet uploaded, with and without `--storage` (the right store, a
/// missing one, another namespace), every file keeps its bytes and mtime, and nothing is
/// created: no recovery, no upload, no checkpoint, no store directory. What it reports is
/// what an open then finds.
#[test]
fn info_changes_nothing_and_reports_what_an_open_finds() {
    use libsql_wal::{LibsqlWalManager, Storage, WalConfig, flush_to_storage, inspect, io::StdIo, open_connection};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let db_arg = db.to_str().unwrap();
    let log_dir = dir.path().join("shop.db-wal");
    let store = dir.path().join("store");
    let url = format!("file://{}", store.display());
    let missing = dir.path().join("missing");
    let missing_url = format!("file://{}", missing.join("store").display());
    let config = WalConfig {
        segment_frames_max: 8,
        segment_age_max: None,
        checkpoint_on_close: false,
        defer_seals: true,
        ..WalConfig::default()
    };
    // Shipped to the store up to `durable`, then more commits made without storage (full
    // segments left unsealed, not uploaded), then a torn write at the end of the last one.
    let shipped = LibsqlWalManager::new(StdIo::shared(), config.clone()).with_storage(Storage::open(&url).unwrap());
    let conn = open_connection(&db, &shipped).unwrap();
    conn.execute_batch(&script(0, 40)).unwrap();
    let durable = flush_to_storage(&db, Some(Duration::from_secs(60)), &shipped).unwrap().unwrap();
    drop(conn);
    let local = LibsqlWalManager::new(StdIo::shared(), config.clone());
    let conn = open_connection(&db, &local).unwrap();
    conn.execute_batch(&script(40, 80)).unwrap();
    drop(conn);
    let newest = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(&newest).unwrap();
    std::io::Write::write_all(&mut file, &[0xAB; 700]).unwrap();
    drop(file);

    let before = common::tree_state(&[dir.path()]);
    let mut reports = Vec::new();
    for args in [
        vec!["info", db_arg],
        vec!["info", "--storage", &url, db_arg],
        vec!["info", "--storage", &missing_url, db_arg],
        vec!["info", "--storage", &url, "--namespace", "other", db_arg],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        common::assert_same_tree(&format!("{args:?}"), &before, &common::tree_state(&[dir.path()]));
        reports.push(stdout(&out));
    }
    assert!(!missing.exists(), "info created the store directory");
    for report in &reports {
        assert!(report.contains("the next open recovers the log:"), "{report}");
        assert!(report.contains("full, sealed at open"), "{report}");
        assert!(report.contains("700 bytes after the last commit frame"), "{report}");
    }
    assert!(reports[0].contains("storage: not configured here"), "{}", reports[0]);
    assert!(reports[1].contains(&format!("durable frame_no: {durable} (lag ")), "{}", reports[1]);
    assert!(reports[2].contains("shipped to another store or namespace"), "{}", reports[2]);
    assert!(reports[3].contains("shipped to another store or namespace"), "{}", reports[3]);

    // What info said is what an open finds.
    let last: u64 = reports[0]
        .lines()
        .find_map(|l| l.strip_prefix("last frame_no: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("info prints the last frame_no");
    let found = inspect(&db, &local).unwrap();
    assert_eq!(found.last_frame_no, last);
    assert!(found.last_frame_no > durable, "setup: frames not yet uploaded");
    let listed: Vec<&str> = reports[0]
        .lines()
        .skip_while(|l| !l.starts_with("segments: "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let opened: Vec<String> =
        found.segments.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(listed, opened, "the segments info listed are those an open keeps");
}

/// `info` on a database another process holds says it is in use (exit 1) and touches nothing.
#[test]
fn info_on_a_database_in_use_says_so() {
    use libsql_wal::{LibsqlWalManager, open_connection};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let conn = open_connection(&db, &LibsqlWalManager::default()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let before = common::tree_state(&[dir.path()]);
    let out = run(&["info", db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    common::assert_same_tree("info on a database in use", &before, &common::tree_state(&[dir.path()]));
    drop(conn);
}
