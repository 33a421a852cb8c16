//! A replica's log is a copy of its primary's, frame for frame: started from an exported
//! image, it applies the primary's transactions whole, each checked to end at the primary's
//! chain value, and readers on it only ever see whole transactions. A position the primary
//! cannot vouch for (another history, frames it no longer holds) is refused, never served;
//! frames of another history are refused by the replica before anything is published.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use libsql_sys::Connection as WalConnection;
use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::{
    CheckpointMode, Error, Follower, FramesAfter, LibsqlWalManager, Position, UpstreamInfo, WalConfig, apply_frames,
    checkpoint, export_image, follow, inspect_read_only, install_image, log_position, open_connection,
    replace_with_image, replica_position,
};

fn manager() -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 32, segment_age_max: None, ..Default::default() };
    LibsqlWalManager::new(StdIo::shared(), config)
}

/// A replica of `primary` at `replica`, from an image of its last commit.
fn bootstrap(primary: &Path, replica: &Path, manager: &LibsqlWalManager) -> Position {
    let image = replica.with_extension("image");
    let mut bytes = Vec::new();
    let at = export_image(primary, manager, &mut |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })
    .unwrap()
    .expect("the primary has pages");
    std::fs::write(&image, &bytes).unwrap();
    assert_eq!(install_image(&image, replica, manager).unwrap(), at);
    assert_eq!(replica_position(replica, manager).unwrap(), at, "the replica starts where the image was taken");
    at
}

/// Applies everything the primary has after the replica's position; returns the position.
fn catch_up(primary: &Path, replica: &Path, manager: &LibsqlWalManager) -> Position {
    let at = replica_position(replica, manager).unwrap();
    let follower = follow(primary, manager, at.frame_no).unwrap();
    catch_up_with(&follower, replica, manager)
}

/// As [`catch_up`], through a follower registered all along (the primary keeps its frames).
fn catch_up_with(follower: &Follower, replica: &Path, manager: &LibsqlWalManager) -> Position {
    let mut at = replica_position(replica, manager).unwrap();
    loop {
        match follower.frames_after(at, 64 << 10).unwrap() {
            FramesAfter::Frames { frames, end } => {
                at = apply_frames(replica, manager, &frames).unwrap();
                assert_eq!(at, end);
                follower.advance(end.frame_no);
            }
            FramesAfter::UpToDate => return at,
            FramesAfter::Unservable(why) => panic!("unservable: {why}"),
        }
    }
}

fn rows(db: &Path, manager: &LibsqlWalManager) -> Vec<(i64, i64)> {
    let conn = open_connection(db, manager).unwrap();
    let mut stmt = conn.prepare("SELECT id, bal FROM acct ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

fn setup(primary: &Path, manager: &LibsqlWalManager) -> WalConnection<libsql_wal::LibsqlWal> {
    let conn = open_connection(primary, manager).unwrap();
    conn.execute_batch(
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100)
         INSERT INTO acct SELECT i, 100, randomblob(300) FROM c;",
    )
    .unwrap();
    conn
}

fn transfer(conn: &WalConnection<libsql_wal::LibsqlWal>, i: i64) {
    let (a, b) = (i * 7 % 100 + 1, i * 13 % 100 + 1);
    conn.execute_batch(&format!(
        "BEGIN; UPDATE acct SET bal = bal - 3, pad = randomblob(300) WHERE id = {a};
         UPDATE acct SET bal = bal + 3 WHERE id = {b}; COMMIT;"
    ))
    .unwrap();
}

#[test]
fn a_replica_holds_the_primarys_frames_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let manager = manager();
    let conn = setup(&primary, &manager);
    bootstrap(&primary, &replica, &manager);
    for i in 0..200 {
        transfer(&conn, i);
    }
    let at = catch_up(&primary, &replica, &manager);
    assert_eq!(at, log_position(&primary, &manager).unwrap(), "same frame, same chain value");
    assert_eq!(rows(&replica, &manager), rows(&primary, &manager));
    // A replica closed and reopened resumes from its own log.
    for i in 200..260 {
        transfer(&conn, i);
    }
    assert_eq!(catch_up(&primary, &replica, &manager), log_position(&primary, &manager).unwrap());
    assert_eq!(rows(&replica, &manager), rows(&primary, &manager));
    let check: String =
        Connection::open(&replica).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn readers_on_a_replica_see_whole_transactions_only() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let manager = manager();
    let conn = setup(&primary, &manager);
    bootstrap(&primary, &replica, &manager);
    let done = AtomicBool::new(false);
    // Registered before any write: the primary keeps every frame after it.
    let follower = follow(&primary, &manager, replica_position(&replica, &manager).unwrap().frame_no).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for i in 0..400 {
                transfer(&conn, i);
            }
        });
        scope.spawn(|| {
            let reader = open_connection(&replica, &manager).unwrap();
            while !done.load(Ordering::SeqCst) {
                let (sum, count): (i64, i64) = reader
                    .query_row("SELECT sum(bal), count(*) FROM acct", [], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap();
                assert_eq!((sum, count), (10_000, 100), "a reader saw part of a transaction");
            }
        });
        for _ in 0..50 {
            catch_up_with(&follower, &replica, &manager);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        done.store(true, Ordering::SeqCst);
    });
    catch_up(&primary, &replica, &manager);
    assert_eq!(rows(&replica, &manager), rows(&primary, &manager));
}

#[test]
fn positions_the_primary_cannot_vouch_for_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("p.db");
    let manager = manager();
    let conn = setup(&primary, &manager);
    for i in 0..20 {
        transfer(&conn, i);
    }
    let at = log_position(&primary, &manager).unwrap();
    let follower = follow(&primary, &manager, 0).unwrap();
    let unservable = |from: Position| match follower.frames_after(from, 1 << 20).unwrap() {
        FramesAfter::Unservable(why) => why,
        other => panic!("served {from:?}: {other:?}"),
    };
    assert!(unservable(Position { lineage: at.lineage ^ 1, ..at }).contains("another history"));
    assert!(unservable(Position { chain: at.chain ^ 1, ..at }).contains("differ"));
    assert!(unservable(Position { frame_no: at.frame_no + 5, ..at }).contains("past this database's last commit"));
    assert!(matches!(follower.frames_after(at, 1 << 20).unwrap(), FramesAfter::UpToDate));
}

#[test]
fn a_checkpoint_keeps_the_frames_a_streaming_replica_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("p.db");
    let manager = manager();
    let conn = setup(&primary, &manager);
    let at = log_position(&primary, &manager).unwrap();
    let follower = follow(&primary, &manager, at.frame_no).unwrap();
    for i in 0..100 {
        transfer(&conn, i);
    }
    checkpoint(&primary, CheckpointMode::Passive, &manager).unwrap();
    let FramesAfter::Frames { end, .. } = follower.frames_after(at, usize::MAX).unwrap() else {
        panic!("the frames after the replica's position were checkpointed away")
    };
    assert_eq!(end, log_position(&primary, &manager).unwrap());
    // Once it has moved on, they may go.
    follower.advance(end.frame_no);
    drop(follower);
    checkpoint(&primary, CheckpointMode::Passive, &manager).unwrap();
    let late = follow(&primary, &manager, at.frame_no).unwrap();
    assert!(matches!(late.frames_after(at, 1 << 20).unwrap(), FramesAfter::Unservable(_)));
}

#[test]
fn a_replica_never_continues_into_another_history() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, other, replica) = (dir.path().join("p.db"), dir.path().join("o.db"), dir.path().join("r.db"));
    let manager = manager();
    let conn = setup(&primary, &manager);
    let at = bootstrap(&primary, &replica, &manager);
    // Another database, as a primary replaced by another one would serve it.
    let other_conn = setup(&other, &manager);
    for i in 0..30 {
        transfer(&other_conn, i);
    }
    let follower = follow(&other, &manager, 0).unwrap();
    let from = replica_position(&replica, &manager).unwrap();
    assert!(matches!(follower.frames_after(from, 1 << 20).unwrap(), FramesAfter::Unservable(_)));
    // Frames that do not follow the replica's log, or a transaction cut short: refused,
    // nothing published.
    transfer(&conn, 1);
    transfer(&conn, 2);
    let follower = follow(&primary, &manager, at.frame_no).unwrap();
    let FramesAfter::Frames { frames, .. } = follower.frames_after(at, 1 << 20).unwrap() else { panic!() };
    let before = rows(&replica, &manager);
    let first_txn_frames =
        frames.chunks_exact(4128).position(|f| u32::from_le_bytes(f[4..8].try_into().unwrap()) != 0).unwrap() + 1;
    let skipping = &frames[first_txn_frames * 4128..];
    match apply_frames(&replica, &manager, skipping) {
        Err(Error::Diverged { reason, .. }) => assert!(reason.contains("does not follow"), "{reason}"),
        other => panic!("applied: {other:?}"),
    }
    let cut = &frames[..frames.len() - 4128];
    let cut = &cut[first_txn_frames * 4128..];
    assert!(matches!(apply_frames(&replica, &manager, cut), Err(Error::Diverged { .. })));
    assert_eq!(replica_position(&replica, &manager).unwrap(), at);
    assert_eq!(rows(&replica, &manager), before);
    assert_eq!(apply_frames(&replica, &manager, &frames).unwrap(), log_position(&primary, &manager).unwrap());
}

/// Transactions applied together are one commit on the replica: a power cut that loses the
/// end of the group (its frames written but the log's sync not done) leaves the log at the
/// group's start, which the upstream record's other slot names, never at a commit inside
/// the group that neither slot names (the replica would then not know where it is).
#[test]
fn a_group_of_applied_transactions_survives_a_cut_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let manager = manager();
    let conn = setup(&primary, &manager);
    let start = bootstrap(&primary, &replica, &manager);
    let follower = follow(&primary, &manager, start.frame_no).unwrap();
    for i in 0..3 {
        transfer(&conn, i);
    }
    let before = catch_up_with(&follower, &replica, &manager);
    for i in 3..20 {
        transfer(&conn, i);
    }
    let FramesAfter::Frames { frames, end } = follower.frames_after(before, 64 << 20).unwrap() else {
        panic!("frames expected")
    };
    assert!(frames.len() / 4128 > 20, "the group holds many transactions");
    // The group applied in one call, the replica kept open (its log and record as they are
    // on disk), copied as a power cut would leave it: the last frame lost.
    let hold = follow(&replica, &manager, u64::MAX).unwrap();
    assert_eq!(apply_frames(&replica, &manager, &frames).unwrap(), end);
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let copy = cut.join("r.db");
    std::fs::copy(&replica, &copy).unwrap();
    std::fs::copy(dir.path().join("r.db-upstream"), cut.join("r.db-upstream")).unwrap();
    let log_copy = cut.join("r.db-wal");
    std::fs::create_dir(&log_copy).unwrap();
    let mut newest: Option<(String, u64)> = None;
    for entry in std::fs::read_dir(dir.path().join("r.db-wal")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        std::fs::copy(entry.path(), log_copy.join(&name)).unwrap();
        let len = entry.metadata().unwrap().len();
        if name.ends_with(".seg") && newest.as_ref().is_none_or(|(n, _)| name > *n) {
            newest = Some((name, len));
        }
    }
    drop(hold);
    let (name, len) = newest.expect("a segment");
    let file = std::fs::OpenOptions::new().write(true).open(log_copy.join(&name)).unwrap();
    file.set_len(len - 4128).unwrap();
    drop(file);
    assert_eq!(replica_position(&copy, &manager).unwrap(), before, "back at the group's start, and it knows it");
}

/// A replica whose primary refuses its position starts again from an image of the primary:
/// `replace_with_image` drops its file, log and upstream record whole for the image's, never
/// while a connection holds it (refused, nothing changed), and the replica then follows the
/// new history. `info` (`inspect_read_only`) shows where a replica is.
#[test]
fn a_replica_is_replaced_whole_by_another_history_image() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, other, replica) = (dir.path().join("p.db"), dir.path().join("o.db"), dir.path().join("r.db"));
    let manager = manager();
    let conn = setup(&primary, &manager);
    bootstrap(&primary, &replica, &manager);
    for i in 0..40 {
        transfer(&conn, i);
    }
    catch_up(&primary, &replica, &manager);
    let other_conn = setup(&other, &manager);
    other_conn.execute_batch("UPDATE acct SET bal = id").unwrap();
    let image = replica.with_extension("image");
    let mut bytes = Vec::new();
    let at = export_image(&other, &manager, &mut |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })
    .unwrap()
    .unwrap();
    std::fs::write(&image, &bytes).unwrap();
    let before = rows(&replica, &manager);
    let reader = open_connection(&replica, &manager).unwrap();
    match replace_with_image(&image, &replica, &manager) {
        Err(Error::LogInUse { users, .. }) => assert!(users >= 1),
        other => panic!("replaced under an open connection: {other:?}"),
    }
    let seen: i64 = reader.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, 10_000, "the open connection still reads the old database");
    drop(reader);
    assert_eq!(rows(&replica, &manager), before, "a refused replacement changes nothing");
    assert_eq!(replace_with_image(&image, &replica, &manager).unwrap(), at);
    assert!(!image.exists(), "the image became the database");
    assert_eq!(rows(&replica, &manager), rows(&other, &manager), "only the new history's rows");
    assert_eq!(replica_position(&replica, &manager).unwrap(), at);
    let info = inspect_read_only(&replica, &manager).unwrap();
    assert_eq!(info.upstream, Some(UpstreamInfo::At(at)));
    // It follows the new history from there.
    other_conn.execute_batch("UPDATE acct SET bal = bal + 1 WHERE id = 1").unwrap();
    assert_eq!(catch_up(&other, &replica, &manager), log_position(&other, &manager).unwrap());
    assert_eq!(rows(&replica, &manager), rows(&other, &manager));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("replaced"))
        .collect();
    assert!(leftovers.is_empty(), "the replaced log is removed: {leftovers:?}");
}
