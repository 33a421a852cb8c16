//! The library's front door: open connections on our WAL, checkpoint, and inspect a log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libsql_sys::Connection;
use libsql_sys::rusqlite::OpenFlags;
use libsql_sys::wal::{Sqlite3Wal, Sqlite3WalManager};

use crate::error::{Error, Result};
use crate::io::FileKind;
use crate::ownership;
use crate::registry;
use crate::shared::{CheckpointMode, CheckpointResult};
use crate::storage::durability::DurabilityInfo;
use crate::wal::{LibsqlWal, LibsqlWalManager};

fn acquire(manager: &LibsqlWalManager, db_path: &Path) -> Result<std::sync::Arc<crate::shared::SharedWal>> {
    let binding = manager.storage_binding(db_path)?;
    registry::acquire(manager.io(), db_path, manager.config(), manager.checkpointer(), binding.as_ref())
}

/// SQLite's default: the committing connection checkpoints past 1000 frames in the log.
const AUTOCHECKPOINT_FRAMES: u32 = 1000;

/// Opens a connection to `db_path` (created if missing) whose log is ours.
///
/// Refuses, with a clear error and without touching the file, a database whose page size is
/// not 4096 or that another process holds. A leftover SQLite `-wal` file is checkpointed into
/// the database first with SQLite's own WAL.
pub fn open_connection(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<Connection<LibsqlWal>> {
    let db_path = db_path.as_ref();
    ownership::check_page_size(manager.io().as_ref(), db_path)?;
    absorb_sqlite_wal(manager, db_path)?;
    // Taking the log here first turns "cannot open" into the precise reason.
    let held = match manager.io().kind(db_path).map_err(Error::io("opening", db_path))? {
        Some(FileKind::File { .. }) => Some(acquire(manager, db_path)?),
        _ => None,
    };
    let conn = Connection::open(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        manager.clone(),
        AUTOCHECKPOINT_FRAMES,
        None,
    );
    if let Some(shared) = &held {
        registry::release(shared, false);
    }
    let conn = conn?;
    sqlite_default_busy_timeout(&conn)?;
    Ok(conn)
}

/// `libsql-sys` sets a 100 ms busy timeout on every connection it opens; SQLite's default is
/// none (SQLITE_BUSY at once). We keep SQLite's default: no surprises for its users.
fn sqlite_default_busy_timeout(conn: &libsql_sys::rusqlite::Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::ZERO)?;
    Ok(())
}

/// Opens a connection on SQLite's own WAL, for comparisons.
pub fn open_sqlite_connection(db_path: impl AsRef<Path>) -> Result<Connection<Sqlite3Wal>> {
    let conn = Connection::open(
        db_path.as_ref(),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Sqlite3WalManager::new(),
        AUTOCHECKPOINT_FRAMES,
        None,
    )?;
    sqlite_default_busy_timeout(&conn)?;
    Ok(conn)
}

/// A regular file named `<db>-wal` is SQLite's log: fold it into the database with SQLite's
/// own WAL before ours takes over, so nothing committed there is lost.
fn absorb_sqlite_wal(manager: &LibsqlWalManager, db_path: &Path) -> Result<()> {
    let wal_path = ownership::log_dir_of(db_path);
    if let Some(FileKind::File { .. }) = manager.io().kind(&wal_path).map_err(Error::io("opening", &wal_path))? {
        if ownership::sqlite_wal_in_use(manager.io().as_ref(), db_path)? {
            return Err(Error::InUse { path: db_path.into(), log_dir: wal_path });
        }
        tracing::info!(db = %db_path.display(), "checkpointing a SQLite -wal file before taking over");
        let conn = open_sqlite_connection(db_path)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        drop(conn);
    }
    Ok(())
}

/// Runs `PRAGMA wal_checkpoint(mode)` on a connection of ours.
pub fn checkpoint(
    db_path: impl AsRef<Path>,
    mode: CheckpointMode,
    manager: &LibsqlWalManager,
) -> Result<CheckpointResult> {
    let conn = open_connection(db_path, manager)?;
    let name = match mode {
        CheckpointMode::Passive => "PASSIVE",
        CheckpointMode::Full => "FULL",
        CheckpointMode::Restart => "RESTART",
        CheckpointMode::Truncate => "TRUNCATE",
    };
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row(&format!("PRAGMA wal_checkpoint({name})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    // SQLite prints -1 for both counts when the database is not in WAL mode: 0 then, and a
    // count past u32::MAX saturates, never wraps.
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    Ok(CheckpointResult { busy: busy != 0, log_frames: count(log), checkpointed_frames: count(done) })
}

/// The durable frame_no of `db_path` (every frame up to it is in storage): `None` when the
/// log has no storage (and no durable record), or while storage has not been reached since
/// the log was opened. A log opened without storage reports its recorded value.
pub fn durable_frame_no(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<Option<u64>> {
    let shared = acquire(manager, db_path.as_ref())?;
    let durable = shared.durability().and_then(|d| d.frame_no());
    registry::release(&shared, false);
    Ok(durable)
}

/// Waits until `frame_no` of `db_path` is durable or `timeout` passes (`None`: no limit).
/// Returns whether it is durable. A frame in the current (unsealed) segment becomes durable
/// only once the segment is sealed: see [`flush_to_storage`] to seal it now.
pub fn wait_durable(
    db_path: impl AsRef<Path>,
    frame_no: u64,
    timeout: Option<Duration>,
    manager: &LibsqlWalManager,
) -> Result<bool> {
    let shared = acquire(manager, db_path.as_ref())?;
    let durable = match shared.durability() {
        Some(durability) => durability.wait(frame_no, timeout),
        None => false,
    };
    registry::release(&shared, false);
    Ok(durable)
}

/// Seals the current segment and waits until every commit so far is durable, or `timeout`
/// passes (`None`: no limit). Returns the last commit's frame_no if it is durable. Waits for
/// a writer to finish its transaction first (within the timeout).
pub fn flush_to_storage(
    db_path: impl AsRef<Path>,
    timeout: Option<Duration>,
    manager: &LibsqlWalManager,
) -> Result<Option<u64>> {
    let db_path = db_path.as_ref();
    if manager.storage().is_none() {
        return Err(Error::CannotOpen { path: db_path.into(), reason: "no storage is configured".into() });
    }
    let shared = acquire(manager, db_path)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let result = shared.seal_current_waiting(deadline).map(|sealed| {
        let last = shared.last_commit().frame_no;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let durable = sealed && shared.durability().is_some_and(|d| d.wait(last, left));
        durable.then_some(last)
    });
    registry::release(&shared, false);
    result
}

/// One segment file, as `libsql-wal info` shows it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub start_frame_no: u64,
    /// Last committed frame_no (start - 1 when empty).
    pub last_frame_no: u64,
    /// Committed frames.
    pub frames: u32,
    /// Frames in the file, including those of a transaction still open (spilled pages).
    pub frames_in_file: u32,
    pub bytes: u64,
    pub sealed: bool,
    /// When the segment file was created (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
}

/// The state of a database's log.
#[derive(Debug, Clone)]
pub struct LogInfo {
    /// Oldest first.
    pub segments: Vec<SegmentInfo>,
    pub last_frame_no: u64,
    /// Database size in pages at the last commit.
    pub db_pages: u32,
    /// Pages in the database file itself.
    pub db_file_pages: u64,
    /// Background checkpoints of this database that failed in this process, and the last
    /// failure's message.
    pub checkpoint_errors: u64,
    pub last_checkpoint_error: Option<String>,
    /// Storage state, when storage is (or once was) configured for this log.
    pub durability: Option<DurabilityInfo>,
}

impl LogInfo {
    /// Committed frames not yet in storage (`None`: no storage, or not known yet).
    pub fn durable_lag_frames(&self) -> Option<u64> {
        let durable = self.durability.as_ref()?.durable_frame_no?;
        Some(self.last_frame_no.saturating_sub(durable))
    }
}

/// Opens (and so recovers) the log of `db_path` and describes it.
pub fn inspect(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<LogInfo> {
    let db_path = db_path.as_ref();
    let shared = acquire(manager, db_path)?;
    let last = shared.last_commit();
    let segments = shared
        .segments()
        .iter()
        .rev()
        .map(|s| SegmentInfo {
            path: s.path.clone(),
            start_frame_no: s.start_frame_no,
            last_frame_no: s.last_committed_frame_no(),
            frames: s.committed_frames(),
            frames_in_file: s.frames(),
            bytes: s.file_len(),
            sealed: s.is_sealed(),
            created_unix_ms: s.created_unix_ms,
        })
        .collect();
    let (checkpoint_errors, last_checkpoint_error) = shared.checkpoint_errors();
    let info = LogInfo {
        durability: shared.durability().map(|d| d.info()),
        checkpoint_errors,
        last_checkpoint_error,
        segments,
        last_frame_no: last.frame_no,
        db_pages: last.db_size,
        db_file_pages: shared.db_file_len() / crate::format::PAGE_SIZE as u64,
    };
    registry::release(&shared, false);
    Ok(info)
}

/// What `verify` found: one line per finding, and how many were errors.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub lines: Vec<String>,
    pub errors: usize,
    pub warnings: usize,
}

impl VerifyReport {
    fn ok(&mut self, line: String) {
        self.lines.push(format!("ok       {line}"));
    }
    fn warn(&mut self, line: String) {
        self.warnings += 1;
        self.lines.push(format!("warning  {line}"));
    }
    fn error(&mut self, line: String) {
        self.errors += 1;
        self.lines.push(format!("ERROR    {line}"));
    }
}

/// Checks a database and its log without repairing anything: every segment's header,
/// checksums, seal and index, frame-number continuity (with the database file's checkpoint
/// mark), then SQLite's `integrity_check` through our WAL (opening it recovers the log; a
/// torn tail, reported as a warning first, is then cut as at any open).
pub fn verify(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<VerifyReport> {
    let db_path = db_path.as_ref();
    let io = manager.io().as_ref();
    let mut report = VerifyReport::default();
    let db_file = io.open(db_path, false).map_err(Error::io("opening", db_path))?;
    let mark = match ownership::read_db_header(db_file.as_ref(), db_path) {
        Ok(mark) => mark,
        Err(e) => {
            report.error(format!("database file: {e}"));
            return Ok(report);
        }
    };
    drop(db_file);
    match mark {
        Some(m) => report.ok(format!(
            "database file: SQLite, 4096-byte pages, checkpointed up to frame_no {} ({} pages)",
            m.frame_no, m.db_pages
        )),
        None => report.warn("database file: the checkpoint mark is unreadable (torn or foreign)".into()),
    }
    let log_dir = ownership::log_dir_of(db_path);
    match io.kind(&log_dir).map_err(Error::io("opening", &log_dir))? {
        None => report.ok("no log: a plain SQLite database".into()),
        Some(FileKind::File { len }) => {
            report.warn(format!("{} is SQLite's own -wal file ({len} bytes)", log_dir.display()))
        }
        Some(FileKind::Dir) => verify_segments(io, &log_dir, mark.map(|m| m.frame_no), &mut report)?,
    }
    if report.errors > 0 {
        report.lines.push("integrity_check skipped: the log is damaged".into());
        return Ok(report);
    }
    match open_connection(db_path, manager) {
        Ok(conn) => {
            let mut stmt = conn.prepare("PRAGMA integrity_check")?;
            let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            if lines == ["ok"] {
                report.ok("integrity_check: ok".into());
            } else {
                for line in lines {
                    report.error(format!("integrity_check: {line}"));
                }
            }
        }
        Err(e) => report.error(format!("cannot open the database: {e}")),
    }
    Ok(report)
}

fn verify_segments(io: &dyn crate::io::Io, log_dir: &Path, mark: Option<u64>, report: &mut VerifyReport) -> Result<()> {
    let paths = crate::segment::list_segment_files(io, log_dir)?;
    let mut previous_end: Option<u64> = None;
    // Set once the log ends (as recovery would cut it): later segments are reported as such.
    let mut log_ended = false;
    for (i, path) in paths.iter().enumerate() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if log_ended {
            report.warn(format!("{name}: after the end of the log (removed at open)"));
            continue;
        }
        if crate::segment::creation_cut_short(io, path)? {
            report.warn(format!(
                "{name}: its creation was cut short (no complete header): the log ends before it (removed at open)"
            ));
            log_ended = true;
            continue;
        }
        let check = crate::segment::check_segment(io, path)?;
        let is_tail = i + 1 == paths.len();
        for error in &check.errors {
            report.error(format!("{name}: {error}"));
        }
        for warning in &check.warnings {
            report.warn(format!("{name}: {warning}"));
        }
        if !check.errors.is_empty() {
            previous_end = None;
            continue;
        }
        let covered = mark.is_some_and(|m| check.valid_frames > 0 && check.last_frame_no <= m);
        let expected = previous_end.map(|end| end + 1).or(mark.filter(|_| !covered).map(|m| m + 1));
        if let Some(expected) = expected
            && check.start_frame_no != expected
            && !covered
        {
            if check.sealed || check.start_frame_no < expected {
                report.error(format!(
                    "{name}: starts at frame_no {} but {} was expected: frames are missing",
                    check.start_frame_no, expected
                ));
            } else {
                // What a power cut under synchronous=NORMAL leaves: recovery cuts the log here.
                report.warn(format!(
                    "{name}: starts at frame_no {} but the log ends at {}: a power cut lost the end of the log \
                     before it (unsynced commits); it and later segments are removed at open",
                    check.start_frame_no,
                    expected - 1
                ));
                log_ended = true;
                continue;
            }
        }
        let state = match (check.sealed, is_tail) {
            (true, _) => "sealed",
            (false, true) => "current",
            (false, false) => "full, not sealed yet (sealed at open)",
        };
        let note = if covered { ", already in the database file (removed at open)" } else { "" };
        report.ok(format!(
            "{name}: {state}, frames {}..={} ({} frames), checksums ok{note}",
            check.start_frame_no, check.last_frame_no, check.valid_frames
        ));
        if !covered {
            previous_end = Some(check.last_frame_no);
        }
    }
    if paths.is_empty() {
        report.ok("log directory: no segment".into());
    }
    Ok(())
}
