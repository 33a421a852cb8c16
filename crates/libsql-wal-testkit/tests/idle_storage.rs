//! An idle namespace costs nothing: once its commits are durable and online compaction has
//! run, a database kept open with its background checkpointer (whose timers seal segments
//! by age) makes no storage request at all. Every call to the object store is counted by a
//! wrapper around `object_store`'s in-memory store (`InstrumentedStore`).

use std::time::{Duration, Instant};

use libsql_sys::rusqlite::{Connection, OpenFlags};
use libsql_wal::io::StdIo;
use libsql_wal::storage::compaction::CompactionConfig;
use libsql_wal::{
    Checkpointer, CheckpointerConfig, LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage,
    open_connection, restore,
};
use libsql_wal_testkit::object_stores::InstrumentedStore;

fn digest(conn: &libsql_sys::rusqlite::Connection) -> Vec<(i64, Vec<u8>)> {
    let mut stmt = conn.prepare("SELECT i, v FROM t ORDER BY i").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

/// Waits until the count has not moved for `quiet` (at most `limit`); returns it.
fn settled(store: &InstrumentedStore, quiet: Duration, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = store.requests();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = store.requests();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(Instant::now() < deadline, "storage requests never stopped ({now} so far)");
    }
}

#[test]
fn an_idle_namespace_costs_no_requests() {
    let store = InstrumentedStore::new();
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        compaction: CompactionConfig {
            online_after_bytes: 64 << 10,
            pack_bytes_min: 1,
            snapshot_bytes_min: 1,
            ..CompactionConfig::default()
        },
        ..StorageConfig::default()
    };
    let storage = Storage::with_object_store("counting://", store.clone(), config);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    // Small segments, and sealed by age after 1 s: the idle period below spans several of
    // the checkpointer's age checks.
    let wal =
        WalConfig { segment_frames_max: 16, segment_age_max: Some(Duration::from_secs(1)), ..WalConfig::default() };
    let checkpointer = Checkpointer::new(CheckpointerConfig { tick: Duration::from_millis(100), ..Default::default() });
    let manager = LibsqlWalManager::new(StdIo::shared(), wal)
        .with_checkpointer(checkpointer)
        .with_storage(storage.clone())
        .with_namespace("idle")
        .unwrap();
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB)").unwrap();
    // About 1.5 MiB of frames: online compaction runs after every 64 KiB uploaded.
    for i in 0..300 {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(1000 + ?1 % 3000))", [i]).unwrap();
        if i % 3 == 0 {
            conn.execute("UPDATE t SET v = randomblob(500) WHERE i = ?1", [i / 2]).unwrap();
        }
    }
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().expect("everything durable");
    // Online compaction steps, checkpoints and their seals finish.
    let busy = settled(&store, Duration::from_millis(2500), Duration::from_secs(60));
    let objects = store.keys();
    let compacted: Vec<&String> = objects
        .iter()
        .filter(|k| {
            k.contains("/packs/") || (k.contains("/snapshots/") && !k.contains("/snapshots/00000000000000000000-"))
        })
        .collect();
    assert!(!compacted.is_empty(), "online compaction wrote a pack or a snapshot: {objects:?}");
    assert!(objects.iter().filter(|k| k.contains("/segments/")).count() < 20, "and collected segments: {objects:?}");

    // Idle, the connection open: not one request.
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let after = store.requests();
    assert_eq!(after, busy, "{} requests while idle for {:?}", after - busy, idle_started.elapsed());
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 300);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(store.requests(), busy, "a read is no reason for a request either");

    // The latest restore is the database.
    let out = dir.path().join("restored.db");
    let report = restore(&storage, "idle", &out, &mut |_, _| {}).unwrap();
    assert!(
        report.keys.iter().any(|k| compacted.contains(&k)),
        "the restore used compacted objects: {:?}",
        report.keys
    );
    let uri = format!("file:{}?immutable=1", out.display());
    let restored =
        Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).unwrap();
    let integrity: String = restored.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    assert!(digest(&restored) == digest(&conn), "the restored database differs from the live one");

    // A write is what makes requests again (the counter sees them).
    let before = store.requests();
    conn.execute("INSERT INTO t VALUES (1000, x'00')", []).unwrap();
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().expect("durable");
    assert!(store.requests() > before, "the new commit was uploaded");
    println!("{busy} requests to write, compact and checkpoint; none in {:?} idle", idle_started.elapsed());
}
