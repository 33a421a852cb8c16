//! `PRAGMA synchronous`: under FULL every commit is synced to the segment file before COMMIT
//! returns; under NORMAL commits are not synced (only seals and checkpoints sync). Counted
//! through an `Io` that wraps the real one.

use libsql_wal_testkit::support as common;

use std::sync::atomic::Ordering;

use common::TestIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

/// Commits `commits` one-row transactions under `synchronous` and returns the segment syncs
/// they caused.
fn syncs_for(synchronous: &str, commits: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (io, switches) = TestIo::new();
    // Large segments: no seal (which syncs) happens during the measured commits.
    let config = WalConfig { segment_frames_max: 1_000_000, ..Default::default() };
    let manager = LibsqlWalManager::new(io, config);
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = {synchronous}; CREATE TABLE t(x); INSERT INTO t VALUES (0);"
    ))
    .unwrap();
    let before = switches.segment_syncs.load(Ordering::SeqCst);
    for i in 0..commits {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    switches.segment_syncs.load(Ordering::SeqCst) - before
}

#[test]
fn synchronous_full_syncs_every_commit() {
    let syncs = syncs_for("FULL", 50);
    assert!(syncs >= 50, "50 FULL commits made only {syncs} segment syncs");
}

#[test]
fn synchronous_normal_does_not_sync_commits() {
    let syncs = syncs_for("NORMAL", 50);
    assert_eq!(syncs, 0, "NORMAL commits synced the segment {syncs} times");
}

/// While the upload task writes the durable record (held here, at its `open`, as a slow
/// fdatasync would hold it), a commit that fills a segment and seals it, so calls
/// `Durability::schedule`, goes through. Before, `advance` held the state mutex that
/// `schedule` takes across the record's write and sync, and the commit waited for it.
#[test]
fn a_commit_that_seals_never_waits_for_the_durable_records_sync() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use libsql_wal::{Storage, StorageConfig, flush_to_storage};
    use libsql_wal_testkit::faulty::HookIo;

    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let held = Arc::new((Mutex::new((false, false)), Condvar::new())); // (entered, released)
    let io = {
        let (armed, held) = (armed.clone(), held.clone());
        Arc::new(HookIo::new(move |operation, path| {
            let record = path.file_name().is_some_and(|n| n == "durable");
            if operation == "open" && record && armed.load(Ordering::SeqCst) {
                let (lock, changed) = &*held;
                let mut state = lock.lock().unwrap();
                state.0 = true;
                changed.notify_all();
                // Bounded: a broken test must not hang the suite.
                let _ = changed.wait_timeout_while(state, Duration::from_secs(30), |s| !s.1).unwrap();
            }
        }))
    };
    let store = format!("file://{}", dir.path().join("store").display());
    let storage = Storage::open_with(&store, &[], StorageConfig::default()).unwrap();
    let config = WalConfig { segment_frames_max: 8, segment_age_max: None, ..Default::default() };
    let manager = LibsqlWalManager::new(io, config).with_storage(storage).with_namespace("ns").unwrap();
    let db = dir.path().join("d.db");
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB)").unwrap();
    flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap();

    armed.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        conn.execute("INSERT INTO t(pad) VALUES (randomblob(3000))", []).unwrap();
    }
    let (lock, changed) = &*held;
    let entered = changed.wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(30), |s| !s.0).unwrap();
    assert!(entered.0.0, "the upload task never wrote the durable record");
    drop(entered);

    // Commits that fill segments and seal them, on another thread, while the record is held.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn({
        let db = db.clone();
        let manager = manager.clone();
        move || {
            let conn = open_connection(&db, &manager).unwrap();
            for _ in 0..20 {
                conn.execute("INSERT INTO t(pad) VALUES (randomblob(3000))", []).unwrap();
            }
            done_tx.send(()).unwrap();
        }
    });
    let sealed_meanwhile = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    lock.lock().unwrap().1 = true;
    changed.notify_all();
    writer.join().unwrap();
    assert!(sealed_meanwhile, "commits that seal waited for the durable record's write");
    drop(conn);
}
