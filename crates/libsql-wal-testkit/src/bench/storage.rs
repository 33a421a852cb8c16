//! Storage benchmarks: how far behind the last commit the durable frame_no runs at a steady
//! commit rate, and how fast a backlog of sealed segments is uploaded. SQLite has no
//! counterpart: these rows have no ratio.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libsql_wal::Result;
use libsql_wal::io::StdIo;
use libsql_wal::storage::Storage;
use libsql_wal::{LibsqlWalManager, WalConfig, durable_frame_no, flush_to_storage, inspect, open_connection};

/// Durable-frame lag at a steady commit rate.
#[derive(Debug, Clone)]
pub struct LagReport {
    pub commits: usize,
    /// Commits per second actually reached.
    pub rate: f64,
    /// Time from a commit's return to the moment its frame was seen durable.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Commits one small row every `1 / rate` seconds for `duration` on a database with
/// `storage`, while a sampler polls the durable frame_no every millisecond; each commit's lag
/// is the time from its return to the first sample at or past its frame_no. The segment
/// size (`config.segment_frames_max`) dominates: a frame becomes durable once its segment
/// is sealed and uploaded.
pub fn durable_lag(
    dir: &Path,
    storage: &Storage,
    config: WalConfig,
    rate: u32,
    duration: Duration,
) -> Result<LagReport> {
    let db = dir.join("lag.db");
    let manager = LibsqlWalManager::new(StdIo::shared(), config)
        .with_checkpointer(libsql_wal::Checkpointer::global())
        .with_storage(storage.clone())
        .with_namespace("lag")?;
    let conn = open_connection(&db, &manager)?;
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")?;
    let done = Arc::new(AtomicBool::new(false));
    // The sampler: (time, durable frame_no) whenever the durable frame_no moves.
    let sampler = {
        let (db, manager, done) = (db.clone(), manager.clone(), done.clone());
        std::thread::spawn(move || -> Result<Vec<(Instant, u64)>> {
            let mut samples = Vec::new();
            let mut last = 0;
            while !done.load(Ordering::SeqCst) {
                let durable = durable_frame_no(&db, &manager)?.unwrap_or(0);
                if durable > last {
                    samples.push((Instant::now(), durable));
                    last = durable;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(samples)
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut commits: Vec<(Instant, u64)> = Vec::new();
    let mut insert = conn.prepare("INSERT INTO t(v) VALUES (randomblob(100))")?;
    while started.elapsed() < duration {
        let due = started + interval * commits.len() as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        insert.execute([])?;
        let frame_no = inspect_last_frame(&db, &manager)?;
        commits.push((Instant::now(), frame_no));
    }
    let elapsed = started.elapsed();
    drop(insert);
    // Seal the tail so the last commits get a lag too (as a clean shutdown would).
    flush_to_storage(&db, Some(Duration::from_secs(120)), &manager)?;
    done.store(true, Ordering::SeqCst);
    let mut samples = sampler.join().expect("the sampler does not panic")?;
    if let Some(last) = durable_frame_no(&db, &manager)? {
        samples.push((Instant::now(), last));
    }
    drop(conn);
    let mut lags: Vec<Duration> = commits
        .iter()
        .filter_map(|&(at, frame_no)| {
            let seen = samples.iter().find(|&&(_, durable)| durable >= frame_no)?.0;
            Some(seen.saturating_duration_since(at))
        })
        .collect();
    lags.sort();
    let pick = |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1))).copied();
    Ok(LagReport {
        commits: commits.len(),
        rate: commits.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50).unwrap_or_default(),
        p99: pick(0.99).unwrap_or_default(),
        max: lags.last().copied().unwrap_or_default(),
    })
}

fn inspect_last_frame(db: &Path, manager: &LibsqlWalManager) -> Result<u64> {
    Ok(inspect(db, manager)?.last_frame_no)
}

/// Upload throughput: a log of about `log_bytes` is written without storage and left in
/// place; the database is then opened with `storage`, and the time until all of it is
/// durable gives MB/s (uploaded bytes ÷ seconds).
pub fn upload_throughput(dir: &Path, storage: &Storage, log_bytes: u64) -> Result<f64> {
    let db = dir.join("upload.db");
    let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..WalConfig::default() };
    {
        let manager = LibsqlWalManager::new(StdIo::shared(), config.clone());
        let conn = open_connection(&db, &manager)?;
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        )?;
        // One row per page, a thousand rows per transaction: segments seal by size as usual.
        for _ in 0..(log_bytes / 4096).div_ceil(1000) {
            conn.execute_batch(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000)
                 INSERT INTO t(v) SELECT randomblob(3900) FROM c;",
            )?;
        }
    }
    let manager =
        LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace("upload")?;
    let started = Instant::now();
    let conn = open_connection(&db, &manager)?;
    flush_to_storage(&db, None, &manager)?;
    let elapsed = started.elapsed();
    let uploaded = inspect(&db, &manager)?.durability.map_or(0, |d| d.uploaded_bytes);
    drop(conn);
    Ok(uploaded as f64 / 1e6 / elapsed.as_secs_f64())
}
