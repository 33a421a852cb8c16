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
