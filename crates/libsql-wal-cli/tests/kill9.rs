//! Crash safety under SIGKILL (BRIEF §3, invariants 4 and 6), the way
//! `/work/shared/checks/kill9.py` does it: a child process (`libsql-wal exec DB -f script`)
//! commits with `PRAGMA synchronous=FULL` and prints `ack|i` after each commit of
//! transaction `i`; we SIGKILL it at a random moment, reopen, and check that the database
//! holds exactly a prefix of whole transactions containing every acknowledged one, and that
//! `PRAGMA integrity_check` says `ok`. At the end a truncate checkpoint must leave a file
//! that stock `sqlite3` finds intact.
//!
//! The default is 20 rounds (7-9 s in a debug build on 2 cores; 100 rounds take about 75 s).
//! `KILL9_ROUNDS` sets the round count; the long form:
//!
//! ```text
//! KILL9_ROUNDS=100 cargo test --test kill9
//! ```
//!
//! The seed is printed at the start (run with `--nocapture` to see it); `KILL9_SEED=<seed>`
//! replays a run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
const DEFAULT_ROUNDS: usize = 20;
/// Transactions in each round's script: far more than a writer commits before it is killed.
const TXS_PER_ROUND: u64 = 5000;

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What a reader found after a crash: rows per transaction (`i / 100`), in order, and the
/// first line of `PRAGMA integrity_check`.
struct Found {
    groups: Vec<(u64, u64)>,
    integrity: String,
}

/// Reads the database in this process, keeping the log on close (so the next writer
/// recovers a log that grew over several crashes).
fn read_in_process(db: &Path) -> Result<Found, String> {
    let manager =
        LibsqlWalManager::new(StdIo::shared(), WalConfig { checkpoint_on_close: false, ..Default::default() });
    let conn = open_connection(db, &manager).map_err(|e| format!("open: {e}"))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 't'", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let mut groups = Vec::new();
    if tables == 1 {
        let mut stmt =
            conn.prepare("SELECT i / 100, count(*) FROM t GROUP BY 1 ORDER BY 1").map_err(|e| e.to_string())?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)));
        for row in rows.map_err(|e| e.to_string())? {
            groups.push(row.map_err(|e| e.to_string())?);
        }
    }
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    Ok(Found { groups, integrity })
}

/// Reads the database through the CLI in another process (which checkpoints on close).
fn read_with_cli(db: &Path) -> Result<Found, String> {
    let out = Command::new(BIN)
        .arg("exec")
        .arg(db)
        .arg("SELECT i / 100, count(*) FROM t GROUP BY 1 ORDER BY 1; PRAGMA integrity_check;")
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut found = Found { groups: Vec::new(), integrity: String::new() };
    // SQL errors go to stderr, as with `sqlite3`.
    let no_table = stderr.lines().any(|line| line == "Error: no such table: t");
    for line in stdout.lines() {
        if let Some((tx, n)) = line.split_once('|') {
            let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("CLI printed {line:?}"));
            found.groups.push((parse(tx)?, parse(n)?));
        } else if found.integrity.is_empty() {
            found.integrity = line.to_string();
        } else {
            return Err(format!("CLI printed {line:?}"));
        }
    }
    if !out.status.success() && !no_table {
        return Err(format!("CLI failed ({}): {} {}", out.status, stdout.trim(), stderr.trim()));
    }
    Ok(found)
}

/// The writer's script for transactions `base+1 ..= base+TXS_PER_ROUND`; returns it and the
/// number of rows of each transaction.
fn script(rng: &mut fastrand::Rng, base: u64) -> (String, Vec<u64>) {
    let mut sql =
        String::from("PRAGMA synchronous=FULL;\nCREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, v BLOB);\n");
    let mut rows = Vec::with_capacity(TXS_PER_ROUND as usize);
    for i in base + 1..=base + TXS_PER_ROUND {
        let n = [1, 1, 1, 3, 20][rng.usize(..5)];
        sql.push_str("INSERT INTO t VALUES ");
        for k in 0..n {
            let size = [10, 300, 5000][rng.usize(..3)];
            let sep = if k == 0 { "" } else { "," };
            write!(sql, "{sep}({}, randomblob({size}))", i * 100 + k).unwrap();
        }
        writeln!(sql, "; SELECT 'ack', {i};").unwrap();
        rows.push(n);
    }
    (sql, rows)
}

/// The acknowledged transactions in the writer's output: complete `ack|i` lines only.
fn acks(output: &str) -> Result<Vec<u64>, String> {
    let mut acks = Vec::new();
    for line in output.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let line = line.trim_end();
        match line.strip_prefix("ack|") {
            Some(i) => acks.push(i.parse().map_err(|_| format!("writer printed {line:?}"))?),
            None => return Err(format!("writer printed {line:?}")),
        }
    }
    Ok(acks)
}

#[test]
fn sigkilled_writer_keeps_every_acknowledged_commit() {
    let rounds = env_number("KILL9_ROUNDS").map_or(DEFAULT_ROUNDS, |n| n as usize);
    let seed = env_number("KILL9_SEED").unwrap_or_else(|| fastrand::u64(..));
    println!("kill9: {rounds} rounds, seed {seed} (replay with KILL9_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let script_path = dir.path().join("w.sql");
    let out_path = dir.path().join("out.txt");
    let err_path = dir.path().join("err.txt");

    // expected[tx - 1]: rows of transaction tx, for the transactions in the database.
    let mut expected: Vec<u64> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let (mut total_acks, mut killed, mut cli_reads, mut rounds_run) = (0usize, 0usize, 0usize, 0usize);

    for round in 0..rounds {
        rounds_run += 1;
        let base = expected.len() as u64;
        let (sql, rows) = script(&mut rng, base);
        std::fs::write(&script_path, sql).unwrap();
        let mut child = Command::new(BIN)
            .arg("exec")
            .arg(&db)
            .arg("-f")
            .arg(&script_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if stderr.contains("panicked") {
            problems.push(format!("round {round}: the writer panicked: {stderr}"));
        }
        let output = std::fs::read_to_string(&out_path).unwrap();
        let acked = match acks(&output) {
            Ok(acked) => acked,
            Err(e) => {
                problems.push(format!("round {round}: {e} ({status}, stderr: {})", stderr.trim()));
                break;
            }
        };
        if acked.iter().copied().ne(base + 1..=base + acked.len() as u64) {
            problems.push(format!("round {round}: acks out of order: {:?}…", &acked[..acked.len().min(5)]));
        }
        total_acks += acked.len();
        let last_ack = acked.last().copied().unwrap_or(base);

        // Half the rounds read back in this process (the log stays for the next writer to
        // recover), half through the CLI in another process (which checkpoints on close).
        let use_cli = rng.bool();
        cli_reads += use_cli as usize;
        let found = if use_cli { read_with_cli(&db) } else { read_in_process(&db) };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!("round {round}: reopen failed: {e}"));
                break;
            }
        };
        if found.integrity != "ok" {
            problems.push(format!("round {round}: integrity_check: {}", found.integrity));
        }
        // Exactly a prefix of whole transactions: 1, 2, ..., have, each with all its rows.
        let all: Vec<u64> = expected.iter().copied().chain(rows).collect();
        let have = found.groups.len() as u64;
        for (k, &(tx, n)) in found.groups.iter().enumerate() {
            let want = all.get(tx as usize - 1).copied();
            if tx != k as u64 + 1 || want != Some(n) {
                problems.push(format!(
                    "round {round}: not a prefix of whole transactions: position {k} holds tx {tx} with {n} rows \
                     (expected tx {} with {want:?} rows)",
                    k + 1
                ));
                break;
            }
        }
        if have < last_ack {
            problems.push(format!("round {round}: tx {last_ack} was acknowledged but only {have} are present"));
        }
        if have < base {
            problems.push(format!("round {round}: {base} transactions were present before, now {have}"));
        }
        expected = all;
        expected.truncate(have as usize);
        if problems.len() > 10 {
            break;
        }
    }

    // A truncate checkpoint hands stock sqlite3 a sound plain SQLite file with every row.
    let out = Command::new(BIN).arg("checkpoint").arg(&db).arg("--mode").arg("truncate").output().unwrap();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).starts_with("0|") {
        problems.push(format!(
            "checkpoint --mode truncate: {} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if log_dir(&db).exists() {
        problems.push("the -wal directory is still there after a truncate checkpoint".into());
    }
    let rows: u64 = expected.iter().sum();
    let out = Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check; SELECT count(*) FROM t;").output().unwrap();
    let stock = String::from_utf8_lossy(&out.stdout);
    if stock != format!("ok\n{rows}\n") {
        problems.push(format!(
            "stock sqlite3 after the checkpoint: {:?} (expected ok and {rows} rows) {}",
            stock,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }

    // A writer that never acknowledged anything, or was never killed, tested nothing.
    if total_acks < rounds * 5 {
        problems.push(format!("only {total_acks} commits acknowledged in {rounds} rounds: nothing was tested"));
    }
    if killed * 2 < rounds_run {
        problems.push(format!("the writer was killed in only {killed} of {rounds_run} rounds: it finished too fast"));
    }
    println!(
        "kill9: {rounds_run} rounds ({killed} killed, {cli_reads} read back by the CLI), {total_acks} acks, \
         {} transactions / {rows} rows at the end, {:.1} s, seed {seed}",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "seed {seed}:\n{}", problems.join("\n"));
}
