//! The scale workload: many databases in one process, each used a little and then left idle,
//! as a server holding thousands of tenants does. Measures what an idle database costs (resident
//! memory, file descriptors) and what reopening one costs, warm and after eviction.

use std::path::Path;
use std::time::{Duration, Instant};

use libsql_wal::{
    Checkpointer, CheckpointerConfig, Error, LibsqlWalManager, Result, WalConfig, close_idle_logs, io::StdIo,
    open_connection, registry_stats, set_idle_open_files_max,
};

/// One scale run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub databases: usize,
    /// One-row transactions per database.
    pub commits_per_database: usize,
    /// The registry's bound on descriptors held by idle logs.
    pub idle_open_files_max: usize,
}

/// What a scale run measured.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub databases: usize,
    /// Resident memory the process gained, per database, once all of them are idle.
    pub kib_per_idle_database: f64,
    /// The same, over the first databases only, while every one of them was still open (idle
    /// but not evicted): what a warm idle log costs.
    pub kib_per_warm_idle_database: f64,
    /// Descriptors the process gained with every database idle (must stay within the bound).
    pub open_files: usize,
    /// The most descriptors the process gained at any point of the run (sampled every 64
    /// databases).
    pub open_files_peak: usize,
    /// Idle logs still open at the end (the rest were closed to keep within the bound).
    pub idle_logs_open: usize,
    /// Time to open a connection on a warm idle database and read its rows.
    pub reopen_warm: Duration,
    /// The same for a database whose log was evicted (recovered from its files); `None` when
    /// the bound kept every log open.
    pub reopen_cold: Option<Duration>,
}

/// Creates `config.databases` databases under `dir`, each in WAL mode on our log with
/// `commits_per_database` one-row commits (`synchronous=NORMAL`), then closes its connection;
/// the registry keeps the logs open (`keep_open_when_idle`) within `idle_open_files_max`.
/// Every database is checked afterwards (reopened, rows counted).
pub fn idle_databases(dir: &Path, config: &ScaleConfig) -> Result<ScaleReport> {
    if config.databases == 0 {
        return Err(Error::Bench("the scale workload needs at least one database".into()));
    }
    let wal_config = WalConfig { keep_open_when_idle: true, ..WalConfig::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), wal_config)
        .with_checkpointer(Checkpointer::new(CheckpointerConfig::default()));
    set_idle_open_files_max(config.idle_open_files_max);
    let path_of = |i: usize| dir.join(format!("tenant-{i:05}.db"));
    // SQLite's and our process-wide state exist before the baseline is taken.
    fill(&dir.join("warm-up.db"), &manager, 1)?;
    close_idle_logs();
    let (rss_before, files_before) = (resident_bytes()?, open_descriptors()?);
    let warm_count = warm_capacity(config);
    let mut kib_per_warm = f64::NAN;
    let mut files_peak = 0usize;
    for i in 0..config.databases {
        fill(&path_of(i), &manager, config.commits_per_database)?;
        // Listing thousands of descriptors for every database would dominate the run.
        if i % 64 == 0 || i + 1 == config.databases {
            files_peak = files_peak.max(open_descriptors()?.saturating_sub(files_before));
        }
        if i + 1 == warm_count {
            kib_per_warm = kib_since(rss_before, warm_count)?;
        }
    }
    let kib_per_idle = kib_since(rss_before, config.databases)?;
    let open_files = open_descriptors()?.saturating_sub(files_before);
    let idle_logs_open = registry_stats().idle_logs;

    let started = Instant::now();
    check_rows(&path_of(config.databases - 1), &manager, config.commits_per_database)?;
    let reopen_warm = started.elapsed();
    // The first database is the least recently used: evicted, if any was.
    let started = Instant::now();
    check_rows(&path_of(0), &manager, config.commits_per_database)?;
    let reopen_cold = (idle_logs_open < config.databases).then(|| started.elapsed());
    for i in 0..config.databases {
        check_rows(&path_of(i), &manager, config.commits_per_database)?;
    }
    close_idle_logs();
    set_idle_open_files_max(libsql_wal::DEFAULT_IDLE_OPEN_FILES_MAX);
    Ok(ScaleReport {
        databases: config.databases,
        kib_per_idle_database: kib_per_idle,
        kib_per_warm_idle_database: kib_per_warm,
        open_files,
        open_files_peak: files_peak,
        idle_logs_open,
        reopen_warm,
        reopen_cold,
    })
}

/// How many idle logs of one segment each fit within the bound (database file, lock, segment).
fn warm_capacity(config: &ScaleConfig) -> usize {
    (config.idle_open_files_max / 3).clamp(1, config.databases)
}

fn fill(path: &Path, manager: &LibsqlWalManager, commits: usize) -> Result<()> {
    let conn = open_connection(path, manager)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
    )?;
    let mut insert = conn.prepare("INSERT INTO t(v) VALUES (randomblob(100))")?;
    for _ in 0..commits {
        insert.execute([])?;
    }
    Ok(())
}

fn check_rows(path: &Path, manager: &LibsqlWalManager, expected: usize) -> Result<()> {
    let conn = open_connection(path, manager)?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    if rows as usize != expected {
        return Err(Error::Bench(format!("{}: {rows} rows, expected {expected}", path.display())));
    }
    Ok(())
}

fn kib_since(rss_before: u64, databases: usize) -> Result<f64> {
    Ok(resident_bytes()?.saturating_sub(rss_before) as f64 / 1024.0 / databases as f64)
}

/// The process's resident memory, after handing freed heap back to the system (so memory
/// SQLite freed when its connections closed is not counted as kept).
pub fn resident_bytes() -> Result<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm")
        .map_err(libsql_wal::Error::io(libsql_wal::IoAction::Read, "/proc/self/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| Error::Bench(format!("/proc/self/statm: unexpected {statm:?}")))?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(pages * page_size)
}

/// File descriptors the process has open.
pub fn open_descriptors() -> Result<usize> {
    let dir = "/proc/self/fd";
    Ok(std::fs::read_dir(dir).map_err(libsql_wal::Error::io(libsql_wal::IoAction::Read, dir))?.count())
}
