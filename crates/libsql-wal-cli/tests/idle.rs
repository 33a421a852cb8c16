//! Logs kept open without connections (`WalConfig::keep_open_when_idle`), as a server holding
//! many databases keeps them: they stay ours (another process is refused), their data stays
//! readable, and the descriptors they hold together never pass the registry's bound: the
//! least recently used are closed, without losing anything, and reopen from their files.
//!
//! The registry and its bound are process-wide, and the descriptor counts are the process's:
//! the tests of this file run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use libsql_wal::io::StdIo;
use libsql_wal::{
    Checkpointer, CheckpointerConfig, DEFAULT_IDLE_OPEN_FILES_MAX, LibsqlWalManager, RegistryStats, WalConfig,
    close_idle_logs, open_connection, registry_stats, set_idle_open_files_max,
};
use libsql_wal_testkit::bench::scale::open_descriptors;

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn manager() -> LibsqlWalManager {
    manager_with(Checkpointer::new(CheckpointerConfig::default()))
}

fn manager_with(checkpointer: Checkpointer) -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig { keep_open_when_idle: true, ..WalConfig::default() })
        .with_checkpointer(checkpointer)
}

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn add_rows(db: &Path, manager: &LibsqlWalManager, synchronous: &str, rows: usize) {
    let conn = open_connection(db, manager).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; CREATE TABLE IF NOT EXISTS t(v)"
    ))
    .unwrap();
    for i in 0..rows {
        conn.execute("INSERT INTO t VALUES (?1)", [i as i64]).unwrap();
    }
}

fn rows(db: &Path, manager: &LibsqlWalManager) -> i64 {
    let conn = open_connection(db, manager).unwrap();
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

/// Held for a whole test: runs it alone, and leaves the registry as the next test expects
/// it (nothing idle, the default bound) before letting the next one in.
struct Alone {
    _reset: Reset,
    _one: std::sync::MutexGuard<'static, ()>,
}

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        close_idle_logs();
        set_idle_open_files_max(DEFAULT_IDLE_OPEN_FILES_MAX);
    }
}

fn alone() -> Alone {
    Alone { _one: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()), _reset: Reset }
}

#[test]
fn an_idle_log_stays_open_and_ours() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    let manager = manager();
    add_rows(&db, &manager, "FULL", 10);
    let stats = registry_stats();
    assert_eq!((stats.logs, stats.idle_logs), (1, 1), "the log outlives its last connection");
    let idle_files = stats.idle_open_files;
    assert!(idle_files >= 3, "database file, lock and segment: {idle_files}");
    assert!(log_dir(&db).join("lock").exists());

    // Still ours: another process is refused rather than shown a stale file.
    let out = Command::new(BIN).arg("exec").arg(&db).arg("SELECT count(*) FROM t").output().unwrap();
    assert!(!out.status.success(), "another process read a database we keep open");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));

    add_rows(&db, &manager, "FULL", 5);
    assert_eq!(rows(&db, &manager), 15);
    assert_eq!(registry_stats().idle_logs, 1, "reopened and idle again, not a second log");

    // Closing idle logs checkpoints them (checkpoint_on_close): a plain SQLite file again.
    assert_eq!(close_idle_logs(), 1);
    assert_eq!(registry_stats(), RegistryStats::default());
    assert!(!log_dir(&db).exists(), "the log was checkpointed and removed");
    let out = Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check; SELECT count(*) FROM t").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n15\n");
}

#[test]
fn idle_descriptors_stay_within_the_bound_and_evicted_logs_lose_nothing() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(CheckpointerConfig::default());
    let manager = manager_with(checkpointer.clone());
    const BOUND: usize = 30;
    const DATABASES: usize = 60;
    set_idle_open_files_max(BOUND);
    let before = open_descriptors().unwrap();
    let dbs: Vec<PathBuf> = (0..DATABASES).map(|i| dir.path().join(format!("db{i}.db"))).collect();
    for (i, db) in dbs.iter().enumerate() {
        // FULL commits preallocate their segment: eviction must give the zeros back.
        add_rows(db, &manager, "FULL", 3 + i % 3);
        let idle_files = registry_stats().idle_open_files;
        assert!(idle_files <= BOUND, "idle logs hold {idle_files} descriptors, bound {BOUND}");
        // Slack of one log: the ticker may hold the log it is looking at (it holds one at a
        // time) for a moment after its eviction, with its four files (database, its lock,
        // the log's lock, one segment).
        let held = open_descriptors().unwrap().saturating_sub(before);
        assert!(held <= BOUND + 4, "the process holds {held} more descriptors, bound {BOUND}");
    }
    let RegistryStats { logs, idle_logs: idle, .. } = registry_stats();
    assert_eq!(logs, idle, "no log in use");
    assert!((BOUND / 4..=BOUND / 3).contains(&idle), "{idle} idle logs kept for a bound of {BOUND}");

    // The first databases were evicted: their logs are on disk, uncheckpointed and small.
    let evicted_segment = std::fs::read_dir(log_dir(&dbs[0]))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"));
    let evicted_segment = evicted_segment.expect("an evicted log keeps its segment");
    let len = std::fs::metadata(&evicted_segment).unwrap().len();
    assert!(len < 64 * 1024, "the evicted segment kept its preallocation: {len} bytes");

    // Every database has every row, evicted or not, and more can be written.
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(rows(db, &manager), (3 + i % 3) as i64, "{}", db.display());
    }
    add_rows(&dbs[0], &manager, "FULL", 1);
    assert_eq!(rows(&dbs[0], &manager), 4);
    assert!(registry_stats().idle_open_files <= BOUND);

    // Lowering the bound closes idle logs at once.
    set_idle_open_files_max(0);
    assert_eq!(registry_stats(), RegistryStats::default());
    // The checkpointer's threads may still hold a closed log for a moment (the ticker, the
    // one it is looking at): counted once they have stopped, not after a guessed delay.
    drop(manager);
    let threads = checkpointer.threads();
    checkpointer.shutdown(std::time::Duration::from_secs(10));
    assert!(threads.wait_stopped(std::time::Duration::from_secs(30)));
    assert!(open_descriptors().unwrap() <= before, "descriptors left open after every log closed");
}

#[test]
fn opens_and_closes_from_many_threads_with_evictions_lose_no_commit() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let manager = manager();
    // Room for about three idle logs among twelve databases: most reopens recover.
    set_idle_open_files_max(9);
    const DATABASES: usize = 12;
    const THREADS: usize = 4;
    const ROUNDS: usize = 40;
    let dbs: Vec<PathBuf> = (0..DATABASES).map(|i| dir.path().join(format!("db{i}.db"))).collect();
    for db in &dbs {
        add_rows(db, &manager, "NORMAL", 0);
    }
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (dbs, manager) = (&dbs, &manager);
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64);
                for _ in 0..ROUNDS {
                    let db = &dbs[rng.usize(..DATABASES)];
                    let conn = open_connection(db, manager).unwrap();
                    conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                    conn.execute("INSERT INTO t VALUES (?1)", [t as i64]).unwrap();
                }
            });
        }
    });
    assert!(registry_stats().idle_open_files <= 9);
    let total: i64 = dbs.iter().map(|db| rows(db, &manager)).sum();
    assert_eq!(total, (THREADS * ROUNDS) as i64, "a commit was lost across evictions");
}

/// Counts this checkpointer's own threads (`Checkpointer::threads`), not the process's by
/// name: other checkpointers' threads (earlier tests', the global one) come and go meanwhile.
#[test]
fn a_checkpointer_stops_its_threads_when_its_last_handle_goes() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(CheckpointerConfig::default());
    let threads = checkpointer.threads();
    assert_eq!(threads.live(), 0, "threads start with the first database, not before");
    let manager =
        LibsqlWalManager::new(StdIo::shared(), WalConfig { keep_open_when_idle: true, ..WalConfig::default() })
            .with_checkpointer(checkpointer);
    add_rows(&dir.path().join("a.db"), &manager, "NORMAL", 3);
    let workers = CheckpointerConfig::default().concurrency_max;
    assert_eq!(threads.live(), workers + 1, "the checkpointer started its workers and its ticker");
    // The idle log holds a handle: the threads live on until it closes.
    drop(manager);
    assert_eq!(threads.live(), workers + 1, "threads stopped while an idle log still holds a handle");
    close_idle_logs();
    // They stop within a tick; the wait ends as soon as they have.
    assert!(threads.wait_stopped(std::time::Duration::from_secs(30)), "checkpointer threads outlived every handle");
    assert_eq!(threads.live(), 0);
}
