//! Benchmarks that compare our WAL with SQLite's own in the same run. Absolute times on a
//! shared machine are noise; the ratio between the two sides, measured side by side, is the
//! figure that means something.

use std::path::Path;
use std::time::{Duration, Instant};

use libsql_sys::rusqlite::{self, Connection};

use libsql_wal::{Checkpointer, CheckpointerConfig, LibsqlWalManager, Result, WalConfig, inspect, io::StdIo};
use libsql_wal::{open_connection, open_sqlite_connection};

pub mod history;
pub mod loopback_s3;
pub mod replication;
pub mod scale;
pub mod serve;
pub mod storage;
pub mod workloads;

/// Which WAL a measurement ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sqlite,
    Ours,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Sqlite => "sqlite",
            Side::Ours => "libsql-wal",
        }
    }
}

/// Commit latency while a large log is checkpointed.
#[derive(Debug, Clone)]
pub struct CheckpointLatencyConfig {
    /// Size of the log built before measuring (one row per page).
    pub log_bytes: u64,
    /// Transactions measured.
    pub commits: usize,
    /// Rows updated per measured transaction (each row is on its own page).
    pub rows_per_commit: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct LatencyReport {
    pub side: Side,
    pub commits: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// For ours: whether the background checkpoint of the large log was still running when
    /// the last measured commit returned (it must be, for the figures to mean "during").
    pub checkpoint_still_running_at_end: bool,
    pub checkpoint_time: Duration,
}

const ROW_PAD_BYTES: usize = 4000;
const LOAD_ROWS_PER_TXN: u64 = 1000;

fn load(conn: &Connection, rows: u64) -> rusqlite::Result<()> {
    conn.execute_batch("CREATE TABLE big(x INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB)")?;
    let mut loaded = 0;
    while loaded < rows {
        let n = LOAD_ROWS_PER_TXN.min(rows - loaded);
        conn.execute_batch(&format!(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
             INSERT INTO big(v, pad) SELECT 0, randomblob({ROW_PAD_BYTES}) FROM c;"
        ))?;
        loaded += n;
    }
    Ok(())
}

/// Runs `commits` small transactions and returns their latencies, sorted.
fn measure_commits(conn: &Connection, rows: u64, config: &CheckpointLatencyConfig) -> rusqlite::Result<Vec<Duration>> {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut latencies = Vec::with_capacity(config.commits);
    let mut update = conn.prepare("UPDATE big SET v = v + 1 WHERE x = ?1")?;
    for _ in 0..config.commits {
        let started = Instant::now();
        conn.execute_batch("BEGIN")?;
        for _ in 0..config.rows_per_commit {
            update.execute([rng.u64(1..=rows) as i64])?;
        }
        conn.execute_batch("COMMIT")?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Both sides build the log with `synchronous=NORMAL`, then the file system is synced
/// ([`settle`]): the measured commits share the disk with the checkpoint, not with the
/// writeback of the gigabyte just written (which neither side had flushed).
/// SQLite: the log is built with autocheckpoint off, then turned back on (1000 frames):
/// the first measured commit pays for the whole log, later ones for every 1000 frames.
/// Ours: the log is built with the background checkpointer paused, then resumed as the
/// measured commits start.
pub fn checkpoint_latency(dir: &Path, side: Side, config: &CheckpointLatencyConfig) -> Result<LatencyReport> {
    let path = dir.join(format!("latency-{}.db", side.name()));
    let rows = (config.log_bytes / 4096).max(1);
    let report = |latencies: Vec<Duration>, still_running: bool, checkpoint_time: Duration| LatencyReport {
        side,
        commits: latencies.len(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
        checkpoint_still_running_at_end: still_running,
        checkpoint_time,
    };
    match side {
        Side::Sqlite => {
            let conn = open_sqlite_connection(&path)?;
            conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")?;
            load(&conn, rows)?;
            settle(dir)?;
            conn.execute_batch("PRAGMA wal_autocheckpoint = 1000;")?;
            let latencies = measure_commits(&conn, rows, config)?;
            // The first measured commit ran the checkpoint of the whole log: the slowest.
            let checkpoint_time = latencies.last().copied().unwrap_or_default();
            drop(conn);
            Ok(report(latencies, false, checkpoint_time))
        }
        Side::Ours => {
            let checkpointer = Checkpointer::new(CheckpointerConfig::default());
            let wal_config = WalConfig { checkpoint_on_close: false, ..Default::default() };
            let manager = LibsqlWalManager::new(StdIo::shared(), wal_config).with_checkpointer(checkpointer.clone());
            checkpointer.pause();
            let conn = open_connection(&path, &manager)?;
            conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
            load(&conn, rows)?;
            settle(dir)?;
            let started = Instant::now();
            checkpointer.resume();
            let latencies = measure_commits(&conn, rows, config)?;
            // Segments other than the current one: sealed (or full) ones the checkpoint has not copied yet.
            let segments_left = inspect(&path, &manager)?.segments.len().saturating_sub(1);
            checkpointer.drain(Duration::from_secs(3600));
            let checkpoint_time = started.elapsed();
            drop(conn);
            checkpointer.shutdown(Duration::from_secs(60));
            Ok(report(latencies, segments_left > 1, checkpoint_time))
        }
    }
}

/// Writes back every dirty page of the file system holding `dir` and waits for it: a
/// workload then starts on an idle disk instead of paying for the writeback of the one
/// before it (the suite calls it before each workload, on both sides).
pub fn settle(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir).map_err(libsql_wal::Error::io(libsql_wal::IoAction::Open, dir))?;
    // SAFETY: syncfs takes a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(libsql_wal::Error::io(libsql_wal::IoAction::Sync, dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `PRAGMA synchronous` for the commit-rate workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

/// Commits per second: one small row per transaction, on a fresh database.
pub fn commits_per_sec(dir: &Path, side: Side, synchronous: Synchronous, commits: usize) -> Result<f64> {
    let path = dir.join(format!("commits-{}-{synchronous:?}.db", side.name()));
    let pragma = match synchronous {
        Synchronous::Full => "PRAGMA synchronous = FULL;",
        Synchronous::Normal => "PRAGMA synchronous = NORMAL;",
    };
    let run = |conn: &Connection| -> rusqlite::Result<f64> {
        conn.execute_batch(pragma)?;
        conn.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")?;
        let mut insert = conn.prepare("INSERT INTO t(v) VALUES (?1)")?;
        let started = Instant::now();
        for i in 0..commits {
            insert.execute([i as i64])?;
        }
        Ok(commits as f64 / started.elapsed().as_secs_f64())
    };
    let rate = match side {
        Side::Sqlite => run(&*open_sqlite_connection(&path)?)?,
        Side::Ours => {
            let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
                .with_checkpointer(Checkpointer::new(CheckpointerConfig::default()));
            run(&*open_connection(&path, &manager)?)?
        }
    };
    Ok(rate)
}

/// The disk's own limit for durable commits: a bare loop of one 4120-byte `pwrite` and one
/// `fdatasync` per "commit", into a file whose blocks were written (zeros) and synced
/// beforehand, so each fdatasync flushes data only. No WAL can commit durably faster.
pub fn raw_sync_loop_per_sec(dir: &Path, commits: usize) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("raw-sync-loop");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(libsql_wal::Error::io(libsql_wal::IoAction::Open, &path))?;
    let frame = vec![0x5Au8; libsql_wal::format::FRAME_SIZE];
    let zeros = vec![0u8; commits * frame.len()];
    file.write_all_at(&zeros, 0).map_err(libsql_wal::Error::io(libsql_wal::IoAction::Write, &path))?;
    file.sync_data().map_err(libsql_wal::Error::io(libsql_wal::IoAction::Sync, &path))?;
    let started = Instant::now();
    for i in 0..commits {
        file.write_all_at(&frame, (i * frame.len()) as u64)
            .map_err(libsql_wal::Error::io(libsql_wal::IoAction::Write, &path))?;
        file.sync_data().map_err(libsql_wal::Error::io(libsql_wal::IoAction::Sync, &path))?;
    }
    Ok(commits as f64 / started.elapsed().as_secs_f64())
}
