//! Commit times (format version 3) never go back, whatever the clock does: a clock stepped
//! back makes commits share the last commit time until it catches up, within a process and
//! across restarts, whether the restart finds the log still holding commits or emptied by the
//! checkpoint of the close before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libsql_wal::storage::history::RestorePoint;
use libsql_wal::{
    LibsqlWalManager, RestoreOptions, Storage, StorageConfig, WalConfig, flush_to_storage, inspect, open_connection,
    restore_with,
};
use libsql_wal_testkit::support::TestIo;

const HOUR_MS: i64 = 3_600_000;

fn local_store(dir: &Path) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    };
    Storage::open_with(&format!("file://{}", dir.display()), &[], config).unwrap()
}

fn manager(io: &Arc<TestIo>, storage: &Storage, checkpoint_on_close: bool) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 8, segment_age_max: None, checkpoint_on_close, ..Default::default() };
    LibsqlWalManager::new(io.clone(), config).with_storage(storage.clone()).with_namespace("clock").unwrap()
}

/// Opens the database, makes `n` commits (2 ms apart), optionally flushes them to storage,
/// closes it. Returns the frame_no of its last commit.
fn commits(db: &Path, manager: &LibsqlWalManager, n: usize, flush: bool) -> u64 {
    let conn = open_connection(db, manager).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    for i in 0..n {
        conn.execute("INSERT INTO t(v) VALUES (?1)", ["x".repeat(1 + i * 97 % 900)]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let last = inspect(db, manager).unwrap().last_frame_no;
    if flush {
        assert_eq!(flush_to_storage(db, Some(Duration::from_secs(60)), manager).unwrap(), Some(last));
    }
    last
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// (frame_no, commit_unix_ms) of every commit frame of the namespace's stored segment objects,
/// in frame order, read by the offsets of docs/FORMAT.md: a 64-byte segment header, then
/// 4128-byte frames whose 32-byte header has `size_after` at 4..8 (non-zero on a commit
/// frame), `frame_no` at 8..16 and `commit_unix_ms` at 16..24. The objects must cover every
/// frame from 1 on, without a gap.
fn stored_commit_times(store_dir: &Path, namespace: &str) -> Vec<(u64, u64)> {
    let mut objects: Vec<PathBuf> = std::fs::read_dir(store_dir.join(namespace).join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    objects.sort(); // zero-padded start frame_no first: frame order
    let mut commits = Vec::new();
    let mut next_frame_no = 1;
    for path in objects {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u32_at(&bytes, 8), 3, "{}: format version", path.display());
        assert_eq!(u64_at(&bytes, 16), next_frame_no, "{}: the objects follow each other", path.display());
        let index_offset = u64_at(&bytes, bytes.len() - 48 + 24) as usize;
        let frames = (index_offset - 64) / 4128;
        for i in 0..frames {
            let head = &bytes[64 + i * 4128..64 + i * 4128 + 32];
            assert_eq!(u64_at(head, 8), next_frame_no, "{}: frame {i}", path.display());
            if u32_at(head, 4) != 0 {
                commits.push((next_frame_no, u64_at(head, 16)));
            }
            next_frame_no += 1;
        }
    }
    commits
}

fn log_dir(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

#[test]
fn commit_times_never_go_back_when_the_clock_does() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let db = dir.path().join("clock.db");
    let (io, switches) = TestIo::new();
    // Closing without a checkpoint keeps the log, so the next open finds commits in it.
    let keeps_log = manager(&io, &storage, false);
    let empties_log = manager(&io, &storage, true);

    // Commits with the clock right, then with it an hour back, in one process.
    let phase_1 = {
        let conn = open_connection(&db, &keeps_log).unwrap();
        let end = commits(&db, &keeps_log, 15, false);
        switches.clock_offset_ms.store(-HOUR_MS, Ordering::SeqCst);
        let phase_2 = commits(&db, &keeps_log, 15, false);
        drop(conn);
        (end, phase_2)
    };
    let (phase_1, phase_2) = phase_1;
    assert!(log_dir(&db).exists(), "setup: the log outlives the close");

    // A restart that finds the log holding the commits; then one whose log the close's
    // checkpoint emptied (everything was durable): the clock is still an hour back.
    let phase_3 = commits(&db, &empties_log, 15, true);
    assert!(!log_dir(&db).exists(), "setup: the close checkpointed everything and removed the log");
    let phase_4 = commits(&db, &empties_log, 15, true);
    // The clock put right again: commit times follow it again.
    switches.clock_offset_ms.store(0, Ordering::SeqCst);
    let phase_5 = commits(&db, &empties_log, 15, true);

    let times = stored_commit_times(&store_dir, "clock");
    assert_eq!(times.last().unwrap().0, phase_5, "every commit is stored");
    assert_eq!(times.len(), 1 + 5 * 15, "one commit per statement, and the table's creation");
    for pair in times.windows(2) {
        let ((f0, t0), (f1, t1)) = (pair[0], pair[1]);
        assert!(t1 >= t0, "the commit time went back from frame_no {f0} ({t0}) to frame_no {f1} ({t1})");
    }
    // While the clock was behind, commits shared the last time it had given.
    let held = times.iter().rev().find(|&&(f, _)| f <= phase_1).unwrap().1;
    let behind: Vec<u64> = times.iter().filter(|&&(f, _)| f > phase_1 && f <= phase_4).map(|&(_, t)| t).collect();
    assert_eq!(behind.len(), 45);
    assert!(behind.iter().all(|&t| t == held), "commits with the clock behind share {held}: {behind:?}");
    let after: Vec<u64> = times.iter().filter(|&&(f, _)| f > phase_4).map(|&(_, t)| t).collect();
    assert!(after[0] > held && after.windows(2).all(|w| w[0] < w[1]), "the clock right again: {after:?}");
    assert!(phase_2 > phase_1 && phase_3 > phase_2);

    // Restore reads the same times: the report of a restore by frame_no of a commit.
    for &(frame_no, time) in times.iter().step_by(10) {
        let out = dir.path().join(format!("r{frame_no}.db"));
        let options = RestoreOptions { point: RestorePoint::FrameNo(frame_no), dry_run: true, ..Default::default() };
        let report = restore_with(&storage, "clock", &out, &options, &mut |_, _| {}).unwrap();
        assert_eq!((report.frame_no, report.commit_unix_ms), (frame_no, Some(time)));
    }
}
