//! Throughput workloads run on both WALs: a bulk load, point reads from several threads, and
//! readers and a writer together. Each opens its own fresh database per side.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsql_sys::rusqlite::{self, Connection};

use super::Side;
use libsql_wal::{Checkpointer, CheckpointerConfig, LibsqlWalManager, Result, WalConfig, io::StdIo};
use libsql_wal::{open_connection, open_sqlite_connection};

/// Bytes of each row of the read workloads' table (about four rows per page).
const READ_ROW_BYTES: usize = 900;
/// The read workloads' page cache, per connection (SQLite's `cache_size`, in KiB when
/// negative): far smaller than the table, so reads go past the cache.
const READ_CACHE_KIB: i64 = 2048;

type Conn = Box<dyn std::ops::Deref<Target = Connection> + Send>;

/// A connection on one side; ours with its own background checkpointer, as a server has.
/// Waits up to 5 s when busy, as an application with concurrent connections would (SQLite's
/// default of not waiting makes a reader opening during a writer's commit fail).
fn open(side: Side, path: &Path, manager: &LibsqlWalManager) -> Result<Conn> {
    let conn: Conn = match side {
        Side::Sqlite => Box::new(open_sqlite_connection(path)?),
        Side::Ours => Box::new(open_connection(path, manager)?),
    };
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn manager() -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
        .with_checkpointer(Checkpointer::new(CheckpointerConfig::default()))
}

/// MB/s of one transaction inserting `bytes` of 4000-byte rows (`synchronous=FULL`).
pub fn bulk_load(dir: &Path, side: Side, bytes: u64) -> Result<f64> {
    let path = dir.join(format!("bulk-{}.db", side.name()));
    let manager = manager();
    let conn = open(side, &path, &manager)?;
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")?;
    let rows = bytes / 4000;
    let started = Instant::now();
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO t(v) SELECT randomblob(4000) FROM c;
         COMMIT;"
    ))?;
    Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// A table of `rows` rows larger than the readers' page cache, checkpointed into the
/// database file (both sides start from the same state: an empty log).
pub struct ReadTable {
    path: PathBuf,
    side: Side,
    manager: LibsqlWalManager,
    rows: u64,
    /// Keeps the log (ours: the shared log) open between the phases.
    _keeper: std::sync::Mutex<Conn>,
}

impl ReadTable {
    pub fn create(dir: &Path, side: Side, table_bytes: u64) -> Result<ReadTable> {
        let path = dir.join(format!("reads-{}.db", side.name()));
        let manager = manager();
        let conn = open(side, &path, &manager)?;
        let rows = table_bytes / READ_ROW_BYTES as u64;
        conn.execute_batch(&format!(
            "PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
             BEGIN;
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
             INSERT INTO t(id, v) SELECT i, randomblob({READ_ROW_BYTES}) FROM c;
             COMMIT;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))?;
        Ok(ReadTable { path, side, manager, rows, _keeper: std::sync::Mutex::new(conn) })
    }

    fn reader(&self) -> Result<Conn> {
        let conn = open(self.side, &self.path, &self.manager)?;
        conn.execute_batch(&format!("PRAGMA cache_size=-{READ_CACHE_KIB}"))?;
        Ok(conn)
    }
}

/// Point reads (`SELECT v FROM t WHERE id = ?`, random ids) per second, summed over
/// `threads` threads each on its own connection, for `duration`.
pub fn point_reads(table: &ReadTable, threads: usize, duration: Duration) -> Result<f64> {
    let total = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (total, failed) = (&total, &failed);
            scope.spawn(move || {
                if let Err(e) = read_loop(table, t as u64, duration, total, None) {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(total.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}

fn read_loop(
    table: &ReadTable,
    seed: u64,
    duration: Duration,
    total: &AtomicU64,
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let conn = table.reader()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut select = conn.prepare("SELECT length(v) FROM t WHERE id = ?1")?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration && !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        for _ in 0..64 {
            let len: i64 = select.query_row([rng.u64(1..=table.rows) as i64], |r| r.get(0))?;
            debug_assert!(len > 0);
            n += 1;
        }
    }
    total.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// What the mixed workload reached.
#[derive(Debug, Clone, Copy)]
pub struct MixedReport {
    pub reads_per_sec: f64,
    pub commits_per_sec: f64,
}

/// Two readers (point reads) and one writer (one-row updates, `synchronous=NORMAL`) at once
/// for `duration`.
pub fn mixed(table: &ReadTable, duration: Duration) -> Result<MixedReport> {
    let reads = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed = std::sync::Mutex::new(None);
    let writer = open(table.side, &table.path, &table.manager)?;
    writer.execute_batch("PRAGMA synchronous=NORMAL")?;
    let mut commits = 0u64;
    let record = |e: libsql_wal::Error| *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    std::thread::scope(|scope| {
        for t in 0..2 {
            let (reads, stop, record) = (&reads, &stop, &record);
            scope.spawn(move || {
                if let Err(e) = read_loop(table, 100 + t, duration, reads, Some(stop)) {
                    record(e);
                }
            });
        }
        let result = (|| -> rusqlite::Result<()> {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut update = writer.prepare("UPDATE t SET v = randomblob(?2) WHERE id = ?1")?;
            let started = Instant::now();
            while started.elapsed() < duration {
                update.execute((rng.u64(1..=table.rows) as i64, READ_ROW_BYTES as i64))?;
                commits += 1;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = result {
            record(e.into());
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let seconds = duration.as_secs_f64();
    Ok(MixedReport {
        reads_per_sec: reads.load(Ordering::Relaxed) as f64 / seconds,
        commits_per_sec: commits as f64 / seconds,
    })
}
