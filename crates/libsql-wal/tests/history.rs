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

use std::path::{Path, PathBuf};
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

/// Nothing a restore to `out` makes is there: no file, no `-wal` directory, no scratch
/// directory (`.<name>.restoring-*` or `.<name>.preparing-*`) beside it.
fn assert_nothing_at(out: &Path, what: &str) {
    assert!(!out.exists(), "{what}: {} exists", out.display());
    let wal = PathBuf::from(format!("{}-wal", out.display()));
    assert!(!wal.exists(), "{what}: {} exists", wal.display());
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let scratch: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.")))
        .collect();
    assert!(scratch.is_empty(), "{what}: scratch left beside OUT: {scratch:?}");
}

/// Restores `point` to `out`, for real and as a dry run: both must be refused with a message
/// naming the restorable window and each of `expected`, and leave nothing at `out`.
fn assert_refused(storage: &Storage, namespace: &str, out: &Path, point: RestorePoint, expected: &[&str]) {
    for dry_run in [false, true] {
        let options = RestoreOptions { point, dry_run, ..RestoreOptions::default() };
        let what = format!("{point:?} (dry run: {dry_run})");
        let error = match restore_with(storage, namespace, out, &options, &mut |_, _| {}) {
            Ok(report) => panic!("{what}: restored, landing at frame_no {}", report.frame_no),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("restorable window"), "{what}: the error does not name the window: {error}");
        for part in expected {
            assert!(error.contains(part), "{what}: the error does not say {part:?}: {error}");
        }
        assert_nothing_at(out, &what);
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A stored segment object, read by the offsets of docs/FORMAT.md.
struct SegmentObject {
    key: String,
    start_frame_no: u64,
    end_frame_no: u64,
    bytes: Vec<u8>,
}

impl SegmentObject {
    /// The namespace's segment objects, in frame order.
    fn all(storage: &Storage, store_dir: &Path, namespace: &str) -> Vec<SegmentObject> {
        let mut segments: Vec<SegmentObject> = storage
            .list(namespace)
            .unwrap()
            .into_iter()
            .filter_map(|o| match o.kind {
                ObjectKind::Segment { start_frame_no, end_frame_no, .. } => Some(SegmentObject {
                    bytes: std::fs::read(store_dir.join(&o.key)).unwrap(),
                    key: o.key,
                    start_frame_no,
                    end_frame_no,
                }),
                _ => None,
            })
            .collect();
        segments.sort_by_key(|s| s.start_frame_no);
        segments
    }

    fn version(&self) -> u32 {
        u32_at(&self.bytes, 8)
    }

    fn frame_size(&self) -> usize {
        if self.version() == 2 { 24 + PAGE } else { 32 + PAGE }
    }

    fn frames(&self) -> usize {
        (self.end_frame_no - self.start_frame_no + 1) as usize
    }

    /// Frame `i`'s header (the bytes before its page).
    fn frame_header(&self, i: usize) -> &[u8] {
        let at = 64 + i * self.frame_size();
        &self.bytes[at..at + self.frame_size() - PAGE]
    }

    fn lineage(&self) -> u32 {
        u32_at(&self.bytes, 28)
    }

    /// The chain value at its last frame: that frame's checksum.
    fn end_chain(&self) -> u32 {
        let header = self.frame_header(self.frames() - 1);
        u32_at(header, header.len() - 4)
    }

    /// The commit times of its commit frames (version 3), in frame order.
    fn commit_times(&self) -> Vec<u64> {
        (0..self.frames()).map(|i| self.frame_header(i)).filter(|h| u32_at(h, 4) != 0).map(|h| u64_at(h, 16)).collect()
    }
}

/// Puts a version 3 snapshot object of the database `pages` (the state at `frame_no`, whose
/// commit was made at `commit_unix_ms`, chain value `chain`) in the namespace.
fn put_snapshot(
    store_dir: &Path,
    namespace: &str,
    pages: &[u8],
    frame_no: u64,
    commit_unix_ms: u64,
    lineage: u32,
    chain: u32,
) {
    let taken = now_ms();
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(b"LSQLSNAP");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(PAGE as u32).to_le_bytes());
    header.extend_from_slice(&frame_no.to_le_bytes());
    header.extend_from_slice(&((pages.len() / PAGE) as u32).to_le_bytes());
    header.extend_from_slice(&lineage.to_le_bytes());
    header.extend_from_slice(&taken.to_le_bytes());
    header.extend_from_slice(&chain.to_le_bytes());
    header.extend_from_slice(&commit_unix_ms.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    let checksum = crc32c::crc32c(&header);
    header.extend_from_slice(&checksum.to_le_bytes());
    let mut object = header;
    object.extend_from_slice(pages);
    object.extend_from_slice(&crc32c::crc32c(pages).to_le_bytes());
    object.extend_from_slice(&0u32.to_le_bytes());
    object.extend_from_slice(b"LSQLSEND");
    let key = format!("{namespace}/snapshots/{frame_no:020}-{commit_unix_ms:013}-{taken:013}.snap");
    let path = store_dir.join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, object).unwrap();
}

#[test]
fn refused_points_name_the_window_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let (commits, started_ms) = build_history(dir.path(), &storage, "r", 8, 60);
    let end = commits.last().unwrap().frame_no;
    let outs = dir.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let out = outs.join("out.db");

    // Outside the window: before it, after its end, in the future.
    assert_refused(&storage, "r", &out, RestorePoint::Time(started_ms), &["before the window"]);
    assert_refused(&storage, "r", &out, RestorePoint::FrameNo(0), &["before the first commit"]);
    // Among the frames of the first transaction (it writes two pages), before its commit frame.
    assert!(commits[0].frame_no > 1, "setup: the first commit is not the first frame");
    assert_refused(&storage, "r", &out, RestorePoint::FrameNo(commits[0].frame_no - 1), &["before the first commit"]);
    assert_refused(&storage, "r", &out, RestorePoint::FrameNo(end + 1), &["after the end"]);
    assert_refused(&storage, "r", &out, RestorePoint::Time(now_ms() + 3_600_000), &["in the future"]);

    // A dry run says where a restore would land, and writes nothing.
    for (point, at) in [
        (RestorePoint::FrameNo(commits[20].frame_no), 20),
        (RestorePoint::FrameNo(commits[21].frame_no - 1), 20),
        (RestorePoint::Time(commits[33].wall_ms), 33),
        (RestorePoint::Latest, commits.len() - 1),
    ] {
        let options = RestoreOptions { point, dry_run: true, ..RestoreOptions::default() };
        let report = restore_with(&storage, "r", &out, &options, &mut |_, _| {}).unwrap();
        assert!(report.dry_run);
        assert_eq!(report.frame_no, commits[at].frame_no, "dry run of {point:?}");
        let time = report.commit_unix_ms.unwrap_or_else(|| panic!("dry run of {point:?}: no commit time"));
        assert!(time <= commits[at].wall_ms && time > commits[at - 1].wall_ms, "dry run of {point:?}: time {time}");
        assert_nothing_at(&out, &format!("dry run of {point:?}"));
    }

    // A gap: a middle segment object (one holding two commits or more) deleted, and a
    // snapshot at its end as the base of the objects after it (what a namespace wiped and
    // reconciled by a log starts from).
    let segments = SegmentObject::all(&storage, &store_dir, "r");
    let commit_at = |frame_no: u64| commits.iter().position(|c| c.frame_no == frame_no).unwrap();
    let gone = segments[segments.len() / 2..segments.len() - 2]
        .iter()
        .find(|s| s.commit_times().len() >= 2)
        .expect("setup: a middle segment holding two commits");
    let (after, base) = (gone.start_frame_no - 1, gone.end_frame_no);
    let (after_at, base_at) = (commit_at(after), commit_at(base));
    let inside_at = after_at + 1;
    assert!(inside_at < base_at, "setup: a commit inside the deleted segment");
    put_snapshot(
        &store_dir,
        "r",
        &commits[base_at].copy,
        base,
        *gone.commit_times().last().unwrap(),
        gone.lineage(),
        gone.end_chain(),
    );
    std::fs::remove_file(store_dir.join(&gone.key)).unwrap();
    let window = libsql_wal::storage::history::window(&storage.list("r").unwrap());
    assert_eq!(window.gaps(), vec![(after, base)], "{window:?}");

    // In the gap. A time after the last commit before it is in the gap too: the missing
    // commits right after that one may have been made by then.
    for point in [
        RestorePoint::FrameNo(after + 1),
        RestorePoint::FrameNo(commits[inside_at + 1].frame_no - 1),
        RestorePoint::FrameNo(base - 1),
        RestorePoint::Time(commits[after_at].wall_ms),
        RestorePoint::Time(commits[inside_at].wall_ms),
        RestorePoint::Time(commits[base_at - 1].wall_ms),
    ] {
        assert_refused(&storage, "r", &out, point, &["gap"]);
    }
    // Around the gap, every point still restores exactly.
    for (point, at) in [
        (RestorePoint::FrameNo(after), after_at),
        (RestorePoint::Time(commits[after_at - 1].wall_ms), after_at - 1),
        (RestorePoint::FrameNo(base), base_at),
        (RestorePoint::Time(commits[base_at].wall_ms), base_at),
        (RestorePoint::FrameNo(commits[base_at + 1].frame_no), base_at + 1),
        (RestorePoint::Latest, commits.len() - 1),
    ] {
        let after_ms = commits[at - 1].wall_ms;
        restore_and_compare(&storage, "r", &outs, point, &commits[at], after_ms, true);
    }

    // Without the base, what follows the gap is stranded: a point there is refused, and the
    // refusal says why (a gap), not that storage ends before it.
    for snapshot in std::fs::read_dir(store_dir.join("r/snapshots")).unwrap() {
        std::fs::remove_file(snapshot.unwrap().path()).unwrap();
    }
    for point in [
        RestorePoint::FrameNo(base + 1),
        RestorePoint::FrameNo(end),
        RestorePoint::Time(commits[base_at + 1].wall_ms),
        RestorePoint::Time(commits.last().unwrap().wall_ms),
    ] {
        assert_refused(&storage, "r", &out, point, &["gap"]);
    }
    restore_and_compare(
        &storage,
        "r",
        &outs,
        RestorePoint::FrameNo(after),
        &commits[after_at],
        commits[after_at - 1].wall_ms,
        false,
    );
}

/// Rewrites the namespace's segment objects, in frame order, as a build before commit times
/// would have written them: the first `v2` as format version 2 objects (version field 2, 24-byte
/// frame headers without the commit time, frame checksums over header bytes 0..20, the seal
/// trailer's `index_offset` for 4120-byte frames, a version 2 key), the rest left version 3.
/// Every object's `prev_chain` and frame checksums are recomputed from the chain value the
/// rewritten object before it ends at (the first keeps its own), so the chain holds across
/// objects, unless `rechain` is false: then the version 3 objects keep theirs, and no longer
/// continue the rewritten ones. Each rewritten object is checked against docs/FORMAT.md's
/// layout as it goes. Returns the objects rewritten as version 2.
fn rewrite_as_version_2(storage: &Storage, store_dir: &Path, namespace: &str, v2: usize, rechain: bool) -> usize {
    let segments = SegmentObject::all(storage, store_dir, namespace);
    assert!(v2 <= segments.len());
    let mut chain: Option<u32> = None;
    for (i, segment) in segments.iter().enumerate() {
        let bytes = &segment.bytes;
        assert_eq!(segment.version(), 3, "setup: the current build writes version 3");
        let n = segment.frames();
        let trailer = &bytes[bytes.len() - 48..];
        let (index_offset, entries) = (u64_at(trailer, 24) as usize, u32_at(trailer, 32) as usize);
        assert_eq!(index_offset, 64 + n * 4128, "{}: the index follows the last frame", segment.key);
        assert_eq!(bytes.len(), index_offset + 8 * entries + 48, "{}: index and trailer end the object", segment.key);
        let salt = u32_at(bytes, 24);
        let as_v2 = i < v2;
        let prev_chain = match chain {
            Some(c) if as_v2 || rechain => c,
            _ => u32_at(bytes, 40),
        };

        let mut out = bytes[..64].to_vec();
        out[8..12].copy_from_slice(&(if as_v2 { 2u32 } else { 3 }).to_le_bytes());
        out[40..44].copy_from_slice(&prev_chain.to_le_bytes());
        let header_checksum = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&header_checksum.to_le_bytes());
        let mut c = libsql_wal::format::chain_seed(salt, prev_chain);
        for f in 0..n {
            let frame = &bytes[64 + f * 4128..64 + (f + 1) * 4128];
            let (head, page) = frame.split_at(32);
            let mut new_head = if as_v2 {
                // page_no, size_after, frame_no, then flags: no commit time.
                [&head[..16], &head[24..28]].concat()
            } else {
                head[..28].to_vec()
            };
            c = crc32c::crc32c_append(crc32c::crc32c_append(c, &new_head), page);
            new_head.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&new_head);
            out.extend_from_slice(page);
        }
        out.extend_from_slice(&bytes[index_offset..index_offset + 8 * entries]);
        let mut new_trailer = trailer.to_vec();
        let frame_size = if as_v2 { 4120 } else { 4128 };
        new_trailer[24..32].copy_from_slice(&((64 + n * frame_size) as u64).to_le_bytes());
        let trailer_checksum = crc32c::crc32c_append(salt, &new_trailer[..44]);
        new_trailer[44..48].copy_from_slice(&trailer_checksum.to_le_bytes());
        out.extend_from_slice(&new_trailer);
        assert_eq!(out.len(), 64 + n * frame_size + 8 * entries + 48);

        let key = if as_v2 {
            let created = u64_at(bytes, 32);
            format!(
                "{namespace}/segments/{:020}-{:020}-{created:013}.seg",
                segment.start_frame_no, segment.end_frame_no
            )
        } else {
            segment.key.clone()
        };
        if key != segment.key {
            std::fs::remove_file(store_dir.join(&segment.key)).unwrap();
        }
        std::fs::write(store_dir.join(&key), &out).unwrap();
        chain = Some(if as_v2 || rechain { c } else { segment.end_chain() });
    }
    v2
}

/// Rewrites the namespace's snapshot objects as format version 2: version field 2, bytes
/// 44..52 reserved (zeros: no commit time), a version 2 key `<frame_no>-<taken>.snap`.
fn rewrite_snapshots_as_version_2(store_dir: &Path, namespace: &str) -> usize {
    let dir = store_dir.join(namespace).join("snapshots");
    let mut rewritten = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        bytes[44..52].fill(0);
        let checksum = crc32c::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
        let (frame_no, taken) = (u64_at(&bytes, 16), u64_at(&bytes, 32));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.join(format!("{frame_no:020}-{taken:013}.snap")), bytes).unwrap();
        rewritten += 1;
    }
    rewritten
}

/// Copies every object of namespace `from` into namespace `to` of the same `file://` store.
fn copy_namespace(store_dir: &Path, from: &str, to: &str) {
    for kind in ["segments", "snapshots"] {
        let (src, dst) = (store_dir.join(from).join(kind), store_dir.join(to).join(kind));
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// Restores `point` into a fresh file under `dir` and returns its bytes and the report.
fn restored(storage: &Storage, namespace: &str, dir: &Path, point: RestorePoint) -> (Vec<u8>, RestoreReport) {
    let out = dir.join("out.db");
    let report = restore_to(storage, namespace, &out, point).unwrap_or_else(|e| panic!("{namespace} {point:?}: {e}"));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(integrity(&out), "ok", "{namespace} {point:?}");
    std::fs::remove_file(&out).unwrap();
    (bytes, report)
}

#[test]
fn objects_of_format_version_2_still_restore() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let (commits, _) = build_history(dir.path(), &storage, "v", 8, 60);
    let outs = dir.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let out = outs.join("out.db");
    let last = commits.last().unwrap();
    let (before, report) = restored(&storage, "v", &outs, RestorePoint::Latest);
    assert_eq!(report.frame_no, last.frame_no);
    assert_same_pages("latest, before the rewrite", &before, &last.copy);
    copy_namespace(&store_dir, "v", "m");
    let segments = SegmentObject::all(&storage, &store_dir, "v").len();
    assert!(segments >= 8, "setup: several segment objects ({segments})");

    // The whole namespace as a build of format version 2 left it.
    assert_eq!(rewrite_as_version_2(&storage, &store_dir, "v", segments, true), segments);
    assert_eq!(rewrite_snapshots_as_version_2(&store_dir, "v"), 1, "setup: the base snapshot at frame 0");
    let objects = storage.list("v").unwrap();
    assert!(objects.iter().all(|o| match &o.kind {
        ObjectKind::Segment { commit_times, .. } => commit_times.is_none(),
        ObjectKind::Snapshot { commit_unix_ms, .. } => commit_unix_ms.is_none(),
        other => panic!("no pack or branch here: {other:?}"),
    }));
    assert_eq!(objects.len(), segments + 1, "the version 3 keys are gone");
    let (latest, report) = restored(&storage, "v", &outs, RestorePoint::Latest);
    assert_eq!(report.frame_no, last.frame_no);
    assert_eq!(report.commit_unix_ms, None, "version 2 records no commit time");
    assert_same_pages("latest of version 2, against the restore before the rewrite", &latest, &before);
    for at in [0, 17, 31, commits.len() - 2] {
        let (bytes, report) = restored(&storage, "v", &outs, RestorePoint::FrameNo(commits[at].frame_no));
        assert_eq!(report.frame_no, commits[at].frame_no);
        assert_same_pages(&format!("version 2, commit {at} by frame_no"), &bytes, &commits[at].copy);
        let between = RestorePoint::FrameNo(commits[at + 1].frame_no - 1);
        assert_eq!(restored(&storage, "v", &outs, between).1.frame_no, commits[at].frame_no, "{between:?}");
    }
    for at in [0, 30, commits.len() - 1] {
        let point = RestorePoint::Time(commits[at].wall_ms);
        assert_refused(&storage, "v", &out, point, &["were not recorded", "--frame-no"]);
    }

    // Mixed: the first objects of version 2, the rest version 3 continuing their chain.
    let k = segments / 2;
    let first_v3 = &SegmentObject::all(&storage, &store_dir, "m")[k];
    let first_v3_at = commits.iter().position(|c| c.frame_no >= first_v3.start_frame_no).unwrap();
    // Left with their own chain values, the version 3 objects no longer continue the
    // rewritten ones: restore refuses to mix the two histories.
    copy_namespace(&store_dir, "m", "unchained");
    rewrite_as_version_2(&storage, &store_dir, "unchained", k, false);
    let error = restore_to(&storage, "unchained", &out, RestorePoint::Latest).unwrap_err().to_string();
    assert!(error.contains("mixes histories"), "{error}");
    assert_nothing_at(&out, "a chain broken between versions");

    rewrite_as_version_2(&storage, &store_dir, "m", k, true);
    let objects = storage.list("m").unwrap();
    let untimed = objects.iter().filter(|o| matches!(o.kind, ObjectKind::Segment { commit_times: None, .. })).count();
    assert_eq!(untimed, k);
    let (latest, report) = restored(&storage, "m", &outs, RestorePoint::Latest);
    assert_eq!(report.frame_no, last.frame_no);
    assert!(report.commit_unix_ms.is_some_and(|t| t <= last.wall_ms), "{report:?}");
    assert_same_pages("latest of the mixed namespace", &latest, &before);
    for at in [3, first_v3_at - 1, first_v3_at, first_v3_at + 2, commits.len() - 3] {
        let (bytes, report) = restored(&storage, "m", &outs, RestorePoint::FrameNo(commits[at].frame_no));
        assert_eq!(report.frame_no, commits[at].frame_no);
        assert_same_pages(&format!("mixed, commit {at} by frame_no"), &bytes, &commits[at].copy);
    }
    // By time: from the first commit a version 3 object records on, exact (every commit
    // before it was made no later); before it, among the version 2 objects, refused.
    for at in [first_v3_at, first_v3_at + 1, first_v3_at + 4, commits.len() - 2] {
        let after_ms = commits[at - 1].wall_ms;
        restore_and_compare(
            &storage,
            "m",
            &outs,
            RestorePoint::Time(commits[at].wall_ms),
            &commits[at],
            after_ms,
            true,
        );
    }
    for at in [2, k, first_v3_at - 1] {
        let point = RestorePoint::Time(commits[at].wall_ms);
        assert_refused(&storage, "m", &out, point, &["were not recorded", "--frame-no"]);
    }
}

/// The same page-exact comparison after compaction: packs (the segments copied into larger
/// objects) and a snapshot of the latest state, then garbage collection with a window that
/// starts in the middle of the history. Every commit inside the window restores page by
/// page as its copy, by frame_no and by time; the one at the window's start too.
#[test]
fn every_commit_restores_exactly_across_compactions_page_by_page() {
    use libsql_wal::storage::compaction::{CompactionConfig, compact};
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let (commits, started_ms) = build_history(dir.path(), &storage, "c", 16, 120);
    let eager = |retention: Duration| CompactionConfig {
        retention,
        pack_bytes_min: 1,
        snapshot_bytes_min: 1,
        online: false,
        ..CompactionConfig::default()
    };
    let report = compact(&storage, "c", &eager(Duration::from_secs(86_400))).unwrap();
    assert!(!report.packs.is_empty() && !report.snapshots.is_empty(), "{report:?}");
    let objects = storage.list("c").unwrap();
    assert!(objects.iter().all(|o| !matches!(o.kind, ObjectKind::Segment { .. })), "every segment is in a pack");
    let outs = dir.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let mut restores = 0;
    let mut check = |from: usize| {
        for i in from..commits.len() {
            let after_ms = if i == 0 { started_ms } else { commits[i - 1].wall_ms };
            for point in [RestorePoint::FrameNo(commits[i].frame_no), RestorePoint::Time(commits[i].wall_ms)] {
                restore_and_compare(&storage, "c", &outs, point, &commits[i], after_ms, i % 40 == 0);
                restores += 1;
            }
        }
    };
    check(0);
    // The window now starts a little before commit 60 (100 ms: the step reads its own clock
    // a moment later): every commit from 60 on is promised.
    let start = commits[60].wall_ms;
    let retention = Duration::from_millis(now_ms() - start + 100);
    let report = compact(&storage, "c", &eager(retention)).unwrap();
    assert!(report.delete_failures.is_empty(), "{report:?}");
    check(60);
    eprintln!("{restores} page-exact restores across compactions");
    assert!(restores >= 300, "{restores}");
}
