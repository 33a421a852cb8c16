//! History benchmarks (`libsql-wal bench storage`): restore speed beside a plain copy of the
//! same bytes, what the latest restore reads with 1× and 100× the history, what compaction
//! leaves stored, a point-in-time restore, and the requests an idle namespace makes.

use std::path::Path;
use std::time::{Duration, Instant};

use libsql_wal::io::StdIo;
use libsql_wal::storage::compaction::{CompactionConfig, compact};
use libsql_wal::storage::history::RestorePoint;
use libsql_wal::storage::{Storage, StorageConfig};
use libsql_wal::{Error, LibsqlWalManager, RestoreOptions, Result, WalConfig, flush_to_storage, open_connection};

/// One measured row: (metric, value).
pub type Row = (String, f64);

/// Compaction that snapshots and packs whenever it can, keeping `retention`.
fn eager(retention: Duration) -> CompactionConfig {
    CompactionConfig { retention, pack_bytes_min: 1, snapshot_bytes_min: 1, online: false, ..Default::default() }
}

/// A database of about `db_bytes` written once, then each of its rows rewritten
/// `rewrites - 1` more times (history = about `rewrites` × the database), shipped to
/// `namespace`. Returns the database's size in bytes.
fn build(dir: &Path, storage: &Storage, namespace: &str, db_bytes: u64, rewrites: u32) -> Result<u64> {
    let db = dir.join(format!("{namespace}.db"));
    let config = WalConfig { segment_age_max: None, ..WalConfig::default() };
    let manager =
        LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace(namespace)?;
    let conn = open_connection(&db, &manager)?;
    let rows = (db_bytes / 4096).max(1);
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         INSERT INTO t(v) SELECT randomblob(3900) FROM
           (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows}) SELECT i FROM c);"
    ))?;
    for _ in 1..rewrites {
        conn.execute_batch("UPDATE t SET v = randomblob(3900)")?;
    }
    drop(conn);
    flush_to_storage(&db, None, &manager)?;
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&db);
    let _ = std::fs::remove_dir_all(dir.join(format!("{namespace}.db-wal")));
    Ok(size)
}

fn restore_timed(storage: &Storage, namespace: &str, point: RestorePoint, out: &Path) -> Result<(Duration, u64)> {
    let _ = std::fs::remove_file(out);
    let options = RestoreOptions { point, ..RestoreOptions::default() };
    let started = Instant::now();
    let report = libsql_wal::restore_with(storage, namespace, out, &options, &mut |_, _| {})?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(out);
    Ok((elapsed, report.bytes))
}

fn stored_bytes(storage: &Storage, namespace: &str) -> Result<u64> {
    Ok(storage.list(namespace)?.iter().map(|o| o.size).sum())
}

/// The "plain copy" beside a restore: the same bytes read from the store and written to a
/// file on the same disk, then made durable as a restore's output is (`fsync`), with no
/// checking or applying (a `cp` and `sync` for a local directory, a GET into a file for
/// S3), over `keys`.
fn plain_copy(storage: &Storage, keys: &[String], out: &Path) -> Result<Duration> {
    let started = Instant::now();
    for key in keys {
        libsql_wal::storage::copy_object_to_file(storage, key, out)?;
        let synced = std::fs::File::open(out).and_then(|f| f.sync_all());
        synced.map_err(|e| Error::Bench(format!("syncing {}: {e}", out.display())))?;
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(out);
    Ok(elapsed)
}

/// Restore throughput of the latest state of a `db_bytes` database beside a plain copy of
/// the same objects: rows "restore MB/s", "plain copy MB/s", "restore / copy".
pub fn restore_speed(dir: &Path, storage: &Storage, db_bytes: u64) -> Result<Vec<Row>> {
    build(dir, storage, "speed", db_bytes, 1)?;
    compact(storage, "speed", &eager(Duration::from_secs(86_400)))?;
    let out = dir.join("speed-out.db");
    let keys: Vec<String> = {
        let options = RestoreOptions { dry_run: true, ..RestoreOptions::default() };
        libsql_wal::restore_with(storage, "speed", &out, &options, &mut |_, _| {})?.keys
    };
    let mut restore = Vec::new();
    let mut copy = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let (elapsed, read) = restore_timed(storage, "speed", RestorePoint::Latest, &out)?;
        restore.push(elapsed);
        bytes = read;
        copy.push(plain_copy(storage, &keys, &out)?);
    }
    restore.sort();
    copy.sort();
    let mb_s = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let (restore, copy) = (mb_s(restore[1]), mb_s(copy[1]));
    Ok(vec![
        ("restore MB/s".into(), restore),
        ("plain copy MB/s".into(), copy),
        ("restore / copy".into(), restore / copy),
    ])
}

/// The latest restore with 1× and 100× the history (after compaction), a point-in-time
/// restore in the middle of the long history, and what compaction leaves stored.
pub fn history_cost(dir: &Path, storage: &Storage, db_bytes: u64) -> Result<Vec<Row>> {
    let out = dir.join("history-out.db");
    let mut rows = Vec::new();
    let mut latest = Vec::new();
    for (namespace, rewrites) in [("once", 1u32), ("hundred", 100)] {
        build(dir, storage, namespace, db_bytes, rewrites)?;
        let history = stored_bytes(storage, namespace)?;
        compact(storage, namespace, &eager(Duration::from_secs(86_400)))?;
        let kept = stored_bytes(storage, namespace)?;
        let (elapsed, read) = restore_timed(storage, namespace, RestorePoint::Latest, &out)?;
        let db_size = restored_size(storage, namespace, &out)?;
        rows.push((format!("{rewrites}x: latest restore ms"), elapsed.as_secs_f64() * 1000.0));
        rows.push((format!("{rewrites}x: latest restore MB read"), read as f64 / 1e6));
        rows.push((format!("{rewrites}x: stored / db (7d window)"), kept as f64 / db_size as f64));
        latest.push((elapsed, read));
        if rewrites == 100 {
            let middle = middle_frame(storage, namespace)?;
            let (elapsed, _) = restore_timed(storage, namespace, RestorePoint::FrameNo(middle), &out)?;
            rows.push(("100x: restore to a middle point ms".into(), elapsed.as_secs_f64() * 1000.0));
            compact(storage, namespace, &eager(Duration::ZERO))?;
            let kept = stored_bytes(storage, namespace)?;
            rows.push(("100x: stored / db (window 0s)".into(), kept as f64 / db_size as f64));
            rows.push(("100x: history / db".into(), history as f64 / db_size as f64));
        }
    }
    let (once, hundred) = (latest[0], latest[1]);
    rows.push(("latest restore time 100x / 1x".into(), hundred.0.as_secs_f64() / once.0.as_secs_f64()));
    rows.push(("latest restore bytes 100x / 1x".into(), hundred.1 as f64 / once.1 as f64));
    Ok(rows)
}

/// The size of the database the namespace's latest state is (restored to find out).
fn restored_size(storage: &Storage, namespace: &str, out: &Path) -> Result<u64> {
    let _ = std::fs::remove_file(out);
    let report = libsql_wal::restore(storage, namespace, out, &mut |_, _| {})?;
    let _ = std::fs::remove_file(out);
    Ok(report.db_pages as u64 * 4096)
}

/// A frame_no halfway through a namespace's stored history (the restore lands on the last
/// commit at or before it, inside whatever object holds it).
fn middle_frame(storage: &Storage, namespace: &str) -> Result<u64> {
    let end = storage.list(namespace)?.iter().map(|o| o.end_frame_no()).max().unwrap_or(0);
    if end < 2 {
        return Err(Error::Bench(format!("{namespace} holds no history")));
    }
    Ok(end / 2)
}

/// Requests an idle namespace makes, counted through a wrapper of the store for `idle`
/// after its writes became durable (and online compaction ran), scaled to an hour.
pub fn idle_requests(dir: &Path, idle: Duration) -> Result<Vec<Row>> {
    let store = crate::object_stores::InstrumentedStore::new();
    let config = StorageConfig {
        compaction: CompactionConfig {
            online_after_bytes: 1,
            pack_bytes_min: 1,
            snapshot_bytes_min: 1,
            ..Default::default()
        },
        ..StorageConfig::default()
    };
    let storage = Storage::with_object_store("counting://bench", store.clone(), config);
    let db = dir.join("idle.db");
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max: 64, ..Default::default() })
        .with_checkpointer(libsql_wal::Checkpointer::global())
        .with_storage(storage)
        .with_namespace("idle")?;
    let conn = open_connection(&db, &manager)?;
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")?;
    for _ in 0..20 {
        conn.execute_batch("INSERT INTO t(v) SELECT randomblob(3000) FROM (SELECT 1 UNION ALL SELECT 2)")?;
    }
    flush_to_storage(&db, None, &manager)?;
    // Let online compaction (and anything else the writes started) finish.
    let mut last = u64::MAX;
    while store.requests() != last {
        last = store.requests();
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = store.requests();
    std::thread::sleep(idle);
    let during = store.requests() - before;
    drop(conn);
    Ok(vec![("idle requests per hour".into(), during as f64 * 3600.0 / idle.as_secs_f64())])
}
