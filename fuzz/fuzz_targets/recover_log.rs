//! Fuzzes recovery and `verify` over arbitrary log contents: the input is split into up to
//! four segment files beside a valid database; opening (which recovers) and verifying must
//! return errors for damage, never panic. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run recover_log -s none`.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use libsql_wal::{LibsqlWalManager, WalConfig, inspect, io::StdIo, verify};

/// One directory for the whole run: each input rewrites it.
static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("temp dir"));
/// A small valid database file (page 1 of an empty SQLite database with one table).
static DB: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("seed.db");
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default());
    let conn = libsql_wal::open_connection(&path, &manager).expect("open");
    conn.execute_batch("CREATE TABLE t(x)").expect("create");
    drop(conn);
    std::fs::read(&path).expect("read")
});

fuzz_target!(|data: &[u8]| {
    let db = DIR.path().join("d.db");
    let log = DIR.path().join("d.db-wal");
    let _ = std::fs::remove_dir_all(&log);
    std::fs::create_dir_all(&log).expect("log dir");
    std::fs::write(&db, &*DB).expect("db");
    // Input: [count][len_1 (2 bytes)][bytes_1]... up to four segment files.
    let count = data.first().map_or(0, |c| c % 4 + 1);
    let mut rest = data.get(1..).unwrap_or(&[]);
    for i in 0..count {
        let len = match rest {
            [a, b, tail @ ..] => {
                rest = tail;
                (u16::from_le_bytes([*a, *b]) as usize).min(rest.len())
            }
            _ => rest.len(),
        };
        let (segment, tail) = rest.split_at(len);
        rest = tail;
        std::fs::write(log.join(format!("{:020}.seg", 1 + i as u64 * 1000)), segment).expect("segment");
    }
    let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config);
    // Damage must come back as errors: any panic here is a finding.
    let _ = verify(&db, &manager);
    let _ = inspect(&db, &manager);
});
