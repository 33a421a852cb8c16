//! `libsql-wal verify`: a sound log and database pass (exit 0); a torn tail is a warning
//! (recovery cuts it); a bad frame in a sealed segment or missing frames are errors (exit 1);
//! verify itself changes nothing before it opens the database.

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_wal::{LibsqlWalManager, WalConfig, io::StdIo, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

/// A database whose log keeps several sealed segments and a current one.
fn database_with_a_log(dir: &Path) -> PathBuf {
    let path = dir.join("d.db");
    let config =
        WalConfig { segment_frames_max: 4, segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config);
    let conn = open_connection(&path, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB)").unwrap();
    for _ in 0..20 {
        conn.execute("INSERT INTO t(pad) VALUES (randomblob(2000))", []).unwrap();
    }
    path
}

fn segments(db: &Path) -> Vec<PathBuf> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-wal");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn verify(db: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("verify").arg(db).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_sound_log_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    assert!(out.contains("sealed, frames 1..="), "{out}");
    assert!(out.contains("integrity_check: ok"), "{out}");
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
}

#[test]
fn a_plain_sqlite_database_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    Command::new("sqlite3").arg(&db).arg("CREATE TABLE t(x); INSERT INTO t VALUES (1);").status().unwrap();
    let (ok, out) = verify(&db);
    assert!(ok && out.contains("no log"), "{out}");
}

#[test]
fn a_torn_tail_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let tail = segments(&db).pop().unwrap();
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes.extend_from_slice(&[0xEE; 5000]);
    std::fs::write(&tail, bytes).unwrap();
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    assert!(out.contains("bytes after the last commit frame") && out.contains("1 warnings"), "{out}");
}

#[test]
fn a_bad_frame_in_a_sealed_segment_is_an_error_and_nothing_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let sealed = segments(&db).remove(1);
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[64 + 24 + 100] ^= 0xFF;
    std::fs::write(&sealed, &bytes).unwrap();
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(out.contains("bad frame at frame_no") && out.contains("integrity_check skipped"), "{out}");
    assert_eq!(std::fs::read(&sealed).unwrap(), bytes, "verify changed the damaged segment");
}

#[test]
fn missing_frames_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    std::fs::remove_file(segments(&db).remove(1)).unwrap();
    let (ok, out) = verify(&db);
    assert!(!ok, "{out}");
    assert!(out.contains("frames are missing"), "{out}");
}

/// Every byte of the database file and its log directory, by name.
fn snapshot_files(db: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-wal");
    let mut files = vec![(db.to_path_buf(), std::fs::read(db).unwrap())];
    if let Ok(entries) = std::fs::read_dir(PathBuf::from(dir)) {
        for entry in entries {
            let path = entry.unwrap().path();
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

/// Damage `damage` does to the segment `pick` chooses: verify reports it (exit 1) and changes
/// nothing; an open refuses it and changes nothing either.
fn damage_is_reported_and_refused(pick: fn(Vec<PathBuf>) -> PathBuf, damage: impl FnOnce(&Path), expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let segment = pick(segments(&db));
    damage(&segment);
    let before = snapshot_files(&db);
    let (ok, out) = verify(&db);
    assert!(!ok, "verify passed damage: {out}");
    assert!(out.contains(expect), "{out}");
    assert!(snapshot_files(&db) == before, "verify changed files: {out}");
    let config = WalConfig { segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    let refused = open_connection(&db, &LibsqlWalManager::new(StdIo::shared(), config));
    assert!(refused.is_err(), "an open served a log whose sealed segment is damaged");
    assert!(snapshot_files(&db) == before, "a refused open changed files");
}

/// The newest sealed segment (the last file is the current, unsealed one).
fn newest_sealed(mut segments: Vec<PathBuf>) -> PathBuf {
    segments.pop();
    segments.pop().unwrap()
}

fn middle(mut segments: Vec<PathBuf>) -> PathBuf {
    segments.remove(segments.len() / 2)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_zeroed_header_checksum_of_a_sealed_segment_is_damage_not_a_creation_cut_short() {
    // The header's other fields and its seal trailer show it was written whole and synced.
    damage_is_reported_and_refused(newest_sealed, |seg| write_at(seg, 60, &[0; 4]), "segment header checksum mismatch");
}

#[test]
fn a_flipped_byte_in_a_seal_trailer_is_damage_not_an_unsealed_segment() {
    for at in [1u64, 20, 40] {
        // Magic, last_frame_no, size_after: each one field of the trailer.
        let flip = move |seg: &Path| {
            let len = std::fs::metadata(seg).unwrap().len();
            let mut byte = [0u8; 1];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(seg).unwrap().read_exact_at(&mut byte, len - 48 + at).unwrap();
            write_at(seg, len - 48 + at, &[byte[0] ^ 0x5A]);
        };
        damage_is_reported_and_refused(middle, flip, "seal trailer");
    }
}

#[test]
fn verify_changes_nothing_on_a_truncated_segment_or_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let newest = newest_sealed(segments(&db));
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(30).unwrap();
    let tail = segments(&db).pop().unwrap();
    let len = std::fs::metadata(&tail).unwrap().len();
    write_at(&tail, len, &[0xEE; 3000]);
    let before = snapshot_files(&db);
    let (_, out) = verify(&db);
    assert!(snapshot_files(&db) == before, "verify changed files: {out}");
}

#[test]
fn verify_refuses_what_is_not_a_database_and_writes_nothing_into_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(&text, "this is a text file, 31 bytes.\n").unwrap();
    let (ok, out) = verify(&text);
    assert!(!ok && out.contains("not a SQLite database"), "{out}");
    assert_eq!(std::fs::read(&text).unwrap(), b"this is a text file, 31 bytes.\n");

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let (ok, out) = verify(&empty);
    assert!(ok && out.contains("empty"), "{out}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "verify wrote into an empty file");
    let mut log_dir = empty.as_os_str().to_owned();
    log_dir.push("-wal");
    assert!(!PathBuf::from(log_dir).exists(), "verify created a log directory");
}

#[test]
fn a_fifo_in_place_of_a_segment_or_database_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let mut log = db.as_os_str().to_owned();
    log.push("-wal");
    let fifo = PathBuf::from(log).join("00000000000000099999.seg");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("timeout").arg("20").arg(BIN).args(args).output().unwrap();
        assert_ne!(out.status.code(), Some(124), "{args:?} hung on a FIFO");
        out
    };
    assert!(!run(&["verify".as_ref(), db.as_os_str()]).status.success());
    assert!(!run(&["exec".as_ref(), db.as_os_str(), "select 1".as_ref()]).status.success());
    let fifo_db = dir.path().join("fifo.db");
    assert!(Command::new("mkfifo").arg(&fifo_db).status().unwrap().success());
    let out = run(&["verify".as_ref(), fifo_db.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"), "{out:?}");

    // The durable record replaced by a FIFO: an open refuses it, so verify reports it.
    std::fs::create_dir(dir.path().join("record")).unwrap();
    let db = database_with_a_log(&dir.path().join("record"));
    let mut log = db.as_os_str().to_owned();
    log.push("-wal");
    let record = PathBuf::from(log).join("durable");
    let _ = std::fs::remove_file(&record);
    assert!(Command::new("mkfifo").arg(&record).status().unwrap().success());
    let out = run(&["verify".as_ref(), db.as_os_str()]);
    assert!(!out.status.success(), "verify passed a log whose durable record is a FIFO: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("durable record"), "{out:?}");
}

#[test]
fn verify_leaves_nothing_in_the_temporary_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = Command::new(BIN).arg("verify").arg(&db).env("TMPDIR", &tmp).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity_check: ok"), "{out:?}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "verify left its scratch copy behind");
}

fn first(mut segments: Vec<PathBuf>) -> PathBuf {
    segments.remove(0)
}

#[test]
fn a_missing_or_emptied_segment_before_a_synchronous_commit_is_damage_not_a_cut() {
    // Every commit here is synchronous (FULL, SQLite's default): its frame was written only
    // once every earlier segment was durable, so no crash can have lost one of them.
    damage_is_reported_and_refused(first, |seg| std::fs::write(seg, b"").unwrap(), "synchronous commit");
    damage_is_reported_and_refused(first, |seg| std::fs::remove_file(seg).unwrap(), "frames are missing");
    let cut = |seg: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(64 + libsql_wal::format::FRAME_SIZE as u64)
            .unwrap()
    };
    // The sealed segment before the current one gone: the current (unsealed) one follows a
    // gap, which a power cut under NORMAL could leave, but not before a FULL commit.
    damage_is_reported_and_refused(newest_sealed, |seg| std::fs::remove_file(seg).unwrap(), "synchronous commit");
    // Cut to its first frame: the sealed segment after it now follows a gap.
    damage_is_reported_and_refused(first, cut, "frames are missing");
}

#[test]
fn a_bad_frame_in_the_current_segment_before_later_synchronous_commits_is_damage_not_a_torn_tail() {
    // Ten FULL commits in one unsealed segment: each returned only after its sync, so a bad
    // frame in the first of them is no crash's doing (a crash tears only the unsynced end).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let config =
        WalConfig { segment_frames_max: 1000, segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    {
        let conn = open_connection(&db, &LibsqlWalManager::new(StdIo::shared(), config.clone())).unwrap();
        conn.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB)").unwrap();
        for _ in 0..10 {
            conn.execute("INSERT INTO t(pad) VALUES (randomblob(2000))", []).unwrap();
        }
    }
    let current = segments(&db).pop().unwrap();
    let mut bytes = std::fs::read(&current).unwrap();
    bytes[64 + 24 + 100] ^= 0xFF;
    std::fs::write(&current, &bytes).unwrap();
    let before = snapshot_files(&db);
    let (ok, out) = verify(&db);
    assert!(!ok, "verify took damage for a torn tail: {out}");
    assert!(out.contains("was durable, so this is damage"), "{out}");
    assert!(snapshot_files(&db) == before, "verify changed files: {out}");
    let refused = open_connection(&db, &LibsqlWalManager::new(StdIo::shared(), config));
    assert!(refused.is_err(), "an open cut synced commits as a torn tail");
    assert!(snapshot_files(&db) == before, "a refused open changed files");
}

#[test]
fn an_empty_segment_file_named_within_the_log_is_damage_not_a_creation_cut_short() {
    // Before the fix the empty file ended the log, and the open deleted every real segment.
    let stray = |seg: &Path| std::fs::write(seg.with_file_name("00000000000000000000.seg"), b"").unwrap();
    damage_is_reported_and_refused(first, stray, "no crash leaves that");
    let inside = |seg: &Path| std::fs::write(seg.with_file_name("00000000000000000002.seg"), b"").unwrap();
    damage_is_reported_and_refused(first, inside, "within the log");
}

#[test]
fn a_file_that_only_ends_in_seg_is_not_a_segment_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_a_log(dir.path());
    let notes = segments(&db)[0].with_file_name("notes.seg");
    std::fs::write(&notes, b"").unwrap();
    let (ok, out) = verify(&db);
    assert!(ok, "{out}");
    let config = WalConfig { segment_age_max: None, checkpoint_on_close: false, ..Default::default() };
    let conn = open_connection(&db, &LibsqlWalManager::new(StdIo::shared(), config)).unwrap();
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 20, "rows lost to a file that is not a segment");
    drop(conn);
    assert!(notes.exists(), "a file we did not create was deleted");
}
