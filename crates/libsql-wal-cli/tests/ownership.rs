//! Ownership of a database (BRIEF §3, invariant 9): while this process holds a connection on
//! our WAL with committed, un-checkpointed data, another process gets an error, never a
//! (stale) view: neither our CLI nor stock `sqlite3`. After the connection closes, stock
//! `sqlite3` reads everything from a plain SQLite file. And the other way round: a database
//! that stock `sqlite3` has open in WAL mode is not taken over behind its back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
const ROWS: i64 = 500;

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Bytes of frames in the segment files of the log (headers excluded).
fn segment_bytes(db: &Path) -> u64 {
    std::fs::read_dir(log_dir(db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len().saturating_sub(64))
        .sum()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Does `stdout` contain a line that is only a number (a row `count(*)` printed)?
fn printed_a_count(stdout: &str) -> bool {
    stdout.lines().any(|l| !l.trim().is_empty() && l.trim().parse::<i64>().is_ok())
}

fn count(conn: &libsql_sys::rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

#[test]
fn another_process_is_refused_while_we_own_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("owned.db");
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig { checkpoint_on_close: true, ..Default::default() });
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT);").unwrap();
    // Several transactions, so the log holds many committed frames.
    for chunk in 0..10 {
        conn.execute_batch(&format!(
            "WITH RECURSIVE c(x) AS (SELECT {} UNION ALL SELECT x + 1 FROM c WHERE x < {}) \
             INSERT INTO t SELECT x, printf('row %d %s', x, hex(randomblob(50))) FROM c;",
            chunk * (ROWS / 10) + 1,
            (chunk + 1) * (ROWS / 10)
        ))
        .unwrap();
    }
    assert_eq!(count(&conn), ROWS);
    assert!(log_dir(&db).is_dir(), "no log directory while a connection is open");
    assert!(segment_bytes(&db) > 0, "the committed data is not in the log: nothing to protect");
    let db_before = std::fs::read(&db).unwrap();

    // (a) Our CLI in another process: refused, says why, prints no row.
    let out = Command::new(BIN).arg("exec").arg(&db).arg("SELECT count(*) FROM t").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "the CLI read a database another process owns: {stdout}");
    assert!(
        stderr.contains("in use") || stdout.contains("in use"),
        "the CLI's error does not say the database is in use: stdout={stdout:?} stderr={stderr:?}"
    );
    assert!(!printed_a_count(&stdout), "the CLI printed a row: {stdout:?}");
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    // Its `checkpoint` and `info` are refused too (and must not checkpoint under our feet).
    for args in [&["checkpoint", "--mode", "truncate"][..], &["info"][..]] {
        let out = Command::new(BIN).arg(args[0]).arg(&db).args(&args[1..]).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "`libsql-wal {}` succeeded on an owned database: {stdout}", args[0]);
        assert!(stderr.contains("in use"), "`libsql-wal {}` error: {stderr}", args[0]);
    }

    // (b) Stock sqlite3: an error, never a count, read-write or read-only.
    for extra in [&[][..], &["-readonly"][..]] {
        let out = Command::new("sqlite3")
            .args(extra)
            .arg("-cmd")
            .arg(".timeout 0")
            .arg(&db)
            .arg("SELECT count(*) FROM t;")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        eprintln!("stock sqlite3 {extra:?} on an owned database: exit {:?}, {}", out.status.code(), stderr.trim());
        let failed = !out.status.success() || stderr.contains("Error") || stdout.contains("Error");
        assert!(failed, "stock sqlite3 {extra:?} read an owned database: stdout={stdout:?} stderr={stderr:?}");
        assert!(!printed_a_count(&stdout), "stock sqlite3 {extra:?} printed a count: {stdout:?}");
    }

    // The refused processes changed nothing, and our connection still works.
    assert!(std::fs::read(&db).unwrap() == db_before, "a refused process changed the database file");
    conn.execute("INSERT INTO t VALUES (?1, 'after')", [ROWS + 1]).unwrap();
    assert_eq!(count(&conn), ROWS + 1);

    // (c) Once the last connection closes, everything is checkpointed and the log is gone:
    // stock sqlite3 reads every row of a sound file.
    drop(conn);
    assert!(!log_dir(&db).exists(), "the -wal directory is still there after the last connection closed");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM t; SELECT count(*) FROM t WHERE v LIKE 'row %'; PRAGMA integrity_check;")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stock sqlite3 failed after close: {stderr}");
    let expected = format!("{}\n{}\nok\n", ROWS + 1, ROWS);
    assert_eq!(stdout, expected, "stock sqlite3 after close (stderr: {stderr})");
}

/// The other direction: stock `sqlite3` has the database open in WAL mode (its `-wal` file
/// and `-shm` live) when we open it. Whatever the design (refuse, or share safely), no side
/// may see a view missing a transaction the other side committed, and no committed
/// transaction may be lost.
#[test]
fn a_database_open_in_stock_sqlite_is_not_taken_over_behind_its_back() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let mut sqlite = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 1000")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("sqlite3.err")).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = sqlite.stdin.take().unwrap();
    let mut stdout = BufReader::new(sqlite.stdout.take().unwrap());
    // Runs SQL in the stock sqlite3 process; returns its output lines.
    let mut stock = |sql: &str| -> Vec<String> {
        writeln!(stdin, "{sql}\nSELECT 'done';").unwrap();
        stdin.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "sqlite3 exited");
            if line.trim_end() == "done" {
                return lines;
            }
            lines.push(line.trim_end().to_string());
        }
    };
    // total_changes() moves by one exactly when the stock INSERT committed.
    let stock_insert = |stock: &mut dyn FnMut(&str) -> Vec<String>, x: i64| -> bool {
        let before = stock("SELECT 'tc', total_changes();");
        let after = stock(&format!("INSERT INTO t VALUES ({x}); SELECT 'tc', total_changes();"));
        before != after
    };
    let stock_view = |stock: &mut dyn FnMut(&str) -> Vec<String>| -> Option<Vec<i64>> {
        let out = stock("SELECT 'view', (SELECT group_concat(x) FROM (SELECT x FROM t ORDER BY x));");
        let line = out.iter().find_map(|l| l.strip_prefix("view|"))?;
        Some(line.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect())
    };

    stock("PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);");
    assert!(log_dir(&db).is_file(), "fixture: stock sqlite3 has no -wal file");
    let mut committed = vec![1];
    let mut problems: Vec<String> = Vec::new();

    let manager = LibsqlWalManager::default();
    match open_connection(&db, &manager) {
        Err(e) => eprintln!("refused while stock sqlite3 has the database open: {e}"),
        Ok(conn) => {
            let ours_view = |conn: &libsql_sys::rusqlite::Connection| -> Option<Vec<i64>> {
                let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").ok()?;
                let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).ok()?;
                rows.collect::<Result<Vec<_>, _>>().ok()
            };
            if conn.execute("INSERT INTO t VALUES (2)", []).is_ok() {
                committed.push(2);
            }
            if stock_insert(&mut stock, 3) {
                committed.push(3);
            }
            if let Some(view) = stock_view(&mut stock)
                && !committed.iter().all(|x| view.contains(x))
            {
                problems.push(format!("stock sqlite3 saw {view:?}, committed so far: {committed:?}"));
            }
            if let Some(view) = ours_view(&conn)
                && !committed.iter().all(|x| view.contains(x))
            {
                problems.push(format!("our connection saw {view:?}, committed so far: {committed:?}"));
            }
            if conn.execute("INSERT INTO t VALUES (4)", []).is_ok() {
                committed.push(4);
            }
            drop(conn);
        }
    }
    if stock_insert(&mut stock, 5) {
        committed.push(5);
    }
    // Closing its stdin ends the sqlite3 process (the closure borrowing it is done).
    drop(stdin);
    sqlite.wait().unwrap();

    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT group_concat(x) FROM (SELECT x FROM t ORDER BY x); PRAGMA integrity_check;")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let expected: Vec<String> = committed.iter().map(|x| x.to_string()).collect();
    if stdout != format!("{}\nok\n", expected.join(",")) {
        problems.push(format!("at the end stock sqlite3 reads {stdout:?} {stderr}, committed: {committed:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
