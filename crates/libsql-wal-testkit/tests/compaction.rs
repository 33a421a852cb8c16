//! History in storage, end to end through the library: compaction (packs, snapshots) keeps
//! every commit of the window restorable exactly; garbage collection drops only what no
//! point needs; the latest restore reads about the database, not its history; branches share
//! nothing after their point; a database restored at an earlier point cannot fork its
//! namespace, and one restored at the latest point continues it. Each test runs against a
//! local directory and against the loopback S3 server (`s3s-fs`, which `.ci/test` installs).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::storage::branch;
use libsql_wal::storage::compaction::{CompactionConfig, compact};
use libsql_wal::storage::history::RestorePoint;
use libsql_wal::storage::layout::ObjectKind;
use libsql_wal::{
    LibsqlWalManager, RestoreOptions, RestoreReport, Storage, StorageConfig, WalConfig, flush_to_storage, inspect,
    open_connection, restore_with,
};
use libsql_wal_testkit::bench::loopback_s3::S3Server;

/// A store whose compaction runs only when a test asks (`compact`).
fn config() -> StorageConfig {
    StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        request_timeout: Duration::from_secs(10),
        compaction: CompactionConfig { online: false, ..CompactionConfig::default() },
        ..StorageConfig::default()
    }
}

/// Runs `test` with a local-directory store, then with the loopback S3 server.
fn on_every_store(test: impl Fn(&Storage, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let local = Storage::open_with(&format!("file://{}", dir.path().join("store").display()), &[], config()).unwrap();
    eprintln!("local directory:");
    test(&local, &dir.path().join("local"));
    let server = S3Server::start(&dir.path().join("s3"))
        .expect("s3s-fs starts (`cargo install s3s-fs@0.14.1 --features binary --locked`, .ci/test does it)");
    eprintln!("loopback S3:");
    test(&server.storage("history", config()).unwrap(), &dir.path().join("s3-work"));
}

fn manager(storage: &Storage, namespace: &str) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 8, segment_age_max: None, ..Default::default() };
    LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace(namespace).unwrap()
}

/// Compaction that packs and snapshots at once, keeping `retention`.
fn eager(retention: Duration) -> CompactionConfig {
    CompactionConfig {
        retention,
        pack_bytes_min: 1,
        snapshot_bytes_min: 1,
        online: false,
        ..CompactionConfig::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One commit as the test saw it: its frame_no, a time after it and before the next one,
/// and what the database held.
#[derive(Debug, Clone)]
struct Step {
    frame_no: u64,
    after_ms: u64,
    content: String,
}

fn content(conn: &Connection) -> String {
    let tables: String = conn
        .query_row("SELECT group_concat(name) FROM (SELECT name FROM sqlite_master ORDER BY name)", [], |r| {
            r.get::<_, Option<String>>(0)
        })
        .unwrap()
        .unwrap_or_default();
    let rows: String = conn
        .query_row(
            "SELECT count(*) || ':' || total(length(v)) || ':' || total(id * length(v)) || ':' || \
             ifnull(group_concat(tag), '') FROM t",
            [],
            |r| r.get(0),
        )
        .unwrap_or_default();
    format!("{tables}|{rows}")
}

/// `steps` commits of mixed shape tagged `tag` (inserts, updates, deletes), each recorded.
fn write_steps(db: &Path, manager: &LibsqlWalManager, tag: &str, steps: usize) -> Vec<Step> {
    let conn = open_connection(db, manager).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB)").unwrap();
    let mut seen = Vec::new();
    for i in 0..steps {
        let n = 1 + (i % 4) * 3;
        conn.execute_batch(&format!(
            "BEGIN;
             INSERT INTO t(tag, v) SELECT '{tag}{i}', zeroblob(300 + {i} * 41 % 2000) FROM
               (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c);
             UPDATE t SET v = zeroblob(length(v) + 7) WHERE id % 5 = {i} % 5;
             DELETE FROM t WHERE id % 11 = {i} % 11 AND id < (SELECT max(id) - 20 FROM t);
             COMMIT;"
        ))
        .unwrap();
        let frame_no = inspect(db, manager).unwrap().last_frame_no;
        std::thread::sleep(Duration::from_millis(3));
        seen.push(Step { frame_no, after_ms: now_ms(), content: content(&conn) });
        std::thread::sleep(Duration::from_millis(3));
    }
    seen
}

fn flush(db: &Path, manager: &LibsqlWalManager) {
    flush_to_storage(db, Some(Duration::from_secs(60)), manager).unwrap().expect("durable in time");
}

fn restore_to(
    storage: &Storage,
    namespace: &str,
    point: RestorePoint,
    out: &Path,
) -> libsql_wal::Result<RestoreReport> {
    let _ = std::fs::remove_file(out);
    let options = RestoreOptions { point, ..RestoreOptions::default() };
    restore_with(storage, namespace, out, &options, &mut |_, _| {})
}

fn content_of(path: &Path) -> String {
    let conn = Connection::open(path).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    content(&conn)
}

/// Every step restores exactly by frame_no and by time. Returns the restores made.
fn assert_steps_restore(storage: &Storage, namespace: &str, steps: &[Step], out: &Path) -> usize {
    for (i, step) in steps.iter().enumerate() {
        for point in [RestorePoint::FrameNo(step.frame_no), RestorePoint::Time(step.after_ms)] {
            let report =
                restore_to(storage, namespace, point, out).unwrap_or_else(|e| panic!("step {i} {point:?}: {e}"));
            assert_eq!(report.frame_no, step.frame_no, "step {i} {point:?}");
            assert_eq!(content_of(out), step.content, "step {i} {point:?}");
        }
    }
    steps.len() * 2
}

fn kinds(storage: &Storage, namespace: &str) -> (usize, usize, usize) {
    let objects = storage.list(namespace).unwrap();
    let count = |f: fn(&ObjectKind) -> bool| objects.iter().filter(|o| f(&o.kind)).count();
    (
        count(|k| matches!(k, ObjectKind::Segment { .. })),
        count(|k| matches!(k, ObjectKind::Pack { .. })),
        count(|k| matches!(k, ObjectKind::Snapshot { .. })),
    )
}

#[test]
fn every_commit_restores_exactly_across_compactions() {
    on_every_store(every_commit_restores_exactly_across_compactions_on);
}

fn every_commit_restores_exactly_across_compactions_on(storage: &Storage, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let storage = storage.clone();
    let (db, out) = (work.join("h.db"), work.join("out.db"));
    let manager = manager(&storage, "h");
    let mut steps = write_steps(&db, &manager, "a", 30);
    flush(&db, &manager);
    let report = compact(&storage, "h", &eager(Duration::from_secs(86_400))).unwrap();
    assert_eq!(report.snapshots.len(), 1, "{report:?}");
    assert!(!report.packs.is_empty(), "{report:?}");
    assert!(report.delete_failures.is_empty(), "{report:?}");
    let (segments, packs, _) = kinds(&storage, "h");
    assert!(packs >= 1 && segments <= 1, "segments were packed: {segments} segments, {packs} packs");
    let mut restores = assert_steps_restore(&storage, "h", &steps, &out);
    // More history, compacted again: old and new points alike.
    steps.extend(write_steps(&db, &manager, "b", 30));
    flush(&db, &manager);
    let report = compact(&storage, "h", &eager(Duration::from_secs(86_400))).unwrap();
    assert!(report.delete_failures.is_empty(), "{report:?}");
    restores += assert_steps_restore(&storage, "h", &steps, &out);
    // Points inside objects, between two commits, land on the earlier one.
    for pair in steps.windows(2).filter(|w| w[1].frame_no > w[0].frame_no + 1).take(10) {
        let report = restore_to(&storage, "h", RestorePoint::FrameNo(pair[1].frame_no - 1), &out).unwrap();
        assert_eq!(report.frame_no, pair[0].frame_no);
        assert_eq!(content_of(&out), pair[0].content);
        restores += 1;
    }
    let latest = restore_to(&storage, "h", RestorePoint::Latest, &out).unwrap();
    assert_eq!(latest.objects, 1, "the latest state is one snapshot: {:?}", latest.keys);
    eprintln!("{restores} restores exact across two compactions");
}

#[test]
fn retention_keeps_the_window_and_deletes_only_older_history() {
    on_every_store(retention_keeps_the_window_and_deletes_only_older_history_on);
}

fn retention_keeps_the_window_and_deletes_only_older_history_on(storage: &Storage, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let storage = storage.clone();
    let (db, out) = (work.join("r.db"), work.join("out.db"));
    let manager = manager(&storage, "r");
    let old = write_steps(&db, &manager, "old", 20);
    flush(&db, &manager);
    // A snapshot at the end of the old history: the base the window will start from.
    compact(&storage, "r", &eager(Duration::from_secs(86_400))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let window_start = now_ms();
    std::thread::sleep(Duration::from_millis(300));
    let new = write_steps(&db, &manager, "new", 20);
    flush(&db, &manager);
    // Snapshot and packs first, keeping everything: the step that collects is then quick,
    // and its window (which starts `retention` before its own clock reading) still starts
    // between the old history and the new one.
    compact(&storage, "r", &eager(Duration::from_secs(86_400))).unwrap();
    let before: Vec<String> = storage.list("r").unwrap().into_iter().map(|o| o.key).collect();
    let retention = Duration::from_millis(now_ms() - window_start + 150);
    let report = compact(&storage, "r", &eager(retention)).unwrap();
    assert!(!report.deleted.is_empty(), "older history is deleted: {report:?}");
    assert!(report.delete_failures.is_empty(), "{report:?}");
    for key in &report.deleted {
        assert!(before.contains(key), "only listed objects are deleted: {key}");
    }
    // The window: the state at its start (the last old commit) and every commit after it.
    let at_start = restore_to(&storage, "r", RestorePoint::Time(window_start), &out).unwrap();
    assert_eq!(at_start.frame_no, old.last().unwrap().frame_no);
    assert_eq!(content_of(&out), old.last().unwrap().content);
    assert_steps_restore(&storage, "r", &new, &out);
    // Older points were not promised, and are refused with the window named.
    let early = restore_to(&storage, "r", RestorePoint::FrameNo(old[2].frame_no), &out).unwrap_err().to_string();
    assert!(early.contains("before the window") && early.contains("restorable window"), "{early}");
    assert!(!out.exists(), "a refused restore leaves nothing");
    // A second step with the same window deletes nothing more, and it still restores.
    // (The window still starts at `window_start`: the retention grows with the clock.)
    let again = compact(&storage, "r", &eager(Duration::from_millis(now_ms() - window_start + 150))).unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");
    assert_steps_restore(&storage, "r", &new[new.len() - 3..], &out);
    assert!(again.delete_failures.is_empty());
}

#[test]
fn the_latest_restore_reads_about_the_database_not_its_history() {
    on_every_store(the_latest_restore_reads_about_the_database_not_its_history_on);
}

fn the_latest_restore_reads_about_the_database_not_its_history_on(storage: &Storage, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let storage = storage.clone();
    let out = work.join("out.db");
    let mut bytes = Vec::new();
    for (namespace, rewrites) in [("once", 1), ("hundred", 100)] {
        let db = work.join(format!("{namespace}.db"));
        let manager = manager(&storage, namespace);
        let conn = open_connection(&db, &manager).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB);
             INSERT INTO t(tag, v) SELECT 'x', zeroblob(3000) FROM
               (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 64) SELECT x FROM c);",
        )
        .unwrap();
        for round in 1..rewrites {
            conn.execute(&format!("UPDATE t SET tag = 'r{round}', v = zeroblob(3000 + {round} % 7)"), []).unwrap();
        }
        let expected = content(&conn);
        drop(conn);
        flush(&db, &manager);
        let history: u64 = storage.list(namespace).unwrap().iter().map(|o| o.size).sum();
        compact(&storage, namespace, &eager(Duration::from_secs(86_400))).unwrap();
        let report = restore_to(&storage, namespace, RestorePoint::Latest, &out).unwrap();
        assert_eq!(content_of(&out), expected);
        eprintln!("{namespace}: history {history} bytes, latest restore reads {} bytes", report.bytes);
        bytes.push((history, report.bytes));
    }
    let (once, hundred) = (bytes[0], bytes[1]);
    assert!(hundred.0 > 50 * once.0, "the second history is much longer: {bytes:?}");
    assert!(hundred.1 as f64 <= 1.5 * once.1 as f64, "100x the history, at most 1.5x the bytes read: {bytes:?}");
}

#[test]
fn branches_share_nothing_after_their_point_and_keep_it_restorable() {
    on_every_store(branches_share_nothing_after_their_point_and_keep_it_restorable_on);
}

fn branches_share_nothing_after_their_point_and_keep_it_restorable_on(storage: &Storage, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let storage = storage.clone();
    let (db, out) = (work.join("p.db"), work.join("out.db"));
    let parent = manager(&storage, "p");
    let steps = write_steps(&db, &parent, "p", 16);
    flush(&db, &parent);
    let point = &steps[7];
    let made = branch::create(&storage, "p", RestorePoint::FrameNo(point.frame_no), "b").unwrap();
    assert_eq!(made.frame_no, point.frame_no);
    let by_time = branch::create(&storage, "p", RestorePoint::Time(steps[3].after_ms), "bt").unwrap();
    assert_eq!(by_time.frame_no, steps[3].frame_no);
    assert!(branch::create(&storage, "p", RestorePoint::Latest, "b").is_err(), "b is not empty");
    // The branch restores to its point; written through a copy opened with its namespace.
    let copy = work.join("b.db");
    restore_to(&storage, "b", RestorePoint::Latest, &copy).unwrap();
    assert_eq!(content_of(&copy), point.content);
    let child = manager(&storage, "b");
    let branch_steps = write_steps(&copy, &child, "B", 6);
    flush(&copy, &child);
    let parent_steps = write_steps(&db, &parent, "P", 6);
    flush(&db, &parent);
    restore_to(&storage, "b", RestorePoint::Latest, &out).unwrap();
    let b = content_of(&out);
    assert_eq!(b, branch_steps.last().unwrap().content);
    assert!(b.contains("B5") && !b.contains("P0"), "{b}");
    restore_to(&storage, "p", RestorePoint::Latest, &out).unwrap();
    let p = content_of(&out);
    assert_eq!(p, parent_steps.last().unwrap().content);
    assert!(p.contains("P5") && !p.contains("B0"), "{p}");
    // The branch's own points restore too, and its point by time.
    assert_steps_restore(&storage, "b", &branch_steps, &out);
    let at_point = restore_to(&storage, "b", RestorePoint::FrameNo(point.frame_no), &out).unwrap();
    assert_eq!((at_point.frame_no, content_of(&out)), (point.frame_no, point.content.clone()));
    // The parent's garbage collection, with nothing but the latest in its window, keeps
    // what the branches need.
    std::thread::sleep(Duration::from_millis(20));
    let report = compact(&storage, "p", &eager(Duration::from_millis(1))).unwrap();
    assert_eq!(report.branches, 2, "{report:?}");
    restore_to(&storage, "b", RestorePoint::Latest, &out).unwrap();
    assert_eq!(content_of(&out), b);
    restore_to(&storage, "bt", RestorePoint::Latest, &out).unwrap();
    assert_eq!(content_of(&out), steps[3].content);
    // The parent cannot go while branches need it; once they are gone, its garbage goes.
    let refused = branch::remove(&storage, "p").unwrap_err().to_string();
    assert!(refused.contains("branches") && refused.contains('b'), "{refused}");
    let held = storage.list("p").unwrap().len();
    branch::remove(&storage, "b").unwrap();
    branch::remove(&storage, "bt").unwrap();
    assert!(storage.list("b").unwrap().is_empty());
    let report = compact(&storage, "p", &eager(Duration::from_millis(1))).unwrap();
    assert_eq!(report.branches, 0);
    assert!(storage.list("p").unwrap().len() < held, "{report:?}");
    restore_to(&storage, "p", RestorePoint::Latest, &out).unwrap();
    assert_eq!(content_of(&out), p);
}

#[test]
fn a_copy_restored_at_an_earlier_point_cannot_fork_its_namespace_but_the_latest_continues_it() {
    on_every_store(a_copy_restored_at_an_earlier_point_cannot_fork_its_namespace_but_the_latest_continues_it_on);
}

fn a_copy_restored_at_an_earlier_point_cannot_fork_its_namespace_but_the_latest_continues_it_on(
    storage: &Storage,
    work: &Path,
) {
    std::fs::create_dir_all(work).unwrap();
    let storage = storage.clone();
    let db = work.join("f.db");
    let original = manager(&storage, "f");
    let steps = write_steps(&db, &original, "f", 12);
    flush(&db, &original);
    // An earlier point, opened with the same namespace: refused, the way out named.
    let early = work.join("early.db");
    restore_to(&storage, "f", RestorePoint::FrameNo(steps[4].frame_no), &early).unwrap();
    let refused = open_connection(&early, &manager(&storage, "f")).map(|_| ()).unwrap_err().to_string();
    assert!(refused.contains("fork") && refused.contains("storage branch"), "{refused}");
    assert_eq!(content_of(&early), steps[4].content, "nothing was written");
    // As a branch it opens and writes.
    branch::create(&storage, "f", RestorePoint::FrameNo(steps[4].frame_no), "f2").unwrap();
    let forked = write_steps(&early, &manager(&storage, "f2"), "g", 2);
    flush(&early, &manager(&storage, "f2"));
    restore_to(&storage, "f2", RestorePoint::Latest, &work.join("f2.db")).unwrap();
    assert_eq!(content_of(&work.join("f2.db")), forked.last().unwrap().content);
    // The latest point continues the namespace: frame numbers go on, nothing is uploaded
    // again, restores see the new commits.
    let latest = work.join("latest.db");
    let report = restore_to(&storage, "f", RestorePoint::Latest, &latest).unwrap();
    std::fs::remove_file(&db).ok();
    let _ = std::fs::remove_dir_all(work.join("f.db-wal"));
    let before: Vec<String> = storage.list("f").unwrap().into_iter().map(|o| o.key).collect();
    let copy = manager(&storage, "f");
    let more = write_steps(&latest, &copy, "h", 3);
    flush(&latest, &copy);
    assert!(more[0].frame_no > report.frame_no, "frame numbers go on past {}", report.frame_no);
    let after = storage.list("f").unwrap();
    for key in &before {
        assert!(after.iter().any(|o| &o.key == key), "{key} kept");
    }
    let new: Vec<_> = after.iter().filter(|o| !before.contains(&o.key)).collect();
    assert!(!new.is_empty() && new.iter().all(|o| o.first_frame_no() > report.frame_no), "only new frames: {new:?}");
    let out = work.join("out.db");
    restore_to(&storage, "f", RestorePoint::Latest, &out).unwrap();
    assert_eq!(content_of(&out), more.last().unwrap().content);
}

#[test]
fn a_failed_delete_is_reported_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = libsql_wal_testkit::object_stores::InstrumentedStore::new();
    store.fail_deletes(true);
    let storage = Storage::with_object_store("deletes-fail://", store, config());
    let db = dir.path().join("d.db");
    let manager = manager(&storage, "d");
    let steps = write_steps(&db, &manager, "d", 12);
    flush(&db, &manager);
    std::thread::sleep(Duration::from_millis(20));
    let before = storage.list("d").unwrap().len();
    let report = compact(&storage, "d", &eager(Duration::from_millis(1))).unwrap();
    assert!(!report.delete_failures.is_empty(), "{report:?}");
    assert!(report.delete_failures.iter().all(|f| f.contains("not allowed")), "{report:?}");
    assert!(report.deleted.is_empty(), "nothing counted as deleted: {report:?}");
    assert!(storage.list("d").unwrap().len() > before, "every object is still there, and the new ones");
    let out = dir.path().join("out.db");
    assert_steps_restore(&storage, "d", &steps, &out);
}
