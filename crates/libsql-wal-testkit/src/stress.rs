//! The bank workload: one writer moves money between accounts and bumps a counter in each
//! transaction; readers check, in every snapshot, that the total never changes, that the
//! counter never goes backwards, and that a snapshot does not move while it is open.
//! A checkpointer thread runs passive checkpoints all along. Used by `tests/concurrency.rs`
//! (a short run) and by `libsql-wal stress` (the long run).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsql_sys::rusqlite::{self, ErrorCode};

use libsql_wal::{LibsqlWalManager, Result, open_connection};

const ACCOUNTS: i64 = 2000;
const INITIAL_BALANCE: i64 = 1000;
/// Small page caches make readers go to the log and the database file for most pages.
const READER_CACHE_PAGES: i64 = 8;

#[derive(Debug, Clone)]
pub struct StressConfig {
    pub duration: Duration,
    pub readers: usize,
    pub seed: u64,
}

/// What a run saw. A correct WAL has zero violations and zero corruption errors.
#[derive(Debug, Default, Clone)]
pub struct StressReport {
    pub commits: u64,
    pub snapshots_checked: u64,
    pub checkpoints: u64,
    /// A snapshot whose total was wrong, whose counter went backwards, or that moved.
    pub violations: u64,
    pub corrupt_errors: u64,
    /// Other errors than "busy": each is a bug too.
    pub other_errors: u64,
    pub first_problem: Option<String>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    snapshots: AtomicU64,
    checkpoints: AtomicU64,
    violations: AtomicU64,
    corrupt: AtomicU64,
    other: AtomicU64,
    first_problem: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.first_problem.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(what);
    }

    fn error(&self, context: &str, e: &rusqlite::Error) {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {}
            Some(ErrorCode::DatabaseCorrupt) => self.problem(&self.corrupt, format!("{context}: {e}")),
            _ => self.problem(&self.other, format!("{context}: {e}")),
        }
    }
}

/// Runs the workload on `db_path` (created) and reports what it saw.
pub fn run_bank(db_path: &Path, manager: &LibsqlWalManager, config: &StressConfig) -> Result<StressReport> {
    let setup = open_connection(db_path, manager)?;
    setup.execute_batch(
        "CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);
         CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);",
    )?;
    setup.execute_batch("BEGIN")?;
    for id in 0..ACCOUNTS {
        setup.execute("INSERT OR IGNORE INTO accounts VALUES (?1, ?2, zeroblob(300))", (id, INITIAL_BALANCE))?;
    }
    setup.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)", ())?;
    setup.execute_batch("COMMIT")?;
    let expected_total: i64 = setup.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))?;
    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + config.duration;
    // Threads the system cannot give (too many readers for its memory or limits) are an
    // error to report, never a panic: the threads already running are stopped first.
    let started = std::thread::scope(|s| -> std::io::Result<()> {
        let spawn_all = || -> std::io::Result<()> {
            let thread = || std::thread::Builder::new();
            thread()
                .name("stress-writer".into())
                .spawn_scoped(s, || writer(db_path, manager, config.seed, &stop, &counters))?;
            thread()
                .name("stress-checkpointer".into())
                .spawn_scoped(s, || checkpointer(db_path, manager, &stop, &counters))?;
            for r in 0..config.readers {
                let (counters, stop) = (&counters, &stop);
                thread()
                    .name(format!("stress-reader-{r}"))
                    .spawn_scoped(s, move || reader(db_path, manager, r, expected_total, stop, counters))?;
            }
            Ok(())
        };
        let started = spawn_all();
        while started.is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        started
    });
    drop(setup);
    started.map_err(libsql_wal::Error::io(libsql_wal::IoAction::Start, db_path))?;
    let first_problem = counters.first_problem.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(StressReport {
        commits: counters.commits.into_inner(),
        snapshots_checked: counters.snapshots.into_inner(),
        checkpoints: counters.checkpoints.into_inner(),
        violations: counters.violations.into_inner(),
        corrupt_errors: counters.corrupt.into_inner(),
        other_errors: counters.other.into_inner(),
        first_problem,
    })
}

fn writer(db_path: &Path, manager: &LibsqlWalManager, seed: u64, stop: &AtomicBool, counters: &Counters) {
    let conn = match open_connection(db_path, manager) {
        Ok(c) => c,
        Err(e) => return counters.problem(&counters.other, format!("writer open: {e}")),
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::SeqCst) {
        let (from, to, amount) = (rng.i64(0..ACCOUNTS), rng.i64(0..ACCOUNTS), rng.i64(1..100));
        let result = conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             UPDATE accounts SET balance = balance - {amount} WHERE id = {from};
             UPDATE accounts SET balance = balance + {amount} WHERE id = {to};
             UPDATE counter SET n = n + 1 WHERE id = 1;
             COMMIT;"
        ));
        match result {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                counters.error("writer", &e);
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
}

fn checkpointer(db_path: &Path, manager: &LibsqlWalManager, stop: &AtomicBool, counters: &Counters) {
    let conn = match open_connection(db_path, manager) {
        Ok(c) => c,
        Err(e) => return counters.problem(&counters.other, format!("checkpointer open: {e}")),
    };
    while !stop.load(Ordering::SeqCst) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => {
                counters.checkpoints.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => counters.error("checkpoint", &e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reader(
    db_path: &Path,
    manager: &LibsqlWalManager,
    id: usize,
    expected_total: i64,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let conn = match open_connection(db_path, manager) {
        Ok(c) => c,
        Err(e) => return counters.problem(&counters.other, format!("reader {id} open: {e}")),
    };
    let _ = conn.execute_batch(&format!("PRAGMA cache_size = {READER_CACHE_PAGES}"));
    let mut last_n = 0i64;
    while !stop.load(Ordering::SeqCst) {
        match check_snapshot(&conn, expected_total, last_n) {
            Ok(Ok(n)) => {
                last_n = n;
                counters.snapshots.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Err(violation)) => counters.problem(&counters.violations, format!("reader {id}: {violation}")),
            Err(e) => counters.error(&format!("reader {id}"), &e),
        }
        let _ = conn.execute_batch("COMMIT");
    }
}

/// One read transaction: total, counter, then total and counter again (the snapshot must
/// not move). Returns the counter, or what was wrong.
fn check_snapshot(
    conn: &rusqlite::Connection,
    expected_total: i64,
    last_n: i64,
) -> rusqlite::Result<std::result::Result<i64, String>> {
    conn.execute_batch("BEGIN")?;
    let total: i64 = conn.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))?;
    let n: i64 = conn.query_row("SELECT n FROM counter WHERE id = 1", [], |r| r.get(0))?;
    let total_again: i64 = conn.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))?;
    let n_again: i64 = conn.query_row("SELECT n FROM counter WHERE id = 1", [], |r| r.get(0))?;
    conn.execute_batch("COMMIT")?;
    Ok(if total != expected_total || total_again != expected_total {
        Err(format!("total {total} then {total_again}, expected {expected_total}"))
    } else if n < last_n {
        Err(format!("counter went back from {last_n} to {n}"))
    } else if n != n_again {
        Err(format!("snapshot moved: counter {n} then {n_again}"))
    } else {
        Ok(n)
    })
}
