//! Recovery of a log left on disk (BRIEF §3, invariants 3, 4 and 8): a torn or corrupt tail
//! is cut at the last valid commit and nothing after a bad frame is trusted; frame numbers
//! are contiguous across segments, restarts and checkpoints; damage that cannot be a torn
//! tail (a sealed segment, an unknown format version) makes opening fail with a clear error,
//! without a panic and without touching the files.
//!
//! Every test works in its own temporary directory: the registry of logs is process-global.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_sys::rusqlite::{self, params};
use libsql_wal::io::StdIo;
use libsql_wal::{CheckpointMode, LibsqlWalManager, WalConfig, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

// The on-disk layout (src/format.rs, docs/FORMAT.md).
const HEADER_SIZE: u64 = 64;
const FRAME_HEADER_SIZE: u64 = libsql_wal::format::FRAME_HEADER_SIZE as u64;
const FRAME_SIZE: u64 = FRAME_HEADER_SIZE + 4096;
const TRAILER_SIZE: u64 = 48;

fn manager(segment_frames_max: u32, checkpoint_on_close: bool) -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max, checkpoint_on_close, ..Default::default() })
}

/// Keeps the log on close, so the test can damage it.
fn keep_log() -> LibsqlWalManager {
    manager(4096, false)
}

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Segment files, oldest first.
fn segment_files(db: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir(db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Every file of the database: the database itself and its log, with their bytes.
fn snapshot_files(db: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(db.to_path_buf(), std::fs::read(db).unwrap());
    for path in std::fs::read_dir(log_dir(db)).unwrap() {
        let path = path.unwrap().path();
        files.insert(path.clone(), std::fs::read(&path).unwrap());
    }
    files
}

/// The deterministic content of row `i`.
fn blob(i: i64) -> Vec<u8> {
    (0..1500).map(|j| ((i * 31 + j) % 251) as u8).collect()
}

fn create_table(conn: &rusqlite::Connection) {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, v BLOB NOT NULL)").unwrap();
}

/// Commits rows `ids` one transaction each.
fn commit_rows(conn: &rusqlite::Connection, ids: std::ops::RangeInclusive<i64>) {
    for i in ids {
        conn.execute("INSERT INTO t VALUES (?1, ?2)", params![i, blob(i)]).unwrap();
    }
}

/// The ids present, checking every row's content and the database's integrity.
fn rows(conn: &rusqlite::Connection) -> Vec<i64> {
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "integrity_check");
    let mut stmt = conn.prepare("SELECT i, v FROM t ORDER BY i").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))).unwrap();
    rows.map(|r| {
        let (i, v) = r.unwrap();
        assert!(v == blob(i), "row {i} has the wrong content");
        i
    })
    .collect()
}

fn open_rows(db: &Path, manager: &LibsqlWalManager) -> Vec<i64> {
    let conn = open_connection(db, manager).unwrap();
    rows(&conn)
}

/// A fresh database with the table and rows `1..=n`, one transaction each, its log kept.
fn database_with_rows(dir: &Path, n: i64, manager: &LibsqlWalManager) -> PathBuf {
    let db = dir.join("data.db");
    let conn = open_connection(&db, manager).unwrap();
    create_table(&conn);
    commit_rows(&conn, 1..=n);
    drop(conn);
    assert!(log_dir(&db).is_dir(), "the log was not kept on close");
    db
}

/// Frame headers on disk: (page_no, size_after, frame_no) of each frame of a segment file.
fn frames_on_disk(path: &Path) -> Vec<(u32, u32, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let le32 = |at: u64| u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
    let le64 = |at: u64| u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap());
    let sealed = len >= HEADER_SIZE + TRAILER_SIZE && &bytes[(len - TRAILER_SIZE) as usize..][..8] == b"LSQLSEAL";
    let count = if sealed {
        let t = len - TRAILER_SIZE;
        le64(t + 16) - le64(t + 8) + 1
    } else {
        (len - HEADER_SIZE) / FRAME_SIZE
    };
    (0..count)
        .map(|k| {
            let at = HEADER_SIZE + k * FRAME_SIZE;
            (le32(at), le32(at + 4), le64(at + 8))
        })
        .collect()
}

fn is_sealed(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.len() as u64 >= HEADER_SIZE + TRAILER_SIZE
        && &bytes[bytes.len() - TRAILER_SIZE as usize..][..8] == b"LSQLSEAL"
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5A;
    std::fs::write(path, bytes).unwrap();
}

/// Checkpoints everything on close and checks with stock sqlite3 that the file is sound
/// and holds rows `1..=n`.
fn final_check_with_stock_sqlite(db: &Path, n: i64) {
    let conn = open_connection(db, &manager(4096, true)).unwrap();
    assert_eq!(rows(&conn), (1..=n).collect::<Vec<_>>());
    drop(conn);
    assert!(!log_dir(db).exists(), "the log is still there after a checkpointing close");
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA integrity_check; SELECT count(*), coalesce(sum(i), 0) FROM t;")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("ok\n{n}|{}\n", n * (n + 1) / 2),
        "stock sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI refuses the database with an error mentioning `needle`, without a panic.
fn cli_refuses(db: &Path, needle: &str) {
    let out = Command::new(BIN).arg("exec").arg(db).arg("SELECT count(*) FROM t").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI opened a damaged log: {stdout}");
    assert!(stderr.to_lowercase().contains(needle), "the CLI's error does not mention {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    assert!(stdout.trim().is_empty(), "the CLI printed rows from a damaged log: {stdout}");
}

/// Opening fails with an error whose message contains every needle.
fn open_fails(db: &Path, needles: &[&str]) -> String {
    match open_connection(db, &keep_log()) {
        Ok(_) => panic!("opened a database whose log is damaged"),
        Err(e) => {
            let message = e.to_string();
            for needle in needles {
                assert!(message.to_lowercase().contains(needle), "error does not mention {needle:?}: {message}");
            }
            message
        }
    }
}

// ---------------------------------------------------------------------------------------
// (a) torn tail
// ---------------------------------------------------------------------------------------

const N: i64 = 20;

/// Cuts the zeros a current segment is preallocated with, so the file ends with its last
/// frame (as after a power cut that lost the preallocation) and damage can aim at its end.
fn strip_preallocation(segment: &Path) {
    let bytes = std::fs::read(segment).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1);
    let frames = (used.saturating_sub(HEADER_SIZE)).div_ceil(FRAME_SIZE);
    let file = std::fs::OpenOptions::new().write(true).open(segment).unwrap();
    file.set_len(HEADER_SIZE + frames * FRAME_SIZE).unwrap();
}

/// Damages the current segment of a log holding rows 1..=N, then checks that exactly rows
/// `1..=expected` survive, that the log goes on from there, and that the result is sound.
fn torn_tail(damage: impl FnOnce(&Path), expected: i64) {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_rows(dir.path(), N, &keep_log());
    let current = segment_files(&db).pop().unwrap();
    assert!(!is_sealed(&current), "the tail segment is sealed");
    strip_preallocation(&current);
    let len = std::fs::metadata(&current).unwrap().len();
    assert_eq!((len - HEADER_SIZE) % FRAME_SIZE, 0, "the current segment does not end on a frame");
    damage(&current);

    let conn = open_connection(&db, &keep_log()).unwrap();
    assert_eq!(rows(&conn), (1..=expected).collect::<Vec<_>>(), "not the expected prefix");
    // The log goes on from the cut: new commits land and survive a restart.
    commit_rows(&conn, expected + 1..=expected + 5);
    drop(conn);
    assert_eq!(open_rows(&db, &keep_log()), (1..=expected + 5).collect::<Vec<_>>());
    final_check_with_stock_sqlite(&db, expected + 5);
}

#[test]
fn torn_tail_truncated_in_the_middle_of_the_last_frame() {
    torn_tail(
        |seg| {
            let len = std::fs::metadata(seg).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
            file.set_len(len - FRAME_SIZE / 2).unwrap();
        },
        // The commit frame of the last transaction is torn: it is gone, all others stay.
        N - 1,
    );
}

#[test]
fn torn_tail_truncated_in_the_last_frame_header() {
    torn_tail(
        |seg| {
            let len = std::fs::metadata(seg).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
            file.set_len(len - FRAME_SIZE + 10).unwrap();
        },
        N - 1,
    );
}

#[test]
fn torn_tail_with_garbage_appended() {
    torn_tail(
        |seg| {
            let mut bytes = std::fs::read(seg).unwrap();
            let mut rng = fastrand::Rng::with_seed(11);
            bytes.extend((0..FRAME_SIZE + 3000).map(|_| rng.u8(..)));
            std::fs::write(seg, bytes).unwrap();
        },
        // Every transaction committed before the garbage is intact.
        N,
    );
}

/// A whole frame that looks right (next frame_no, a page, a commit size) but whose checksum
/// does not chain: it must not be taken as a commit.
#[test]
fn torn_tail_with_a_plausible_frame_appended() {
    torn_tail(
        |seg| {
            let frames = frames_on_disk(seg);
            let &(_, size_after, last_frame_no) = frames.last().unwrap();
            let mut frame = Vec::new();
            frame.extend_from_slice(&2u32.to_le_bytes());
            frame.extend_from_slice(&size_after.to_le_bytes());
            frame.extend_from_slice(&(last_frame_no + 1).to_le_bytes());
            frame.extend_from_slice(&0u32.to_le_bytes());
            frame.extend_from_slice(&0xDEADBEEFu32.to_le_bytes());
            frame.extend_from_slice(&[0u8; 4096]);
            let mut bytes = std::fs::read(seg).unwrap();
            bytes.extend_from_slice(&frame);
            std::fs::write(seg, bytes).unwrap();
        },
        N,
    );
}

// ---------------------------------------------------------------------------------------
// (b) a corrupt frame in the current segment
// ---------------------------------------------------------------------------------------

#[test]
fn flipped_byte_in_the_last_commit_frame_drops_that_transaction_only() {
    torn_tail(
        |seg| {
            let frames = frames_on_disk(seg);
            let last = frames.len() as u64 - 1;
            assert_ne!(frames[last as usize].1, 0, "the last frame is not a commit frame");
            flip_byte(seg, HEADER_SIZE + last * FRAME_SIZE + FRAME_HEADER_SIZE + 1000);
        },
        N - 1,
    );
}

/// The current segment of `database_with_rows` (under `synchronous`), with a byte flipped in
/// a frame of insert number 10. Returns the database, the segment, and the number of frames
/// before that transaction.
fn bad_frame_in_insert_ten(dir: &Path, synchronous: &str) -> (PathBuf, PathBuf, usize) {
    let db = dir.join("data.db");
    let conn = open_connection(&db, &keep_log()).unwrap();
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}")).unwrap();
    create_table(&conn);
    commit_rows(&conn, 1..=N);
    drop(conn);
    let seg = segment_files(&db).pop().unwrap();
    let frames = frames_on_disk(&seg);
    let commits: Vec<usize> = (0..frames.len()).filter(|&k| frames[k].1 != 0).collect();
    // The segment's last N commits are the N inserts, in order.
    assert!(commits.len() as i64 >= N, "fewer commit frames than transactions");
    let first_insert_commit = commits.len() - N as usize;
    // A frame of insert number 10 (its commit frame, or an earlier frame of it).
    let tx10_first = commits[first_insert_commit + 8] + 1;
    let tx10_commit = commits[first_insert_commit + 9];
    let bad = (tx10_first + tx10_commit) / 2;
    flip_byte(&seg, HEADER_SIZE + bad as u64 * FRAME_SIZE + FRAME_HEADER_SIZE + 7);
    (db, seg, tx10_first)
}

/// A bad frame in the middle of the current segment, committed under NORMAL: nothing after
/// it was promised durable, so a power cut may have left it. The transaction holding it and
/// every later one are dropped, even though their own frames are intact (as in SQLite's WAL).
#[test]
fn a_bad_frame_in_a_middle_frame_under_normal_cuts_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, tx10_first) = bad_frame_in_insert_ten(dir.path(), "NORMAL");
    let conn = open_connection(&db, &keep_log()).unwrap();
    assert_eq!(rows(&conn), (1..=9).collect::<Vec<_>>(), "frames after a bad frame were trusted");
    drop(conn);
    let frames_after = frames_on_disk(&segment_files(&db).pop().unwrap());
    assert_eq!(frames_after.len(), tx10_first, "the segment was not cut at the last valid commit");
    final_check_with_stock_sqlite(&db, 9);
}

/// The same bad frame under FULL: insert 11 returned only after a sync that covered it, and
/// insert 12 was written after that, so it is damage, not a crash. The open is refused and
/// nothing is cut: inserts 10 to N stay on disk for whoever repairs it.
#[test]
fn a_bad_frame_in_a_middle_frame_under_full_is_refused_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, _) = bad_frame_in_insert_ten(dir.path(), "FULL");
    let before = snapshot_files(&db);
    let err = open_connection(&db, &keep_log()).err().expect("damage refused");
    assert!(err.to_string().contains("damage"), "{err}");
    assert!(snapshot_files(&db) == before, "a refused open changed files");
}

// ---------------------------------------------------------------------------------------
// (c) contiguous frame numbers
// ---------------------------------------------------------------------------------------

/// Checks invariant 3 on what `inspect` reports and on the frame headers on disk; returns
/// the last frame_no.
fn check_contiguous(db: &Path, manager: &LibsqlWalManager, first: u64) -> (u64, usize) {
    let info = libsql_wal::inspect(db, manager).unwrap();
    let segments = &info.segments;
    assert!(!segments.is_empty(), "no segment");
    assert_eq!(segments[0].start_frame_no, first, "the log does not start where it should");
    for (k, s) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        assert!(s.sealed || last, "segment {k} of {} is not sealed", segments.len());
        assert_eq!(s.last_frame_no, s.start_frame_no + s.frames as u64 - 1, "segment {k}: {s:?}");
        if k > 0 {
            assert_eq!(
                s.start_frame_no,
                segments[k - 1].last_frame_no + 1,
                "segment {k} does not start right after segment {}: {segments:#?}",
                k - 1
            );
        }
        let name = format!("{:020}.seg", s.start_frame_no);
        assert_eq!(s.path.file_name().unwrap().to_string_lossy(), name);
        let on_disk = frames_on_disk(&s.path);
        assert_eq!(on_disk.len() as u32, s.frames, "segment {k}: frames on disk");
        for (j, &(page_no, _, frame_no)) in on_disk.iter().enumerate() {
            assert_eq!(frame_no, s.start_frame_no + j as u64, "segment {k}, frame {j}");
            assert_ne!(page_no, 0);
        }
        assert_ne!(on_disk.last().unwrap().1, 0, "segment {k} does not end with a commit frame");
    }
    assert_eq!(info.last_frame_no, segments.last().unwrap().last_frame_no);
    (info.last_frame_no, segments.len())
}

#[test]
fn frame_numbers_are_contiguous_across_segments_restarts_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(8, false);
    let db = database_with_rows(dir.path(), 30, &m);
    let (last1, segs1) = check_contiguous(&db, &m, 1);
    assert!(segs1 >= 3, "expected several segments, got {segs1}");

    // Two more sessions, each continuing the log.
    for (session, ids) in [(2, 31..=50), (3, 51..=70)] {
        let conn = open_connection(&db, &m).unwrap();
        assert_eq!(rows(&conn).len() as i64, ids.start() - 1, "session {session}");
        commit_rows(&conn, ids);
        drop(conn);
        let (last, segs) = check_contiguous(&db, &m, 1);
        assert!(last > last1 && segs > segs1, "session {session} did not grow the log");
    }
    let (last3, _) = check_contiguous(&db, &m, 1);

    // A truncate checkpoint empties the log; frame numbers still go on from where they were.
    let result = libsql_wal::checkpoint(&db, CheckpointMode::Truncate, &m).unwrap();
    assert!(!result.busy, "{result:?}");
    assert!(segment_files_or_none(&db).is_empty(), "segments left after a truncate checkpoint");
    let conn = open_connection(&db, &m).unwrap();
    commit_rows(&conn, 71..=80);
    drop(conn);
    let (last4, _) = check_contiguous(&db, &m, last3 + 1);
    assert!(last4 > last3);
    assert_eq!(open_rows(&db, &m), (1..=80).collect::<Vec<_>>());
    final_check_with_stock_sqlite(&db, 80);
}

fn segment_files_or_none(db: &Path) -> Vec<PathBuf> {
    if log_dir(db).exists() { segment_files(db) } else { Vec::new() }
}

// ---------------------------------------------------------------------------------------
// (d) a corrupt sealed segment
// ---------------------------------------------------------------------------------------

/// A log of several segments holding rows 1..=40, its sealed segments (oldest first).
fn multi_segment_log(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let db = database_with_rows(dir, 40, &manager(8, false));
    let sealed: Vec<PathBuf> = segment_files(&db).into_iter().filter(|p| is_sealed(p)).collect();
    assert!(sealed.len() >= 3, "expected at least 3 sealed segments, got {}", sealed.len());
    assert!(!is_sealed(segment_files(&db).last().unwrap()), "the tail segment is sealed");
    (db, sealed)
}

fn sealed_segment_damage_is_refused(damage: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let (db, sealed) = multi_segment_log(dir.path());
    damage(&sealed[1]);
    let before = snapshot_files(&db);
    let message = open_fails(&db, &["corrupt"]);
    eprintln!("refused: {message}");
    cli_refuses(&db, "corrupt");
    let info = libsql_wal::inspect(&db, &keep_log());
    assert!(info.is_err(), "inspect accepted a corrupt log");
    assert!(snapshot_files(&db) == before, "refusing a corrupt log changed its files");
}

#[test]
fn flipped_byte_in_a_sealed_segment_page_is_refused() {
    sealed_segment_damage_is_refused(|seg| flip_byte(seg, HEADER_SIZE + 2 * FRAME_SIZE + FRAME_HEADER_SIZE + 321));
}

#[test]
fn flipped_byte_in_a_sealed_segment_frame_header_is_refused() {
    // The page number of frame 1.
    sealed_segment_damage_is_refused(|seg| flip_byte(seg, HEADER_SIZE + FRAME_SIZE));
}

/// The frames are the truth; a damaged on-disk index of a sealed segment is rebuilt from
/// them (src/segment.rs, `verify_sealed_index`): nothing is lost.
#[test]
fn flipped_byte_in_a_sealed_segment_index_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let (db, sealed) = multi_segment_log(dir.path());
    let len = std::fs::metadata(&sealed[1]).unwrap().len();
    flip_byte(&sealed[1], len - TRAILER_SIZE - 3); // inside the index, before the trailer
    assert_eq!(open_rows(&db, &keep_log()), (1..=40).collect::<Vec<_>>());
    final_check_with_stock_sqlite(&db, 40);
}

// ---------------------------------------------------------------------------------------
// (e) an unknown format version
// ---------------------------------------------------------------------------------------

fn set_version(seg: &Path, version: u32) {
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg, bytes).unwrap();
}

fn unknown_version_is_refused(pick: impl FnOnce(&[PathBuf]) -> PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = multi_segment_log(dir.path());
    let seg = pick(&segment_files(&db));
    set_version(&seg, 7);
    let before = snapshot_files(&db);
    let message = open_fails(&db, &["version 7"]);
    eprintln!("refused: {message}");
    cli_refuses(&db, "version 7");
    assert!(snapshot_files(&db) == before, "refusing an unknown version changed the files");
    // Back to the version we know: everything is there again.
    set_version(&seg, libsql_wal::format::FORMAT_VERSION);
    assert_eq!(open_rows(&db, &keep_log()), (1..=40).collect::<Vec<_>>());
}

#[test]
fn unknown_version_of_a_sealed_segment_is_refused() {
    unknown_version_is_refused(|segs| segs[0].clone());
}

#[test]
fn unknown_version_of_the_current_segment_is_refused() {
    unknown_version_is_refused(|segs| segs.last().unwrap().clone());
}

// ---------------------------------------------------------------------------------------
// (f) other damage: garbage in place of a segment, a truncated sealed segment, a database
// file shorter than its last checkpoint left it
// ---------------------------------------------------------------------------------------

#[test]
fn garbage_in_place_of_a_sealed_segment_is_refused() {
    sealed_segment_damage_is_refused(|seg| {
        let len = std::fs::metadata(seg).unwrap().len() as usize;
        let mut rng = fastrand::Rng::with_seed(7);
        std::fs::write(seg, (0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
    });
}

#[test]
fn a_truncated_sealed_segment_is_refused() {
    sealed_segment_damage_is_refused(|seg| {
        let len = std::fs::metadata(seg).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
        file.set_len(len - TRAILER_SIZE - 100).unwrap();
    });
}

#[test]
fn a_database_file_cut_short_under_a_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    {
        let conn = open_connection(&db, &manager(8, false)).unwrap();
        create_table(&conn);
        commit_rows(&conn, 1..=40);
        conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
        commit_rows(&conn, 41..=45);
    }
    assert!(!segment_files(&db).is_empty(), "the log must still hold the last commits");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 8 * 4096, "the checkpoint should have filled the database file");
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(4096).unwrap();
    let message = open_fails(&db, &["cut short"]);
    eprintln!("refused: {message}");
}

// ---------------------------------------------------------------------------------------
// (g) full segments left unsealed (background seals): a power cut under NORMAL may tear
// one, and the log then ends there (a prefix, as SQLite's own WAL); a sealed one never is
// ---------------------------------------------------------------------------------------

/// Seals left to the next checkpoint or open, as with a background checkpointer.
fn deferred_seals() -> LibsqlWalManager {
    let config =
        WalConfig { segment_frames_max: 8, checkpoint_on_close: false, defer_seals: true, ..Default::default() };
    LibsqlWalManager::new(StdIo::shared(), config)
}

/// A log holding rows 1..=40 whose segments are all unsealed: (db, segments oldest first).
/// Committed under `synchronous=NORMAL`: what a power cut there may leave is what these
/// tests make (a FULL commit would prove every earlier segment durable, see
/// `a_missing_or_emptied_segment_before_a_synchronous_commit_is_damage_not_a_cut`).
fn unsealed_log(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let db = dir.join("data.db");
    let conn = open_connection(&db, &deferred_seals()).unwrap();
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    create_table(&conn);
    commit_rows(&conn, 1..=40);
    drop(conn);
    let files = segment_files(&db);
    assert!(files.len() >= 4, "expected at least 4 segments, got {}", files.len());
    assert!(files.iter().all(|f| !is_sealed(f)), "a segment was sealed on the commit path");
    (db, files)
}

/// Transactions whose commit frame is in `segments` (the first is CREATE TABLE).
fn commits_in(segments: &[PathBuf]) -> i64 {
    segments.iter().map(|s| frames_on_disk(s).iter().filter(|(_, size_after, _)| *size_after > 0).count() as i64).sum()
}

/// Opens the damaged log: `verify` first reports the cut as warnings (no error), then the
/// rows are exactly 1..=expected, the segments from `removed_from` on are gone, every
/// segment but the newest is sealed, and the log goes on from the cut.
fn log_ends_at(db: &Path, files: &[PathBuf], removed_from: usize, expected: i64) {
    let report = libsql_wal::verify(db, &keep_log()).unwrap();
    assert_eq!(report.errors, 0, "verify: {:#?}", report.lines);
    assert!(report.warnings > 0, "verify saw nothing to cut: {:#?}", report.lines);
    let conn = open_connection(db, &keep_log()).unwrap();
    assert_eq!(rows(&conn), (1..=expected).collect::<Vec<_>>(), "not the expected prefix");
    for lost in &files[removed_from..] {
        assert!(!lost.exists(), "{} is still there after the cut", lost.display());
    }
    let after = segment_files(db);
    assert!(after[..after.len() - 1].iter().all(|f| is_sealed(f)), "an older segment is still unsealed");
    commit_rows(&conn, expected + 1..=expected + 5);
    drop(conn);
    assert_eq!(open_rows(db, &keep_log()), (1..=expected + 5).collect::<Vec<_>>());
    final_check_with_stock_sqlite(db, expected + 5);
}

#[test]
fn full_segments_left_unsealed_are_sealed_at_open_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, files) = unsealed_log(dir.path());
    assert_eq!(commits_in(&files), 41);
    let report = libsql_wal::verify(&db, &keep_log()).unwrap();
    assert_eq!((report.errors, report.warnings), (0, 0), "verify: {:#?}", report.lines);
    drop(open_connection(&db, &keep_log()).unwrap());
    let after = segment_files(&db);
    assert_eq!(after, files, "recovery removed or added a segment");
    assert!(after[..after.len() - 1].iter().all(|f| is_sealed(f)), "a full segment was not sealed at open");
    assert!(!is_sealed(after.last().unwrap()), "the current segment was sealed");
    assert_eq!(open_rows(&db, &keep_log()), (1..=40).collect::<Vec<_>>());
    final_check_with_stock_sqlite(&db, 40);
}

#[test]
fn a_torn_unsealed_segment_ends_the_log_and_later_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (db, files) = unsealed_log(dir.path());
    // A power cut kept the start of segment 1 but not its last frame, and kept later files.
    let torn = &files[1];
    strip_preallocation(torn); // FULL commits grew it with zeros
    let len = std::fs::metadata(torn).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(torn).unwrap();
    file.set_len(len - FRAME_SIZE / 2).unwrap();
    drop(file);
    let expected = commits_in(&files[..2]) - 1;
    assert!(expected < 40);
    log_ends_at(&db, &files, 2, expected);
}

#[test]
fn a_segment_whose_header_never_reached_the_disk_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (db, files) = unsealed_log(dir.path());
    let mut bytes = std::fs::read(&files[2]).unwrap();
    bytes[..HEADER_SIZE as usize].fill(0);
    std::fs::write(&files[2], bytes).unwrap();
    log_ends_at(&db, &files, 2, commits_in(&files[..2]) - 1);
}

#[test]
fn a_damaged_header_of_an_unsealed_segment_is_refused() {
    // Not a header cut short (its checksum field is written): damage, not a power cut.
    let dir = tempfile::tempdir().unwrap();
    let (db, files) = unsealed_log(dir.path());
    flip_byte(&files[2], 20);
    let before = snapshot_files(&db);
    open_fails(&db, &["corrupt"]);
    assert!(snapshot_files(&db) == before, "refusing a corrupt log changed its files");
}

#[test]
fn a_gap_before_a_sealed_segment_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (db, sealed) = multi_segment_log(dir.path());
    // The frames of a sealed segment were synced before its seal: losing its file is damage.
    std::fs::remove_file(&sealed[1]).unwrap();
    let before = snapshot_files(&db);
    open_fails(&db, &["corrupt"]);
    assert!(snapshot_files(&db) == before, "refusing a corrupt log changed its files");
}
