//! One history per namespace: every log carries a lineage, and frame checksums chain across
//! segment and object boundaries, so storage never takes (and restore never applies) frames
//! that do not continue the namespace's history, whatever their frame numbers.
//!
//! - a restored copy continues the namespace; the original, written again, diverges: it keeps
//!   its commits locally, uploads nothing, says why, and restore gives the copy's history;
//! - a copy at the very frame where the namespace ends, but with other frames before it, is
//!   told apart by the chain value its checkpoint mark carries;
//! - a store that mixes two histories (objects put there by hand) is refused by restore,
//!   naming the objects; a gap is an error unless the prefix is asked for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::storage::layout::ObjectKind;
use libsql_wal::{
    LibsqlWalManager, RestoreOptions, Storage, StorageConfig, WalConfig, flush_to_storage, inspect, open_connection,
    restore, restore_with,
};

fn local_store(dir: &Path) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    };
    Storage::open_with(&format!("file://{}", dir.display()), &[], config).unwrap()
}

fn manager(storage: Option<&Storage>, namespace: &str) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 8, segment_age_max: None, ..Default::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config);
    match storage {
        Some(storage) => manager.with_storage(storage.clone()).with_namespace(namespace).unwrap(),
        None => manager,
    }
}

/// Commits `n` rows tagged `tag`, one transaction each.
fn write(db: &Path, manager: &LibsqlWalManager, tag: &str, n: usize) {
    let conn = open_connection(db, manager).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB)").unwrap();
    for _ in 0..n {
        conn.execute("INSERT INTO t(tag, v) VALUES (?1, randomblob(1500))", [tag]).unwrap();
    }
}

/// Rows per tag, as stock SQLite reads the file.
fn tags(db: &Path) -> Vec<(String, i64)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT tag, count(*) FROM t GROUP BY tag ORDER BY tag").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

fn restore_all(storage: &Storage, namespace: &str, out: &Path) -> libsql_wal::Result<libsql_wal::RestoreReport> {
    restore(storage, namespace, out, &mut |_, _| {})
}

fn flush(db: &Path, manager: &LibsqlWalManager) -> libsql_wal::Result<Option<u64>> {
    flush_to_storage(db, Some(Duration::from_secs(60)), manager)
}

fn keys(storage: &Storage, namespace: &str) -> Vec<String> {
    storage.list(namespace).unwrap().into_iter().map(|o| o.key).collect()
}

fn tagged(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
    rows.iter().map(|&(t, n)| (t.to_string(), n)).collect()
}

#[test]
fn a_restored_copy_continues_the_namespace_and_the_original_diverges_without_mixing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let with_storage = manager(Some(&storage), "a");
    let (a, copy) = (dir.path().join("a.db"), dir.path().join("copy.db"));
    write(&a, &with_storage, "o", 20);
    flush(&a, &with_storage).unwrap().unwrap();

    // The restored copy carries the namespace's lineage and chain: it continues it.
    restore_all(&storage, "a", &copy).unwrap();
    write(&copy, &with_storage, "copy", 10);
    let copy_end = flush(&copy, &with_storage).unwrap().expect("the copy continues the namespace");
    let stored = keys(&storage, "a");

    // The original writes again: first behind the namespace's end, then past it. Neither is
    // uploaded; the flush fails at once with the reason, and the log keeps every commit.
    write(&a, &with_storage, "a1", 3);
    let error = flush(&a, &with_storage).unwrap_err().to_string();
    assert!(error.contains("another copy continued the namespace"), "{error}");
    write(&a, &with_storage, "a2", 30);
    // Held open, so that `inspect` sees the log the flush found diverged.
    let held = open_connection(&a, &with_storage).unwrap();
    let error = flush(&a, &with_storage).unwrap_err().to_string();
    assert!(error.contains("diverged"), "{error}");
    let info = inspect(&a, &with_storage).unwrap();
    drop(held);
    assert!(info.last_frame_no > copy_end, "the original is now past the namespace's end");
    assert!(info.durability.unwrap().diverged.is_some(), "info says why");
    assert_eq!(keys(&storage, "a"), stored, "nothing of the diverged original reached the namespace");

    // Restore gives the copy's history alone; the original still holds all of its own.
    let restored = dir.path().join("restored.db");
    let report = restore_all(&storage, "a", &restored).unwrap();
    assert_eq!(report.frame_no, copy_end);
    assert_eq!(tags(&restored), tagged(&[("copy", 10), ("o", 20)]));
    let conn = open_connection(&a, &manager(None, "a")).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM t WHERE tag IN ('a1', 'a2')", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 33, "the diverged original lost none of its commits");
}

#[test]
fn a_copy_ending_where_the_namespace_ends_but_with_other_frames_is_told_apart_by_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let with_storage = manager(Some(&storage), "a");
    let (a, copy) = (dir.path().join("a.db"), dir.path().join("copy.db"));
    write(&a, &with_storage, "o", 10);
    flush(&a, &with_storage).unwrap().unwrap();
    restore_all(&storage, "a", &copy).unwrap();

    // The copy writes without storage and is checkpointed: no log left, only its mark. The
    // original writes the same amount to the namespace: both end at the same frame_no.
    write(&copy, &manager(None, "a"), "copy", 5);
    write(&a, &with_storage, "orig", 5);
    let end = flush(&a, &with_storage).unwrap().unwrap();
    assert!(!PathBuf::from(format!("{}-wal", copy.display())).exists(), "the copy's log was emptied");
    let copy_frame_no = inspect(&copy, &manager(None, "a")).unwrap().last_frame_no;
    assert_eq!(copy_frame_no, end, "setup: both histories end at the same frame_no");

    let stored = keys(&storage, "a");
    write(&copy, &with_storage, "copy2", 3);
    let error = flush(&copy, &with_storage).unwrap_err().to_string();
    assert!(error.contains("is not this database's frame"), "{error}");
    assert_eq!(keys(&storage, "a"), stored, "the copy uploaded nothing");
    let restored = dir.path().join("restored.db");
    restore_all(&storage, "a", &restored).unwrap();
    assert_eq!(tags(&restored), tagged(&[("o", 10), ("orig", 5)]));
}

/// Copies a stored object (its key) into namespace `to`, under its own file name.
fn copy_object(store_dir: &Path, to: &str, key: &str) {
    let name = Path::new(key).file_name().unwrap();
    std::fs::copy(store_dir.join(key), store_dir.join(to).join("segments").join(name)).unwrap();
}

#[test]
fn restore_refuses_a_chain_that_mixes_histories_naming_the_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    write(&a, &manager(Some(&storage), "a"), "a", 10);
    flush(&a, &manager(Some(&storage), "a")).unwrap().unwrap();
    // Another database, further along: its segments overlap a's frame numbers and reach
    // further, so the chain by frame numbers alone would take one of them.
    write(&b, &manager(Some(&storage), "b"), "b", 30);
    flush(&b, &manager(Some(&storage), "b")).unwrap().unwrap();
    let a_end = storage.chain("a").unwrap().end_frame_no;
    let foreign = storage
        .list("b")
        .unwrap()
        .into_iter()
        .find(|o| {
            matches!(o.kind, ObjectKind::Segment { start_frame_no, end_frame_no, .. }
            if start_frame_no <= a_end + 1 && end_frame_no > a_end)
        })
        .expect("a segment of b that overlaps a's end");
    copy_object(&store_dir, "a", &foreign.key);

    let out = dir.path().join("out.db");
    let error = restore_all(&storage, "a", &out).unwrap_err().to_string();
    assert!(error.contains("mixes histories"), "{error}");
    let name = Path::new(&foreign.key).file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.contains(&name), "the error names the foreign object: {error}");
    assert!(!out.exists(), "nothing at OUT after a refused restore");
}

#[test]
fn a_gap_in_the_chain_is_an_error_unless_the_prefix_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let db = dir.path().join("g.db");
    write(&db, &manager(Some(&storage), "g"), "g", 40);
    flush(&db, &manager(Some(&storage), "g")).unwrap().unwrap();
    let segments: Vec<_> =
        storage.list("g").unwrap().into_iter().filter(|o| matches!(o.kind, ObjectKind::Segment { .. })).collect();
    assert!(segments.len() >= 3, "setup: several segments stored");
    let middle = &segments[segments.len() / 2];
    std::fs::remove_file(store_dir.join(&middle.key)).unwrap();

    let out = dir.path().join("out.db");
    let error = restore_all(&storage, "g", &out).unwrap_err().to_string();
    assert!(error.contains("gap"), "{error}");
    assert!(!out.exists(), "nothing at OUT when the chain has a gap");
    let options = RestoreOptions { allow_prefix: true, ..RestoreOptions::default() };
    let report = restore_with(&storage, "g", &out, &options, &mut |_, _| {}).unwrap();
    let ObjectKind::Segment { start_frame_no, .. } = middle.kind else { unreachable!() };
    assert_eq!(report.frame_no, start_frame_no - 1, "the prefix stops right before the gap");
    assert!(report.stranded > 0);
    let conn = Connection::open(&out).unwrap();
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");

    // With the first segment gone there is no prefix: refused, even when asked for one.
    let first = segments.iter().find(|o| matches!(o.kind, ObjectKind::Segment { start_frame_no: 1, .. })).unwrap();
    std::fs::remove_file(store_dir.join(&first.key)).unwrap();
    let none = dir.path().join("none.db");
    let error = restore_with(&storage, "g", &none, &options, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("nothing before the gap"), "{error}");
    assert!(!none.exists());
}

#[test]
fn concurrent_restores_to_one_path_never_share_scratch_space() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("c.db");
    write(&db, &manager(Some(&storage), "c"), "c", 30);
    flush(&db, &manager(Some(&storage), "c")).unwrap().unwrap();
    let out = dir.path().join("out.db");
    let results: Vec<libsql_wal::Result<libsql_wal::RestoreReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| restore_all(&storage, "c", &out))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    assert!(succeeded >= 1, "{results:?}");
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        let message = error.to_string();
        assert!(message.contains("exists") || message.contains("appeared"), "blames something else: {message}");
    }
    assert_eq!(tags(&out), tagged(&[("c", 30)]));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "scratch directories left behind: {leftovers:?}");
}

#[test]
fn restore_refuses_two_objects_for_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let db = dir.path().join("o.db");
    write(&db, &manager(Some(&storage), "o"), "o", 20);
    flush(&db, &manager(Some(&storage), "o")).unwrap().unwrap();
    // A second object for the frames of the last segment, under another key (what two
    // copies uploading at the same moment leave).
    let last = storage.chain("o").unwrap().segments.pop().unwrap();
    let ObjectKind::Segment { start_frame_no, end_frame_no, commit_times: Some(times) } = last.kind else {
        unreachable!()
    };
    let other_times = libsql_wal::storage::layout::CommitTimes { last: times.last + 1, ..times };
    let twin = libsql_wal::storage::layout::segment_key("o", start_frame_no, end_frame_no, other_times);
    std::fs::copy(store_dir.join(&last.key), store_dir.join(&twin)).unwrap();
    let out = dir.path().join("out.db");
    let error = restore_all(&storage, "o", &out).unwrap_err().to_string();
    assert!(error.contains("mixes histories"), "{error}");
    let name = |key: &str| Path::new(key).file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.contains(&name(&twin)) && error.contains(&name(&last.key)), "both objects named: {error}");
    assert!(!out.exists());
    // And a writer that finds them uploads nothing more there.
    write(&db, &manager(Some(&storage), "o"), "o2", 3);
    let error = flush(&db, &manager(Some(&storage), "o")).unwrap_err().to_string();
    assert!(error.contains("two histories"), "{error}");
}

/// Two restored copies committing to one namespace at the same moment, again and again:
/// whatever the interleaving, a commit whose flush succeeded is in what restore gives (or
/// restore refuses the namespace); never a silent loss.
#[test]
fn copies_racing_one_namespace_never_both_succeed_silently() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let base = dir.path().join("base.db");
    write(&base, &manager(Some(&storage), "race"), "base", 3);
    flush(&base, &manager(Some(&storage), "race")).unwrap().unwrap();
    for round in 0..12 {
        let copies = [dir.path().join(format!("p{round}.db")), dir.path().join(format!("q{round}.db"))];
        restore_all(&storage, "race", &copies[0]).unwrap();
        std::fs::copy(&copies[0], &copies[1]).unwrap();
        let tags = [format!("p{round}"), format!("q{round}")];
        let ok: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let (db, tag, storage) = (&copies[i], &tags[i], &storage);
                    scope.spawn(move || {
                        let manager = manager(Some(storage), "race");
                        write(db, &manager, tag, 1);
                        flush(db, &manager).is_ok_and(|d| d.is_some())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let out = dir.path().join(format!("check{round}.db"));
        match restore_all(&storage, "race", &out) {
            Ok(_) => {
                let present = self::tags(&out);
                for (i, tag) in tags.iter().enumerate() {
                    let there = present.iter().any(|(t, _)| t == tag);
                    assert!(!ok[i] || there, "round {round}: {tag}'s flush succeeded but restore lacks it");
                }
                assert!(!(ok[0] && ok[1]), "round {round}: both copies were told their commit is durable");
            }
            Err(e) => {
                // Two histories left in the namespace: refused, not mixed. Stop racing there.
                assert!(e.to_string().contains("mixes histories"), "{e}");
                break;
            }
        }
    }
}
