//! Readers and a writer on one database, with checkpoints running: every snapshot keeps
//! the bank's total constant, its counter never goes backwards and never moves while open
//! (invariant 1), and nothing reports SQLITE_CORRUPT. The long form of this run is
//! `libsql-wal stress --seconds 60 --readers 4`.

use std::time::Duration;

use libsql_wal::{Checkpointer, CheckpointerConfig, LibsqlWalManager, WalConfig, io::StdIo};
use libsql_wal_testkit::stress::{StressConfig, run_bank};

fn run(segment_frames_max: u32, readers: usize, seed: u64, background: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max, ..Default::default() });
    if background {
        let config = CheckpointerConfig { tick: Duration::from_millis(10), ..Default::default() };
        manager = manager.with_checkpointer(Checkpointer::new(config));
    }
    let config = StressConfig { duration: Duration::from_secs(4), readers, seed };
    let report = run_bank(&dir.path().join("bank.db"), &manager, &config).unwrap();
    println!("seed {seed}: {report:?}");
    assert_eq!(report.violations, 0, "seed {seed}: {:?}", report.first_problem);
    assert_eq!(report.corrupt_errors, 0, "seed {seed}: {:?}", report.first_problem);
    assert_eq!(report.other_errors, 0, "seed {seed}: {:?}", report.first_problem);
    assert!(report.commits > 50, "the writer barely ran: {report:?}");
    assert!(report.snapshots_checked > 20, "the readers barely ran: {report:?}");
    assert!(report.checkpoints > 10, "checkpoints barely ran: {report:?}");
    // After the last connection closed, everything was checkpointed into a plain file.
    let out = std::process::Command::new("sqlite3")
        .arg(dir.path().join("bank.db"))
        .arg("SELECT sum(balance) FROM accounts; PRAGMA integrity_check;")
        .output()
        .expect("stock sqlite3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2000000\nok\n");
}

#[test]
fn readers_see_consistent_snapshots_with_small_segments() {
    run(16, 2, 1, false);
}

#[test]
fn readers_see_consistent_snapshots_with_default_segments() {
    run(WalConfig::default().segment_frames_max, 2, 2, false);
}

/// The same with the background checkpointer copying sealed segments all along.
#[test]
fn readers_see_consistent_snapshots_with_background_checkpoints() {
    run(16, 2, 3, true);
}
