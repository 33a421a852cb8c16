//! Simulated power cuts and injected I/O errors, replayable from a seed.
//!
//! `power_cuts_leave_a_prefix_of_committed_transactions`: a random workload (transactions of
//! mixed sizes, FULL and NORMAL commits, savepoint rollbacks, rollbacks, checkpoints of every
//! mode, reopens) runs on a `FaultyIo` that stops the machine at a random operation (tearing
//! that write); a power cut then drops what was not synced. After recovery the database holds
//! exactly transactions 1..=k, each whole, with k at least the last FULL commit that returned
//! (invariant 4), nothing rolled back (invariant 2), and `integrity_check` is ok.
//!
//! `injected_io_errors_never_lose_committed_data`: the same workload with one operation
//! failing with EIO instead: the error reaches SQLite as an error code, the database stays
//! usable, and every transaction whose COMMIT returned is there in full at the end.
//!
//! `CRASH_SEEDS=10000 cargo test --release --test crash` runs more seeds (default 200 and
//! 100); `CRASH_SEED=n` replays one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use libsql_wal::{LibsqlWalManager, WalConfig, io::StdIo, open_connection};
use libsql_wal_testkit::faulty::{Fault, FaultyIo, LostWrites};

struct Outcome {
    /// Transactions whose COMMIT returned: (id, rows, committed under FULL).
    acked: Vec<(i64, i64, bool)>,
    /// The id of a transaction whose COMMIT did not return (the crash or error hit it).
    in_doubt: Vec<(i64, i64)>,
    commits_after_fault: usize,
    /// Transactions tried after the first error (those that failed included).
    attempts_after_fault: usize,
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("CRASH_SEED") {
        return vec![seed.parse().expect("CRASH_SEED is a number")];
    }
    let n = std::env::var("CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (0..n).collect()
}

/// Runs the workload until the machine crashes (or `steps` run out). Errors are expected once
/// the fault fires; they are recorded, never unwrapped.
fn workload(path: &Path, manager: &LibsqlWalManager, io: &FaultyIo, rng: &mut fastrand::Rng, steps: usize) -> Outcome {
    let mut outcome =
        Outcome { acked: Vec::new(), in_doubt: Vec::new(), commits_after_fault: 0, attempts_after_fault: 0 };
    let mut conn: Option<libsql_sys::Connection<libsql_wal::LibsqlWal>> = open_connection(path, manager).ok();
    let mut next_txn = 1i64;
    let mut fault_seen = false;
    // A failed sync makes the log refuse writes until it is reopened (it is sticky), so
    // commits are expected again only after the next reopen.
    let mut sync_failed = false;
    for _ in 0..steps {
        if io.crashed() {
            break;
        }
        let Some(c) = conn.as_ref() else {
            conn = open_connection(path, manager).ok();
            continue;
        };
        match rng.u8(0..100) {
            0..=64 => {
                let full = rng.bool();
                let rows = rng.i64(1..12);
                let id = next_txn;
                next_txn += 1;
                let sync = if full { "FULL" } else { "NORMAL" };
                let mut sql = format!("PRAGMA synchronous = {sync}; BEGIN;");
                for _ in 0..rows {
                    sql += &format!("INSERT INTO t(txn, pad) VALUES ({id}, randomblob({}));", rng.usize(10..3000));
                }
                if rng.u8(0..4) == 0 {
                    sql += &format!(
                        "SAVEPOINT s; INSERT INTO t(txn, pad) VALUES (-{id}, zeroblob(2000)); ROLLBACK TO s; RELEASE s;"
                    );
                }
                sql += "COMMIT;";
                outcome.attempts_after_fault += (fault_seen && !sync_failed) as usize;
                match c.execute_batch(&sql) {
                    Ok(()) => {
                        outcome.acked.push((id, rows, full));
                        if fault_seen {
                            outcome.commits_after_fault += 1;
                        }
                    }
                    Err(e) => {
                        if std::env::var("CRASH_DEBUG").is_ok() {
                            eprintln!("commit {id} failed at op {}: {e}", io.ops());
                        }
                        fault_seen = true;
                        sync_failed |= is_sync_failure(&e);
                        outcome.in_doubt.push((id, rows));
                        let _ = c.execute_batch("ROLLBACK");
                    }
                }
            }
            65..=74 => {
                let id = next_txn;
                let sql = format!("BEGIN; INSERT INTO t(txn, pad) VALUES (-{id}, zeroblob(100)); ROLLBACK;");
                if let Err(e) = c.execute_batch(&sql) {
                    fault_seen = true;
                    // A rollback syncs the cut of a commit that failed: a failed sync here
                    // makes the log refuse writes too.
                    sync_failed |= is_sync_failure(&e);
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            75..=86 => {
                let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.usize(0..4)];
                // A failed sync in a checkpoint (or in the commit of the UPDATE below) makes
                // the log refuse writes as surely as one in a commit does.
                if let Err(e) = c.execute_batch(&format!("PRAGMA wal_checkpoint({mode})")) {
                    fault_seen = true;
                    sync_failed |= is_sync_failure(&e);
                }
            }
            87..=94 => {
                if let Err(e) = c.execute_batch("UPDATE t SET pad = randomblob(50) WHERE id % 7 = 3") {
                    sync_failed |= is_sync_failure(&e);
                }
            }
            _ => {
                drop(conn.take()); // close first: the reopen then recovers the log
                conn = open_connection(path, manager).ok();
                sync_failed = false;
            }
        }
    }
    drop(conn);
    outcome
}

/// A failed sync (SQLITE_IOERR_FSYNC), or the refusal of writes that follows one (plain
/// SQLITE_IOERR, `Error::SyncFailed`).
fn is_sync_failure(e: &libsql_sys::rusqlite::Error) -> bool {
    use libsql_sys::rusqlite::ffi;
    e.sqlite_error().is_some_and(|e| matches!(e.extended_code, ffi::SQLITE_IOERR_FSYNC | ffi::SQLITE_IOERR))
}

/// What is in the database after everything: transaction id → rows.
fn contents(path: &Path) -> Result<(BTreeMap<i64, i64>, String), String> {
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default());
    let conn = open_connection(path, &manager).map_err(|e| format!("reopen failed: {e}"))?;
    let integrity: String =
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| format!("integrity_check: {e}"))?;
    let mut stmt = conn.prepare("SELECT txn, count(*) FROM t GROUP BY txn").map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| e.to_string())?
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((rows, integrity))
}

fn setup(path: &Path, manager: &LibsqlWalManager) {
    let conn = open_connection(path, manager).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, txn INTEGER NOT NULL, pad BLOB); CREATE INDEX t_txn ON t(txn);",
    )
    .unwrap();
}

fn manager_for(io: &FaultyIo, rng: &mut fastrand::Rng) -> LibsqlWalManager {
    let config = WalConfig {
        segment_frames_max: rng.u32(4..64),
        segment_age_max: None,
        checkpoint_on_close: false,
        // Half the seeds leave full segments unsealed until a checkpoint or a reopen, as a
        // background checkpointer does: crashes then hit logs with several unsealed ones.
        defer_seals: rng.bool(),
        ..Default::default()
    };
    LibsqlWalManager::new(Arc::new(io.clone()), config)
}

fn power_cut_case(seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("d.db");
    let mut rng = fastrand::Rng::with_seed(seed);
    let lost = if rng.bool() { LostWrites::All } else { LostWrites::RandomPrefix };
    let io = FaultyIo::new(seed, lost);
    let manager = manager_for(&io, &mut rng);
    setup(&path, &manager);
    io.arm(rng.u64(1..2000), Fault::Crash);
    let outcome = workload(&path, &manager, &io, &mut rng, 300);
    io.power_cut().map_err(|e| format!("power cut: {e}"))?;
    if std::env::var("CRASH_DEBUG").is_ok() {
        let bytes = std::fs::read(&path).unwrap_or_default();
        eprintln!("db len {} header 72..84 {:?} ops {}", bytes.len(), bytes.get(72..84), io.ops());
        for e in std::fs::read_dir(dir.path().join("d.db-wal")).unwrap() {
            let e = e.unwrap();
            eprintln!("  {:?} {}", e.file_name(), e.metadata().unwrap().len());
        }
    }
    let (present, integrity) = contents(&path)?;
    if integrity != "ok" {
        return Err(format!("integrity_check: {integrity}"));
    }
    if let Some((id, _)) = present.iter().find(|(id, _)| **id < 0) {
        return Err(format!("rolled-back rows of transaction {} are present", -id));
    }
    let ids: Vec<i64> = present.keys().copied().collect();
    let expected_prefix: Vec<i64> = (1..=ids.len() as i64).collect();
    if ids != expected_prefix {
        return Err(format!("not a prefix of the committed transactions: {ids:?}"));
    }
    let last_full = outcome.acked.iter().filter(|(_, _, full)| *full).map(|(id, _, _)| *id).max().unwrap_or(0);
    let k = ids.len() as i64;
    if k < last_full {
        return Err(format!("FULL commit {last_full} returned, but only 1..={k} survived"));
    }
    let attempted: BTreeMap<i64, i64> =
        outcome.acked.iter().map(|(id, rows, _)| (*id, *rows)).chain(outcome.in_doubt.iter().copied()).collect();
    for (id, rows) in &present {
        if attempted.get(id) != Some(rows) {
            return Err(format!("transaction {id} has {rows} rows, expected {:?}", attempted.get(id)));
        }
    }
    Ok(())
}

fn io_error_case(seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("d.db");
    let mut rng = fastrand::Rng::with_seed(seed);
    let io = FaultyIo::new(seed, LostWrites::All);
    let manager = manager_for(&io, &mut rng);
    setup(&path, &manager);
    io.arm(rng.u64(1..1500), Fault::Fail);
    let outcome = workload(&path, &manager, &io, &mut rng, 200);
    let (present, integrity) = contents(&path)?;
    if integrity != "ok" {
        return Err(format!("integrity_check: {integrity}"));
    }
    if let Some((id, _)) = present.iter().find(|(id, _)| **id < 0) {
        return Err(format!("rolled-back rows of transaction {} are present", -id));
    }
    for (id, rows, _) in &outcome.acked {
        if present.get(id) != Some(rows) {
            return Err(format!("committed transaction {id} ({rows} rows) has {:?} after the error", present.get(id)));
        }
    }
    for (id, rows) in &outcome.in_doubt {
        if let Some(n) = present.get(id)
            && n != rows
        {
            return Err(format!("failed transaction {id} is partly there: {n} of {rows} rows"));
        }
    }
    let acked_ids: Vec<i64> = outcome.acked.iter().map(|a| a.0).collect();
    if let Some(extra) =
        present.keys().find(|id| !acked_ids.contains(id) && !outcome.in_doubt.iter().any(|d| d.0 == **id))
    {
        return Err(format!("transaction {extra} was never committed"));
    }
    if outcome.attempts_after_fault > 0 && outcome.commits_after_fault == 0 {
        return Err("the database did not accept commits after the error".into());
    }
    Ok(())
}

fn run_all(name: &str, default_seeds: u64, case: fn(u64) -> Result<(), String>) {
    let mut failures = Vec::new();
    let seeds = seeds(default_seeds);
    for &seed in &seeds {
        if let Err(why) = case(seed) {
            failures.push(format!("seed {seed}: {why}"));
        }
    }
    println!("{name}: {} seeds, {} failures", seeds.len(), failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed (replay: CRASH_SEED=n):\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn power_cuts_leave_a_prefix_of_committed_transactions() {
    run_all("power cuts", 200, power_cut_case);
}

#[test]
fn injected_io_errors_never_lose_committed_data() {
    run_all("io errors", 100, io_error_case);
}

/// A fixed workload (swaps every 4 frames, FULL and NORMAL commits, a savepoint rollback, a
/// rollback, checkpoints, a reopen), so that every one of its I/O operations can be made the
/// fault in turn: `(acked, in_doubt)` as in `Outcome`.
fn scripted(path: &Path, manager: &LibsqlWalManager, io: &FaultyIo) -> Outcome {
    let mut outcome =
        Outcome { acked: Vec::new(), in_doubt: Vec::new(), commits_after_fault: 0, attempts_after_fault: 0 };
    let mut conn = open_connection(path, manager).ok();
    let mut fault_seen = false;
    for id in 1..=12i64 {
        if io.crashed() {
            break;
        }
        if id == 9 {
            drop(conn.take());
            conn = open_connection(path, manager).ok();
        }
        let Some(c) = conn.as_ref() else { break };
        let rows = id % 3 + 1;
        let full = id % 2 == 0;
        let mut sql = format!("PRAGMA synchronous = {}; BEGIN;", if full { "FULL" } else { "NORMAL" });
        for r in 0..rows {
            sql += &format!("INSERT INTO t(txn, pad) VALUES ({id}, zeroblob({}));", 500 + 700 * r);
        }
        if id == 6 {
            sql += "SAVEPOINT s; INSERT INTO t(txn, pad) VALUES (-6, zeroblob(3000)); ROLLBACK TO s; RELEASE s;";
        }
        sql += "COMMIT;";
        match c.execute_batch(&sql) {
            Ok(()) => {
                outcome.acked.push((id, rows, full));
                outcome.commits_after_fault += fault_seen as usize;
            }
            Err(_) => {
                fault_seen = true;
                outcome.in_doubt.push((id, rows));
                let _ = c.execute_batch("ROLLBACK");
            }
        }
        let extra = match id {
            3 => "BEGIN; INSERT INTO t(txn, pad) VALUES (-3, zeroblob(10)); ROLLBACK;",
            4 => "PRAGMA wal_checkpoint(PASSIVE);",
            7 => "PRAGMA wal_checkpoint(TRUNCATE);",
            11 => "PRAGMA wal_checkpoint(FULL);",
            _ => "",
        };
        if !extra.is_empty() && c.execute_batch(extra).is_err() {
            fault_seen = true;
            let _ = c.execute_batch("ROLLBACK");
        }
    }
    drop(conn);
    outcome
}

fn scripted_config(defer_seals: bool) -> WalConfig {
    WalConfig {
        segment_frames_max: 4,
        segment_age_max: None,
        checkpoint_on_close: false,
        defer_seals,
        ..Default::default()
    }
}

fn scripted_case(fault_at: u64, fault: Fault, lost: LostWrites, defer_seals: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("d.db");
    let io = FaultyIo::new(fault_at, lost);
    let config = scripted_config(defer_seals);
    let manager = LibsqlWalManager::new(Arc::new(io.clone()), config);
    setup(&path, &manager);
    io.arm(fault_at, fault);
    let outcome = scripted(&path, &manager, &io);
    if fault == Fault::Crash {
        io.power_cut().map_err(|e| format!("power cut: {e}"))?;
    }
    let (present, integrity) = contents(&path)?;
    if integrity != "ok" {
        return Err(format!("integrity_check: {integrity}"));
    }
    if present.keys().any(|id| *id < 0) {
        return Err(format!("rolled-back rows present: {present:?}"));
    }
    let expected: BTreeMap<i64, i64> =
        outcome.acked.iter().map(|(id, rows, _)| (*id, *rows)).chain(outcome.in_doubt.iter().copied()).collect();
    for (id, rows) in &present {
        if expected.get(id) != Some(rows) {
            return Err(format!("transaction {id}: {rows} rows, expected {:?}", expected.get(id)));
        }
    }
    let must_have: Vec<i64> = match fault {
        // After a power cut: every FULL commit that returned, and everything before it.
        Fault::Crash => {
            let last_full = outcome.acked.iter().filter(|a| a.2).map(|a| a.0).max().unwrap_or(0);
            let ids: Vec<i64> = present.keys().copied().collect();
            if ids != (1..=ids.len() as i64).collect::<Vec<_>>() {
                return Err(format!("not a prefix: {ids:?}"));
            }
            (1..=last_full).collect()
        }
        // After an I/O error the process lives on: every commit that returned.
        Fault::Fail | Fault::NoSpace => outcome.acked.iter().map(|a| a.0).collect(),
    };
    if let Some(missing) = must_have.iter().find(|id| !present.contains_key(id)) {
        return Err(format!("committed transaction {missing} is missing: {present:?}"));
    }
    Ok(())
}

/// Every I/O operation of the scripted workload, made in turn the one that fails (EIO, then
/// ENOSPC), the one the machine crashes at (losing all unsynced writes), and the one it
/// crashes at keeping a random part of them; with full segments sealed on the commit path,
/// then left unsealed until the next checkpoint or open (background seals).
#[test]
fn every_operation_of_a_workload_can_fail_or_crash() {
    let mut failures = Vec::new();
    for defer_seals in [false, true] {
        let io = FaultyIo::new(0, LostWrites::All);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let manager = LibsqlWalManager::new(Arc::new(io.clone()), scripted_config(defer_seals));
        setup(&path, &manager);
        let before = io.ops();
        let clean = scripted(&path, &manager, &io);
        let total = io.ops() - before;
        assert_eq!(clean.acked.len(), 12, "the scripted workload must run cleanly without faults");
        assert!(total > 50, "the workload does too little I/O to be interesting: {total} operations");
        for op in 1..=total + 1 {
            for (fault, lost) in [
                (Fault::Fail, LostWrites::All),
                (Fault::NoSpace, LostWrites::All),
                (Fault::Crash, LostWrites::All),
                (Fault::Crash, LostWrites::RandomPrefix),
            ] {
                if let Err(why) = scripted_case(op, fault, lost, defer_seals) {
                    failures.push(format!("{fault:?} at operation {op} ({lost:?}, defer_seals {defer_seals}): {why}"));
                }
            }
        }
        println!("every operation (defer_seals {defer_seals}): {total} operations x 4 faults");
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_failed_write_reaches_sqlite_as_its_code_and_the_database_goes_on() {
    use libsql_sys::rusqlite::ffi;
    for (fault, code) in [(Fault::Fail, ffi::SQLITE_IOERR_WRITE), (Fault::NoSpace, ffi::SQLITE_FULL)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let io = FaultyIo::new(1, LostWrites::All);
        let manager = LibsqlWalManager::new(Arc::new(io.clone()), WalConfig::default());
        setup(&path, &manager);
        let conn = open_connection(&path, &manager).unwrap();
        conn.execute("INSERT INTO t(txn, pad) VALUES (1, zeroblob(10))", []).unwrap();
        io.arm(1, fault); // the next operation: the frames' write
        let err = conn.execute("INSERT INTO t(txn, pad) VALUES (2, zeroblob(10))", []).unwrap_err();
        let extended = err.sqlite_error().map(|e| e.extended_code);
        assert_eq!(extended, Some(code), "{fault:?}: {err}");
        conn.execute("INSERT INTO t(txn, pad) VALUES (3, zeroblob(10))", []).unwrap();
        let txns: Vec<i64> = conn
            .prepare("SELECT txn FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(txns, [1, 3], "{fault:?}");
    }
}

/// A failed read of a logged page reaches SQLite as SQLITE_IOERR_READ; the next read works.
#[test]
fn a_failed_read_reaches_sqlite_as_ioerr_read_and_the_next_read_works() {
    use libsql_sys::rusqlite::ffi;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let io = FaultyIo::new(1, LostWrites::All);
    let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let manager = LibsqlWalManager::new(Arc::new(io.clone()), config);
    setup(&path, &manager);
    let writer = open_connection(&path, &manager).unwrap();
    writer.execute_batch("INSERT INTO t(txn, pad) SELECT 1, zeroblob(500) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200) SELECT i FROM c);").unwrap();
    let reader = open_connection(&path, &manager).unwrap();
    io.arm_read(1);
    let err = reader.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap_err();
    assert_eq!(err.sqlite_error().map(|e| e.extended_code), Some(ffi::SQLITE_IOERR_READ), "{err}");
    let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 200);
}
