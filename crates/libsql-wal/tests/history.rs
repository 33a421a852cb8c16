//! Point-in-time restore (format version 3): every commit frame records its commit time, and
//! `restore` to a frame_no or a time lands on the last commit at or before the point.
//!
//! - every commit of a varied history restores exactly, by its frame_no and by a time between
//!   it and the next commit, equal page by page to a copy SQLite's backup API took of the
//!   database right after that commit; a frame_no between two commits lands on the earlier;
//! - a point outside the restorable window (before it, after it, in the future, in a gap) is
//!   refused with a message naming the window, and leaves nothing at OUT; a dry run says
//!   where a restore would land and writes nothing;
//! - stored objects of format version 2 (no commit times, 24-byte frame headers), alone or
//!   followed by version 3 objects continuing their chain, still restore by frame_no; a time
//!   among them is refused, pointing at `--frame-no`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libsql_sys::rusqlite::{Connection, params};
use libsql_wal::io::StdIo;
use libsql_wal::storage::history::RestorePoint;
use libsql_wal::storage::layout::ObjectKind;
use libsql_wal::{
    LibsqlWalManager, RestoreOptions, RestoreReport, Storage, StorageConfig, WalConfig, flush_to_storage, inspect,
    open_connection, restore_with,
};

const PAGE: usize = 4096;

fn local_store(dir: &Path) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    };
    Storage::open_with(&format!("file://{}", dir.display()), &[], config).unwrap()
}

fn manager(storage: &Storage, namespace: &str, segment_frames_max: u32) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max, segment_age_max: None, ..Default::default() };
    LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace(namespace).unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `len` deterministic bytes from `seed` (xorshift): varied content, no `randomblob`.
fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One commit as it was made: its frame_no, the wall time right after it returned, and a
/// page-exact copy of the database it left.
struct Commit {
    frame_no: u64,
    wall_ms: u64,
    copy: Vec<u8>,
}

/// The database as `reader` (a connection on our WAL) sees it, copied page by page with
/// SQLite's online backup API, as bytes.
fn backup_copy(reader: &Connection, scratch: &Path) -> Vec<u8> {
    let path = scratch.join("backup.db");
    {
        let mut dst = Connection::open(&path).unwrap();
        let backup = libsql_sys::rusqlite::backup::Backup::new(reader, &mut dst).unwrap();
        assert_eq!(backup.step(-1).unwrap(), libsql_sys::rusqlite::backup::StepResult::Done);
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes
}

/// Commits `step` (one transaction) and records it. The commit must add frames: every step
/// changes some page.
fn commit(
    db: &Path,
    manager: &LibsqlWalManager,
    reader: &Connection,
    scratch: &Path,
    previous_frame_no: u64,
    step: impl FnOnce(),
) -> Commit {
    step();
    let frame_no = inspect(db, manager).unwrap().last_frame_no;
    let wall_ms = now_ms();
    assert!(frame_no > previous_frame_no, "setup: the step committed frames ({previous_frame_no} -> {frame_no})");
    let copy = backup_copy(reader, scratch);
    // Commit times are milliseconds: the next commit must be made in a later one.
    std::thread::sleep(Duration::from_millis(3));
    Commit { frame_no, wall_ms, copy }
}

/// Commit `i` of a history of varied shape, one transaction each: inserts of rows of many
/// sizes (overflow pages among them), updates, deletes, transactions larger than a segment,
/// a table dropped and another created in its place, and a VACUUM that shrinks the file.
fn varied_step(conn: &Connection, i: u64) {
    let insert_a = |seed: u64, len: usize| {
        conn.execute("INSERT INTO a(k, v) VALUES (?1, ?2)", params![format!("k{seed}"), blob(seed, len)]).unwrap();
    };
    match i {
        0 => conn.execute_batch("CREATE TABLE a(id INTEGER PRIMARY KEY, k TEXT, v BLOB)").unwrap(),
        40 => conn
            .execute_batch("BEGIN; CREATE TABLE b(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX b_v ON b(v); COMMIT;")
            .unwrap(),
        41..=99 if i.is_multiple_of(3) => {
            conn.execute("INSERT INTO b(v) VALUES (?1)", [blob(i + 1000, 200 + (i as usize * 37) % 900)]).unwrap();
        }
        100 => conn.execute_batch("DROP TABLE b").unwrap(),
        120 => {
            conn.execute_batch("BEGIN; CREATE TABLE c(x TEXT, y INTEGER); CREATE INDEX c_y ON c(y); COMMIT;").unwrap()
        }
        121..=180 if i.is_multiple_of(4) => {
            conn.execute("INSERT INTO c VALUES (?1, ?2)", params![format!("row {i}").repeat(i as usize % 50), i])
                .unwrap();
        }
        190 => conn.execute_batch("DELETE FROM a WHERE id % 3 != 0").unwrap(),
        191 => conn.execute_batch("VACUUM").unwrap(),
        _ if i % 37 == 11 => {
            // Larger than a segment: 40 rows of about 1.5 KB in one transaction.
            conn.execute_batch("BEGIN").unwrap();
            for r in 0..40 {
                insert_a(i * 100 + r, 1200 + (r as usize * 13) % 600);
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        _ if i % 10 == 3 => {
            conn.execute(
                "UPDATE a SET v = ?1, k = k || '+' WHERE id % 4 = ?2 OR id = (SELECT max(id) FROM a)",
                params![blob(i, 50 + (i as usize * 91) % 3000), (i % 4) as i64],
            )
            .unwrap();
        }
        _ if i % 10 == 6 => {
            conn.execute("DELETE FROM a WHERE id IN (SELECT id FROM a ORDER BY (id * 7919) % 101 LIMIT 2)", [])
                .unwrap();
        }
        _ => {
            // Mostly small rows, now and then one with overflow pages.
            let len = if i % 13 == 5 { 5000 + (i as usize * 31) % 4000 } else { 1 + (i as usize * 7919) % 1800 };
            insert_a(i, len);
        }
    }
}

fn restore_to(
    storage: &Storage,
    namespace: &str,
    out: &Path,
    point: RestorePoint,
) -> libsql_wal::Result<RestoreReport> {
    let options = RestoreOptions { point, ..RestoreOptions::default() };
    restore_with(storage, namespace, out, &options, &mut |_, _| {})
}

/// Asserts that `restored` is `expected` page by page: as many pages, each byte-equal, but
/// for bytes 0..100 of page 1 (the database header: per-file counters, and our checkpoint
/// mark at 72..92). Returns the pages compared.
fn assert_same_pages(what: &str, restored: &[u8], expected: &[u8]) -> usize {
    assert_eq!(restored.len() % PAGE, 0, "{what}: not whole pages");
    assert_eq!(
        restored.len() / PAGE,
        expected.len() / PAGE,
        "{what}: {} pages restored, {} expected",
        restored.len() / PAGE,
        expected.len() / PAGE
    );
    for (i, (a, b)) in restored.chunks(PAGE).zip(expected.chunks(PAGE)).enumerate() {
        let from = if i == 0 { 100 } else { 0 };
        if a[from..] != b[from..] {
            let at = (from..PAGE).find(|&j| a[j] != b[j]).unwrap();
            panic!("{what}: page {} differs (first at byte {at})", i + 1);
        }
    }
    restored.len() / PAGE
}

fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// Builds a history of `steps` commits in namespace `namespace`, one recorded [`Commit`]
/// each, and makes it all durable. Returns the commits and the wall time before the first.
fn build_history(
    dir: &Path,
    storage: &Storage,
    namespace: &str,
    segment_frames_max: u32,
    steps: u64,
) -> (Vec<Commit>, u64) {
    let db = dir.join(format!("{namespace}.db"));
    let scratch = dir.join(format!("{namespace}-scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let manager = manager(storage, namespace, segment_frames_max);
    let conn = open_connection(&db, &manager).unwrap();
    let reader = open_connection(&db, &manager).unwrap();
    let started_ms = now_ms();
    std::thread::sleep(Duration::from_millis(3));
    let mut commits: Vec<Commit> = Vec::new();
    for i in 0..steps {
        let previous = commits.last().map_or(0, |c| c.frame_no);
        commits.push(commit(&db, &manager, &reader, &scratch, previous, || varied_step(&conn, i)));
    }
    let durable = flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap();
    assert_eq!(durable, Some(commits.last().unwrap().frame_no), "every commit is durable");
    drop(reader);
    drop(conn);
    (commits, started_ms)
}

/// Restores `point` into a fresh file under `dir`, checks it against `commit` (page by
/// page, landing frame_no, and a commit time after `after_ms` and no later than the wall time
/// right after the commit), removes it. Returns the commit time and the pages compared.
fn restore_and_compare(
    storage: &Storage,
    namespace: &str,
    dir: &Path,
    point: RestorePoint,
    commit: &Commit,
    after_ms: u64,
    check_integrity: bool,
) -> (u64, usize) {
    let out = dir.join("out.db");
    let what = format!("restore of {point:?} (commit at frame_no {})", commit.frame_no);
    let report = restore_to(storage, namespace, &out, point).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(report.frame_no, commit.frame_no, "{what}: landed elsewhere");
    let time = report.commit_unix_ms.unwrap_or_else(|| panic!("{what}: no commit time in the report"));
    assert!(time <= commit.wall_ms, "{what}: commit time {time} after the wall time {} right after it", commit.wall_ms);
    assert!(time > after_ms, "{what}: commit time {time} not after the previous commit's wall time {after_ms}");
    let restored = std::fs::read(&out).unwrap();
    let pages = assert_same_pages(&what, &restored, &commit.copy);
    if check_integrity {
        assert_eq!(integrity(&out), "ok", "{what}");
    }
    std::fs::remove_file(&out).unwrap();
    (time, pages)
}

#[test]
fn every_commit_restores_exactly_by_frame_no_and_by_time() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let (commits, started_ms) = build_history(dir.path(), &storage, "h", 16, 250);
    let built = started.elapsed();

    let objects = storage.list("h").unwrap();
    let segments = objects.iter().filter(|o| matches!(o.kind, ObjectKind::Segment { .. })).count();
    assert!(segments >= 30, "many segments: {segments}");
    let per_segment = commits.len() as f64 / segments as f64;
    assert!(per_segment >= 2.0, "many commits inside each segment: {per_segment:.1}");
    let multi_frame = commits.windows(2).filter(|w| w[1].frame_no - w[0].frame_no > 16).count();
    assert!(multi_frame >= 3, "transactions larger than a segment: {multi_frame}");
    let sizes: Vec<usize> = commits.iter().map(|c| c.copy.len() / PAGE).collect();
    assert!(sizes.windows(2).any(|w| w[1] < w[0]), "the file shrank at some commit: {sizes:?}");

    let outs = dir.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let (mut restores, mut pages) = (0usize, 0usize);
    let mut compare = |point: RestorePoint, at: usize, check_integrity: bool| {
        let after_ms = if at == 0 { started_ms } else { commits[at - 1].wall_ms };
        let (time, compared) =
            restore_and_compare(&storage, "h", &outs, point, &commits[at], after_ms, check_integrity);
        restores += 1;
        pages += compared;
        time
    };
    let mut times = Vec::new();
    for (i, commit) in commits.iter().enumerate() {
        let time = compare(RestorePoint::FrameNo(commit.frame_no), i, i % 50 == 0 || i == commits.len() - 1);
        // By time: the wall time right after the commit lies before the next commit.
        assert_eq!(compare(RestorePoint::Time(commit.wall_ms), i, false), time, "by time, the same commit time");
        times.push(time);
        // At the edges: the commit's own time lands on it, a millisecond before on the one
        // before it (on every third commit, to keep the run short).
        if i > 0 && i % 3 == 0 {
            compare(RestorePoint::Time(time), i, false);
            compare(RestorePoint::Time(time - 1), i - 1, false);
        }
        // A frame_no strictly between this commit and the next lands on this one.
        if let Some(next) = commits.get(i + 1)
            && next.frame_no - commit.frame_no >= 2
            && i % 4 == 0
        {
            for between in [commit.frame_no + 1, (commit.frame_no + next.frame_no) / 2, next.frame_no - 1] {
                compare(RestorePoint::FrameNo(between), i, false);
            }
        }
    }
    assert!(times.windows(2).all(|w| w[0] < w[1]), "commit times increase, one commit per millisecond or more");
    // The latest state is the last commit.
    compare(RestorePoint::Latest, commits.len() - 1, true);
    assert!(restores >= 500, "{restores} restores");
    assert_eq!(std::fs::read_dir(&outs).unwrap().count(), 0, "every restore cleaned up after itself");
    eprintln!(
        "{} commits in {segments} segments (built in {built:?}); {restores} restores, {pages} pages compared, in {:?}",
        commits.len(),
        started.elapsed() - built
    );
}
