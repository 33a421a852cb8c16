//! Regression tests for defects in ownership, the registry, the checkpointer and the `Wal`
//! boundary. Each test fails without its fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn log_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

fn plain_manager() -> LibsqlWalManager {
    LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
}

/// A database `real.db` with a table and a hard link `hard.db` to it.
fn hard_linked_db(dir: &Path) -> (PathBuf, PathBuf) {
    let real = dir.join("real.db");
    let hard = dir.join("hard.db");
    let conn = open_connection(&real, &plain_manager()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (0);").unwrap();
    drop(conn);
    assert!(!log_dir(&real).exists(), "fixture: the log outlived its connection");
    std::fs::hard_link(&real, &hard).unwrap();
    (real, hard)
}

// ---- 4. Ownership follows the file, not its name ---------------------------------------

/// This process owns `real.db`; another process writing through the hard link `hard.db`
/// must be refused as "in use" (before: it wrote into a second log, lost at our close).
#[test]
fn another_process_is_refused_through_a_hard_link() {
    let dir = tempfile::tempdir().unwrap();
    let (real, hard) = hard_linked_db(dir.path());
    let conn = open_connection(&real, &plain_manager()).unwrap();
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();

    let out = Command::new(BIN).arg("exec").arg(&hard).arg("INSERT INTO t VALUES (2)").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a process wrote through a hard link of an owned database: {stdout} {stderr}");
    assert!(stderr.contains("in use") || stdout.contains("in use"), "not an \"in use\" error: {stdout:?} {stderr:?}");
    assert!(!log_dir(&hard).exists(), "the refused process left a log directory behind");
    for look in ["verify", "info"] {
        let out = Command::new(BIN).arg(look).arg(&hard).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("in use"), "{look} read a log being written: {stderr}");
    }

    // And the other way round: through the first name while the second is owned.
    drop(conn);
    let conn = open_connection(&hard, &plain_manager()).unwrap();
    let out = Command::new(BIN).arg("exec").arg(&real).arg("INSERT INTO t VALUES (3)").output().unwrap();
    assert!(!out.status.success(), "a process wrote through the first name while the link is owned");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(conn);

    let conn = open_connection(&real, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2, "rows 0 and 1, nothing else");
}

/// In one process, two names of one file share one log: every commit through either name
/// is kept (before: two logs, and half the rows were lost at reopen).
#[test]
fn two_names_of_one_file_share_one_log_in_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let (real, hard) = hard_linked_db(dir.path());
    let manager = plain_manager();
    let a = open_connection(&real, &manager).unwrap();
    let b = open_connection(&hard, &manager).unwrap();
    for i in 0..300 {
        a.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        b.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    assert_eq!(count(&a), 601, "the first name does not see the commits made through the second");
    assert_eq!(count(&b), 601, "the second name does not see the commits made through the first");
    assert!(!log_dir(&hard).exists(), "a second log directory for the same file");
    drop(a);
    drop(b);
    assert!(!log_dir(&real).exists(), "the log was not closed with its last connection");
    for db in [&real, &hard] {
        let conn = open_connection(db, &plain_manager()).unwrap();
        assert_eq!(count(&conn), 601, "rows lost, reading through {}", db.display());
    }
    let out =
        Command::new("sqlite3").arg(&real).arg("SELECT count(*) FROM t; PRAGMA integrity_check;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "601\nok\n");
}

/// A log left under `real.db` (by a process that died, or kept at close) holds commits the
/// file does not have. Opening the file as `hard.db` would not see them, and its checkpoint
/// would write under them: refused, naming the other name; nothing is created or changed.
#[test]
fn a_log_left_under_another_name_of_the_file_is_never_bypassed() {
    let dir = tempfile::tempdir().unwrap();
    let (real, hard) = hard_linked_db(dir.path());
    let keep = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let conn = open_connection(&real, &LibsqlWalManager::new(StdIo::shared(), keep)).unwrap();
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    drop(conn);
    assert!(log_dir(&real).join("lock").exists(), "fixture: the log was not kept");
    let file_before = std::fs::read(&real).unwrap();

    let refused = open_connection(&hard, &plain_manager()).err().expect("the other name's log was bypassed");
    let message = refused.to_string();
    assert!(message.contains("real.db") && message.contains("hard link"), "{message}");
    assert!(!log_dir(&hard).exists(), "the refused open created a log directory");
    assert_eq!(std::fs::read(&real).unwrap(), file_before, "the refused open changed the file");
    let out = Command::new(BIN).arg("verify").arg(&hard).output().unwrap();
    assert!(!out.status.success(), "verify passed a file whose log is under another name");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hard link"));

    let conn = open_connection(&real, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2, "the commit in the log was lost");
    drop(conn);
    let conn = open_connection(&hard, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2, "once the log is folded in, either name opens the whole file");
}

// ---- 13. The checkpointer: after shutdown, first registration, identity ------------------

use libsql_wal_testkit::support as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{fast_checkpointer, wait_until};
use libsql_wal::{Checkpointer, CheckpointerConfig, inspect};

/// (segments, unsealed segments, committed frames) of the log.
fn log_shape(db: &Path, manager: &LibsqlWalManager) -> (usize, usize, u64) {
    let info = inspect(db, manager).unwrap();
    let unsealed = info.segments.iter().filter(|s| !s.sealed).count();
    let frames = info.segments.iter().map(|s| s.frames as u64).sum();
    (info.segments.len(), unsealed, frames)
}

fn commit_many(conn: &Connection, n: usize) {
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE IF NOT EXISTS t(x)").unwrap();
    for i in 0..n {
        conn.execute("INSERT INTO t VALUES (?1)", [i as i64]).unwrap();
    }
}

/// After `Checkpointer::shutdown`, nothing seals or checkpoints in the background: the logs
/// must do it themselves (seal at the commit that fills a segment, SQLite's autocheckpoint),
/// both one open before the shutdown and one first opened after it. Before: autocheckpoint
/// stayed off and full segments stayed unsealed, without bound.
#[test]
fn after_a_checkpointer_shutdown_logs_seal_and_checkpoint_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let checkpointer = fast_checkpointer(2);
    let config = WalConfig { segment_frames_max: 64, segment_age_max: None, ..WalConfig::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config).with_checkpointer(checkpointer.clone());
    let before = dir.path().join("before.db");
    let conn_before = open_connection(&before, &manager).unwrap();
    commit_many(&conn_before, 10);
    checkpointer.shutdown(Duration::from_secs(10));

    let after = dir.path().join("after.db");
    let conn_after = open_connection(&after, &manager).unwrap();
    for (db, conn) in [(&before, &conn_before), (&after, &conn_after)] {
        commit_many(conn, 3000);
        let (segments, unsealed, frames) = log_shape(db, &manager);
        // SQLite's autocheckpoint runs past 1000 frames; a segment holds 64.
        assert!(unsealed <= 1, "{}: {unsealed} unsealed segments: nothing seals full ones", db.display());
        assert!(frames <= 1200, "{}: {frames} frames in the log: nothing checkpoints", db.display());
        assert!(segments <= 20, "{}: {segments} segments", db.display());
        assert_eq!(count(conn), if db == &before { 3010 } else { 3000 });
    }
}

/// A log left with sealed segments (a close without checkpoint), opened as the first
/// database of a fresh checkpointer: they are checkpointed at once, not when (if ever) a
/// new seal notifies the checkpointer. Before: the first registration started the threads
/// but queued nothing, and with `segment_age_max: None` the segments waited forever.
#[test]
fn leftover_sealed_segments_are_checkpointed_promptly_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leftover.db");
    let config =
        WalConfig { segment_frames_max: 64, segment_age_max: None, checkpoint_on_close: false, ..WalConfig::default() };
    let plain = LibsqlWalManager::new(StdIo::shared(), config.clone());
    let conn = open_connection(&db, &plain).unwrap();
    commit_many(&conn, 300);
    drop(conn);
    let (_, unsealed, _) = log_shape(&db, &plain);
    let info = inspect(&db, &plain).unwrap();
    assert!(info.segments.len() - unsealed >= 3, "fixture: no sealed segments left behind: {:?}", info.segments);

    let manager = LibsqlWalManager::new(StdIo::shared(), config).with_checkpointer(fast_checkpointer(1));
    let conn = open_connection(&db, &manager).unwrap();
    wait_until("the leftover sealed segments are checkpointed", Duration::from_secs(20), || {
        inspect(&db, &manager).unwrap().segments.iter().all(|s| !s.sealed)
    });
    assert_eq!(count(&conn), 300);
}

/// A log closed and reopened is another log for the checkpointer: a job queued for the old
/// one neither runs the new one twice at once nor carries over its state. Before (entries
/// keyed by path): the old log's queued item and the new log's both ran the new log, on two
/// workers at once.
#[test]
fn a_reopened_log_does_not_inherit_the_old_logs_checkpoint_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reopened.db");
    let (io, switches) = common::TestIo::new();
    let checkpointer = fast_checkpointer(2);
    checkpointer.pause();
    let config =
        WalConfig { segment_frames_max: 16, segment_age_max: None, checkpoint_on_close: false, ..WalConfig::default() };
    let manager = LibsqlWalManager::new(io, config).with_checkpointer(checkpointer.clone());
    let conn = open_connection(&db, &manager).unwrap();
    commit_many(&conn, 100);
    // Full segments notified the (paused) checkpointer: a job of this log is queued. Close
    // the log with the job still queued, and open it again.
    drop(conn);
    let conn = open_connection(&db, &manager).unwrap();
    // Slow copies, so that two jobs of one log would overlap.
    switches.db_write_delay_ms.store(50, Ordering::SeqCst);
    checkpointer.resume();
    wait_until("the reopened log is checkpointed", Duration::from_secs(60), || {
        inspect(&db, &manager).unwrap().segments.len() <= 1
    });
    assert_eq!(checkpointer.stats().running_max_seen, 1, "two checkpoints of one log at once");
    assert_eq!(count(&conn), 100);
}

// ---- Tracing capture, for what a defect's fix must say ----------------------------------

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Runs `f` on this thread with its `tracing` events (warn and up) captured; returns them.
fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    (result, text)
}

// ---- 15. One log, one configuration; a vanished log directory ----------------------------

/// A second manager opening a live log with another configuration is refused, naming the
/// setting (before: silently given the first one's log).
#[test]
fn a_second_manager_with_another_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("config.db");
    let config = WalConfig { segment_frames_max: 64, ..WalConfig::default() };
    let first = LibsqlWalManager::new(StdIo::shared(), config.clone());
    let conn = open_connection(&db, &first).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let others = [
        (
            "segment_frames_max",
            LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max: 128, ..config.clone() }),
        ),
        (
            "checkpoint_on_close",
            LibsqlWalManager::new(StdIo::shared(), WalConfig { checkpoint_on_close: false, ..config.clone() }),
        ),
        (
            "keep_open_when_idle",
            LibsqlWalManager::new(StdIo::shared(), WalConfig { keep_open_when_idle: true, ..config.clone() }),
        ),
        (
            "checkpointer",
            LibsqlWalManager::new(StdIo::shared(), config.clone())
                .with_checkpointer(Checkpointer::new(CheckpointerConfig::default())),
        ),
    ];
    for (setting, manager) in &others {
        let err = match open_connection(&db, manager) {
            Ok(_) => panic!("opened a live log with another {setting}"),
            Err(e) => e,
        };
        let message = err.to_string();
        assert!(matches!(err, libsql_wal::Error::CannotOpen { .. }), "{message}");
        assert!(message.contains(setting) && message.contains("already open"), "{setting}: {message}");
    }
    // The same configuration through another manager joins the log.
    let same = LibsqlWalManager::new(StdIo::shared(), config);
    let other_conn = open_connection(&db, &same).unwrap();
    other_conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(count(&conn), 2);
    drop(other_conn);
    drop(conn);
    assert!(!log_dir(&db).exists(), "the log directory was left behind");
}

/// Removing `<db>-wal/` under a live log: the commit that can no longer write says that
/// the log directory disappeared, naming it (before: a bare "unable to open database file",
/// and without a checkpointer, commits went on into the removed segment after its seal
/// failed).
#[test]
fn a_commit_after_the_log_directory_disappeared_says_so() {
    for background in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vanished.db");
        let config = WalConfig { segment_frames_max: 8, segment_age_max: None, ..WalConfig::default() };
        let mut manager = LibsqlWalManager::new(StdIo::shared(), config);
        if background {
            manager = manager.with_checkpointer(fast_checkpointer(1));
        }
        let conn = open_connection(&db, &manager).unwrap();
        commit_many(&conn, 3);
        std::fs::remove_dir_all(log_dir(&db)).unwrap();
        let (failed, logged) = capture(|| (0..40).find_map(|i| conn.execute("INSERT INTO t VALUES (?1)", [i]).err()));
        let failed =
            failed.unwrap_or_else(|| panic!("background {background}: 40 commits went on without a log directory"));
        let dir_name = log_dir(&db).display().to_string();
        assert!(
            logged.contains("log directory disappeared") && logged.contains(&dir_name),
            "background {background}: the failure ({failed}) does not say the log directory {dir_name} is gone: {logged}"
        );
        drop(conn);
    }
}

// ---- 8. Preallocation never fails a commit that fits -------------------------------------

#[test]
fn a_full_commit_that_fits_does_not_fail_for_want_of_preallocation() {
    use libsql_wal_testkit::faulty::{Fault, FaultyIo, LostWrites};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prealloc.db");
    let io = FaultyIo::new(0, LostWrites::All);
    let config = WalConfig { checkpoint_on_close: false, ..WalConfig::default() };
    let manager = LibsqlWalManager::new(std::sync::Arc::new(io.clone()), config);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    // Closed without a checkpoint: the segment stays, its preallocated zeros given back, so
    // the next FULL commit starts by preallocating.
    drop(conn);
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL").unwrap();
    // The disk has no room for 2 MiB of zeros, but has for one frame.
    io.arm(1, Fault::NoSpace);
    conn.execute("INSERT INTO t VALUES (2)", []).expect("a FULL commit that fits failed for want of preallocation");
    let segment = std::fs::read_dir(log_dir(&db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    assert!(len < 1024 * 1024, "fixture: the fault did not hit the preallocation (segment {len} bytes)");
    assert_eq!(count(&conn), 2);
    drop(conn);
    let conn = open_connection(&db, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2, "the commit did not survive a reopen");
}

// ---- 12. Races with stock SQLite; files we did not create --------------------------------

/// What makes the first creation of a log directory lose a race to stock `sqlite3`: just
/// before it, `<db>-wal` appears as SQLite's (empty) log file, and
/// `<db>-shm` is locked as a live SQLite connection locks it.
struct RacingIo {
    sqlite_shm: std::sync::Mutex<Option<std::fs::File>>,
}

impl RacingIo {
    fn lose_the_race(&self, log_dir: &Path) {
        let mut shm = self.sqlite_shm.lock().unwrap();
        if shm.is_some() {
            return;
        }
        std::fs::write(log_dir, b"").unwrap();
        let db = log_dir.to_string_lossy().strip_suffix("-wal").unwrap().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(format!("{db}-shm"))
            .unwrap();
        // SQLite's unix VFS: every connection using the WAL read-locks byte 128 of -shm.
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed flock is a valid argument; the descriptor is open.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = 128;
        lock.l_len = 1;
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) }, 0);
        *shm = Some(file);
    }
}

/// Stock `sqlite3` creating its `-wal` file between our look at `<db>-wal` and our
/// `mkdir`: "in use", as if it had been first (before: "File exists (os error 17)").
#[test]
fn losing_the_log_directory_race_to_stock_sqlite_reports_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.db");
    let conn = open_connection(&db, &plain_manager()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    assert!(!log_dir(&db).exists());
    let racing = std::sync::Arc::new(RacingIo { sqlite_shm: std::sync::Mutex::new(None) });
    let io = std::sync::Arc::new(libsql_wal_testkit::faulty::HookIo::new(move |operation, path| {
        if operation == "create_dir_all" && path.to_string_lossy().ends_with("-wal") {
            racing.lose_the_race(path);
        }
    }));
    let manager = LibsqlWalManager::new(io, WalConfig::default());
    let err = match open_connection(&db, &manager) {
        Ok(_) => panic!("opened a database stock SQLite took meanwhile"),
        Err(e) => e,
    };
    assert!(matches!(err, libsql_wal::Error::InUse { .. }), "not \"in use\": {err}");
    assert!(log_dir(&db).is_file(), "SQLite's -wal file was touched");
}

/// A model of stock `sqlite3` opening a WAL-mode database, paused where the race with our
/// first open lost its commits: SQLite's unix VFS takes SHARED (a read lock on PENDING_BYTE,
/// then on the SHARED range, then PENDING released) and only then opens `<db>-wal`,
/// creating it if missing; it maps `-shm` and takes the lock we used to look at only later.
/// Stock `sqlite3` cannot be stopped at that point, so this child does SQLite's steps with
/// the same `fcntl` locks, says how far it got (`busy`: a lock refused, as SQLITE_BUSY;
/// `cantopen`: `<db>-wal` is our directory, as SQLITE_CANTOPEN; `connected`), and on its
/// next input line writes its "frames" through its descriptor and says `committed`.
const SQLITE_OPENING: &str = r#"
import fcntl, os, sys
db, wal = sys.argv[1], sys.argv[2]
PENDING = 0x40000000
fd = os.open(db, os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, PENDING)
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 510, PENDING + 2)
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, PENDING)
except OSError:
    print("busy", flush=True)
    sys.exit(0)
try:
    log = os.open(wal, os.O_RDWR | os.O_CREAT, 0o644)
except OSError:
    print("cantopen", flush=True)
    sys.exit(0)
print("connected", flush=True)
sys.stdin.readline()
os.write(log, b"frames committed by sqlite3")
os.fsync(log)
print("committed", flush=True)
sys.stdin.readline()
"#;

/// Starts the model of `sqlite3` (above) at one file operation of our open.
struct SqliteOpeningAt {
    db: PathBuf,
    /// The `Io` call, counted over the database's own files, at which it starts.
    at: usize,
    seen: std::sync::atomic::AtomicUsize,
    sqlite3: std::sync::Mutex<Option<std::process::Child>>,
}

impl SqliteOpeningAt {
    fn step(&self, path: &Path) {
        let ours = path.to_string_lossy().starts_with(&*self.db.to_string_lossy());
        if ours && self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == self.at {
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(SQLITE_OPENING)
                .arg(&self.db)
                .arg(log_dir(&self.db))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 (installed by .ci/test)");
            let said = read_line(&mut child);
            assert!(["busy", "cantopen", "connected"].contains(&said.as_str()), "the model said {said:?}");
            if said == "connected" {
                *self.sqlite3.lock().unwrap() = Some(child);
            } else {
                child.wait().unwrap();
            }
        }
    }

    /// Lets a connected model commit; whether it did.
    fn commit(&self) -> bool {
        use std::io::Write;
        let Some(mut child) = self.sqlite3.lock().unwrap().take() else { return false };
        child.stdin.as_mut().unwrap().write_all(b"commit\n").unwrap();
        let said = read_line(&mut child);
        drop(child.stdin.take());
        child.wait().unwrap();
        said == "committed"
    }
}

fn read_line(child: &mut std::process::Child) -> String {
    use std::io::Read;
    // Byte by byte: a buffered reader would keep what comes after the line.
    let mut line = Vec::new();
    let mut byte = [0u8];
    while child.stdout.as_mut().unwrap().read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// `sqlite3` opening a WAL-mode database at each moment of our first open of it: whatever
/// it committed through its `-wal` is still in the file named `<db>-wal`, where SQLite
/// finds it (our open then refuses: in use). Before: a `sqlite3` that had created its
/// `-wal` (our `mkdir` lost the race and looked again) or opened an empty one, but not yet
/// mapped `-shm`, committed into the file we then removed, and lost those commits (2 to 9
/// of 300 racing `sqlite3` inserts in the structure issue's pass).
#[test]
fn sqlite_opening_during_our_first_open_never_commits_into_a_removed_file() {
    let mut at = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("race.db");
        let conn = open_connection(&db, &plain_manager()).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        drop(conn);
        let race = std::sync::Arc::new(SqliteOpeningAt {
            db: db.clone(),
            at,
            seen: Default::default(),
            sqlite3: Default::default(),
        });
        let hook = race.clone();
        let io = libsql_wal_testkit::faulty::HookIo::new(move |_, path| hook.step(path));
        let manager = LibsqlWalManager::new(std::sync::Arc::new(io), WalConfig::default());
        let ours = open_connection(&db, &manager);
        let reached = race.seen.load(std::sync::atomic::Ordering::SeqCst);
        let sqlite3_committed = race.commit();
        if sqlite3_committed {
            let wal = std::fs::read(log_dir(&db));
            assert!(
                wal.as_deref().is_ok_and(|bytes| bytes.ends_with(b"frames committed by sqlite3")),
                "sqlite3 started at file operation {at} committed into a file that is gone (our open: {:?})",
                ours.as_ref().err()
            );
            assert!(ours.is_err(), "we opened a database sqlite3 was using");
        }
        drop(ours);
        if at >= reached {
            break;
        }
        at += 1;
    }
    assert!(at > 10, "the open made only {at} file operations");
}

/// `PRAGMA locking_mode=EXCLUSIVE` on our log: the connection keeps SQLite's EXCLUSIVE lock
/// (PENDING_BYTE included), which keeps stock `sqlite3` out until it closes, as on SQLite's
/// own WAL; the gate we hold on PENDING_BYTE while taking a log does not get in its way.
#[test]
fn a_connection_in_exclusive_locking_mode_opens_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("exclusive.db");
    let conn = open_connection(&db, &plain_manager()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    let conn = libsql_sys::Connection::open(
        &db,
        libsql_sys::rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        plain_manager(),
        1000,
        None,
    )
    .unwrap();
    conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE; INSERT INTO t VALUES (2);").unwrap();
    assert_eq!(count(&conn), 2);
    assert!(log_dir(&db).is_dir(), "not on our log");
    // Exclusive indeed: stock sqlite3 cannot read meanwhile.
    let out = Command::new("sqlite3").arg(&db).arg("SELECT count(*) FROM t").output().unwrap();
    assert!(!out.status.success(), "stock sqlite3 read a database held exclusively");
    drop(conn);
    let out = Command::new("sqlite3").arg(&db).arg("SELECT count(*) FROM t").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

/// A file we did not create in `<db>-wal/` is never deleted, neither at open nor at close,
/// and the directory it keeps is reported clearly (before: a misleading "could not remove
/// the empty log directory").
#[test]
fn a_file_we_did_not_create_is_kept_with_its_directory_and_a_clear_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stray.db");
    let conn = open_connection(&db, &plain_manager()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let notes = log_dir(&db).join("notes.txt");
    std::fs::write(&notes, b"mine").unwrap();
    let ((), logged) = capture(|| drop(conn));
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine", "a file we did not create was touched at close");
    assert!(log_dir(&db).is_dir());
    assert!(
        logged.contains("kept the log directory") && logged.contains("notes.txt"),
        "no clear warning about the kept directory: {logged}"
    );
    // Open again: the file stays; every row is there.
    let conn = open_connection(&db, &plain_manager()).unwrap();
    assert!(notes.exists(), "a file we did not create was deleted at open");
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    drop(conn);
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine");
    // Once it is moved away, the next close gives the file back to plain SQLite.
    std::fs::remove_file(&notes).unwrap();
    let conn = open_connection(&db, &plain_manager()).unwrap();
    assert_eq!(count(&conn), 2);
    drop(conn);
    assert!(!log_dir(&db).exists());
}

// ---- 7. end_read_txn ends the write transaction too ---------------------------------------

/// A disk full at each I/O operation of a transaction over a database and an attached one,
/// larger than the page cache (a failed spill puts SQLite's pager in its error state, and it
/// then ends the read transaction without ending the write): afterwards, as on SQLite's own
/// WAL, another connection can write both databases (before: "database is locked" until
/// this connection happened to write again), and so can this one.
#[test]
fn after_a_full_disk_in_a_transaction_with_an_attached_database_others_can_write() {
    use libsql_wal_testkit::faulty::{Fault, FaultyIo, LostWrites};
    let script = "BEGIN; \
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20) \
            INSERT INTO t SELECT randomblob(3000) FROM c; \
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20) \
            INSERT INTO aux.t SELECT randomblob(3000) FROM c; \
        COMMIT;";
    let mut op = 1;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let (main, aux) = (dir.path().join("main.db"), dir.path().join("aux.db"));
        let io = FaultyIo::new(op, LostWrites::All);
        let manager = LibsqlWalManager::new(std::sync::Arc::new(io.clone()), WalConfig::default());
        let attach = format!("ATTACH '{}' AS aux", aux.display());
        let conn = open_connection(&main, &manager).unwrap();
        conn.execute_batch(&format!(
            "{attach}; PRAGMA aux.journal_mode=WAL; PRAGMA cache_size=5; PRAGMA aux.cache_size=5; \
             CREATE TABLE t(x); CREATE TABLE aux.t(x);"
        ))
        .unwrap();
        let before = io.ops();
        io.arm(op, Fault::NoSpace);
        let outcome = conn.execute_batch(script);
        if io.ops() - before < op {
            // The fault fell past the script: every operation of it has had its turn.
            assert!(op > 5, "the script did little I/O of ours: {op}");
            break;
        }
        let other = open_connection(&main, &manager).unwrap();
        other.execute_batch(&attach).unwrap();
        // A failed sync is sticky: that log then refuses writes (SQLITE_IOERR) until it is
        // closed and recovered. Never "database is locked": that is the leaked write lock.
        let mut refused = Vec::new();
        for (who, c, v) in [("another connection", &other, 2), ("this connection", &conn, 1)] {
            for table in ["t", "aux.t"] {
                match c.execute(&format!("INSERT INTO {table} VALUES ({v})"), []) {
                    Ok(_) => {}
                    Err(e) if e.sqlite_error_code() == Some(libsql_sys::rusqlite::ErrorCode::DatabaseBusy) => {
                        panic!("ENOSPC at operation {op} ({outcome:?}), then {who}'s write to {table}: {e}")
                    }
                    Err(e) => refused.push(format!("{who}, {table}: {e}")),
                }
            }
        }
        if !refused.is_empty() {
            drop((conn, other));
            let conn = open_connection(&main, &manager).unwrap();
            conn.execute_batch(&attach).unwrap();
            for table in ["t", "aux.t"] {
                conn.execute(&format!("INSERT INTO {table} VALUES (3)"), []).unwrap_or_else(|e| {
                    panic!("ENOSPC at operation {op}, refused {refused:?}, then after a reopen {table}: {e}")
                });
            }
        }
        op += 1;
    }
}
