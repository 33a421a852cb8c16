//! The library's front door: open connections on our WAL, checkpoint, and inspect a log.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libsql_sys::Connection;
use libsql_sys::rusqlite::OpenFlags;
use libsql_sys::wal::{Sqlite3Wal, Sqlite3WalManager};

use crate::error::{Error, IoAction, Result};
use crate::format::DB_HEADER_MARK_SIZE;
use crate::io::{FileKind, Io};
use crate::log::replicate::FramesAfter;
use crate::log::{CheckpointMode, CheckpointResult};
use crate::ownership;
use crate::registry;
use crate::storage::durability::DurabilityInfo;
use crate::upstream::Position;
use crate::wal::{LibsqlWal, LibsqlWalManager};

fn acquire(manager: &LibsqlWalManager, db_path: &Path) -> Result<std::sync::Arc<crate::log::SharedWal>> {
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
    let held = match manager.io().kind(db_path).map_err(Error::io(IoAction::Open, db_path))? {
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
    if let Some(FileKind::File { .. }) = manager.io().kind(&wal_path).map_err(Error::io(IoAction::Open, &wal_path))? {
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

/// The frame_no of `db_path`'s last commit in this process's log (0 for an empty log).
/// Cheap: the log is already open while any connection to it is.
pub fn last_commit_frame_no(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<u64> {
    let shared = acquire(manager, db_path.as_ref())?;
    let last = shared.last_commit().frame_no;
    registry::release(&shared, false);
    Ok(last)
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
/// a writer to finish its transaction first (within the timeout). A log whose history no
/// longer continues the namespace's (diverged: its commits stay local) is an error saying why.
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
    let result = shared.seal_current_waiting(deadline).and_then(|sealed| {
        let last = shared.last_commit().frame_no;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let durable = sealed && shared.durability().is_some_and(|d| d.wait(last, left));
        // A diverged log never becomes durable: say why instead of waiting forever.
        match shared.durability().and_then(|d| Some((d.binding()?.storage.url().to_string(), d.diverged()?))) {
            Some((url, reason)) if !durable => Err(Error::Storage { url, reason }),
            _ => Ok(durable.then_some(last)),
        }
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
    /// Frames up to this one are in the database file (the log starts after it).
    pub checkpointed_frame_no: u64,
    /// What the next open's recovery would change ([`inspect_read_only`] only: an open log
    /// has been recovered).
    pub recovery: Vec<String>,
    /// A replica's place in its primary's history (its `<db>-upstream` record); `None`
    /// for a database that is not a replica.
    pub upstream: Option<UpstreamInfo>,
}

/// Where a replica is in its primary's history, as its upstream record tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamInfo {
    /// The record names the log's last commit: the replica asks for what follows this.
    At(Position),
    /// The record names no position at the log's last commit: the replica starts again
    /// from an image of its primary.
    Unknown,
}

fn upstream_info(io: &dyn Io, db_path: &Path, last_frame_no: u64) -> Result<Option<UpstreamInfo>> {
    let named = crate::upstream::Upstream::read_position_at(io, db_path, last_frame_no)?;
    Ok(named.map(|position| position.map_or(UpstreamInfo::Unknown, UpstreamInfo::At)))
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
    let segments = shared.segments().iter().rev().map(|s| SegmentInfo::of(s)).collect();
    let (checkpoint_errors, last_checkpoint_error) = shared.checkpoint_errors();
    let info = LogInfo {
        durability: shared.durability().map(|d| d.info()),
        checkpoint_errors,
        last_checkpoint_error,
        segments,
        last_frame_no: last.frame_no,
        db_pages: last.db_size,
        db_file_pages: shared.db_file_len() / crate::format::PAGE_SIZE as u64,
        checkpointed_frame_no: shared.checkpointed().0,
        recovery: Vec::new(),
        upstream: None,
    };
    registry::release(&shared, false);
    let upstream = upstream_info(manager.io().as_ref(), db_path, info.last_frame_no)?;
    Ok(LogInfo { upstream, ..info })
}

impl SegmentInfo {
    fn of(s: &crate::segment::Segment) -> SegmentInfo {
        SegmentInfo {
            path: s.path.clone(),
            start_frame_no: s.start_frame_no,
            last_frame_no: s.last_committed_frame_no(),
            frames: s.committed_frames(),
            frames_in_file: s.frames(),
            bytes: s.file_len(),
            sealed: s.is_sealed(),
            created_unix_ms: s.created_unix_ms,
        }
    }
}

/// Describes the log of `db_path` as it is on disk, changing nothing, ever: unlike
/// [`inspect`] it does not open (so recover) the log, start uploads or checkpoint. Every file
/// is opened for reading only and nothing is created (no log directory, no lock file, no
/// local store). The log is read with the recovery planner (as [`verify`] reads it): the
/// segments, last commit and sizes are what an open would find, and [`LogInfo::recovery`]
/// says what that open would change. The durability comes from the log's durable record and,
/// with storage on `manager`, from a listing of its namespace checked against this log's
/// history as the upload task checks it (no upload, no record written): the durable frame_no
/// is where the stored chain of this history ends, or unknown with the reason (storage
/// unreachable: `failures` and `last_error`; another history: `diverged`; anything else:
/// `notes`). Checkpoint errors and upload counts are per process, so 0 here.
///
/// While another process (or another connection of this one) holds the database,
/// `Error::InUse`: it reads a log only while nobody writes it, and the reader's lock (taken
/// on read-only handles of the database file and of the log's `lock`) keeps other opens out
/// meanwhile. A SQLite `-wal` file beside the database is `Error::CannotOpen` (an open folds
/// it in first, which writes).
pub fn inspect_read_only(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<LogInfo> {
    use crate::storage::durability;
    let db_path = db_path.as_ref();
    let io = manager.io().as_ref();
    let binding = manager.storage_binding(db_path)?;
    let db_file = io.open_read_only(db_path).map_err(Error::io(IoAction::Open, db_path))?;
    let log_dir = ownership::log_dir_of(db_path);
    // The database file's own lock first, as an owner takes it (it covers every name of
    // the file); then the log's.
    if !db_file.try_lock_exclusive().map_err(Error::io(IoAction::Lock, db_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir });
    }
    let _db_lock = ReadLock(db_file);
    let db_file = &_db_lock.0;
    if let Some(other) = ownership::log_under_another_name(db_path)? {
        return Err(ownership::other_name_error(db_path, &other));
    }
    let mark = ownership::read_db_header(db_file.as_ref(), db_path)?;
    let db_len = db_file.size().map_err(Error::io(IoAction::Read, db_path))?;
    let (plan, record) = match io.kind(&log_dir).map_err(Error::io(IoAction::Open, &log_dir))? {
        None => (None, None),
        Some(FileKind::File { .. }) => {
            return Err(Error::CannotOpen {
                path: db_path.into(),
                reason: format!(
                    "{} is SQLite's own -wal file: an open folds it into the database first; nothing was read",
                    log_dir.display()
                ),
            });
        }
        Some(FileKind::Dir) => {
            let _lock = lock_for_reading(io, db_path, &log_dir)?;
            let plan = crate::log::recovery::plan_recovery(io, &log_dir, mark, true)?;
            (Some(plan), durability::read_record_read_only(io, &log_dir)?)
        }
    };
    let kept = plan.as_ref().map(|p| p.kept.as_slice()).unwrap_or_default();
    let last = crate::log::recovery::last_commit(kept, mark, db_file.as_ref(), db_path)?;
    let checkpointed = match kept.first() {
        Some(oldest) => (oldest.start_frame_no - 1, oldest.prev_chain),
        None => (last.frame_no, mark.map_or(0, |m| m.chain)),
    };
    let segments = kept.iter().map(SegmentInfo::of).collect();
    let durability = match (&binding, record) {
        (None, None) => None,
        (None, Some(record)) => {
            let mut info = DurabilityInfo {
                durable_frame_no: record.as_ref().and_then(durability::recorded_frame_no),
                ..DurabilityInfo::default()
            };
            if record.is_none() {
                info.notes.push("the durable record is damaged: an open with storage rebuilds it".into());
            }
            Some(info)
        }
        (Some(binding), record) => {
            let mut info = DurabilityInfo {
                storage_url: Some(binding.storage.url().to_string()),
                namespace: Some(binding.namespace.clone()),
                ..DurabilityInfo::default()
            };
            let record = record.flatten();
            match record.as_ref().and_then(|r| durability::shipped_elsewhere(r, binding)) {
                Some(reason) => info.notes.push(format!("an open with this storage is refused: {reason}")),
                None => {
                    let plan_lineage = plan.as_ref().map_or(mark.map_or(0, |m| m.lineage), |p| p.lineage);
                    let chain_at = |frame_no: u64| crate::log::chain_at(checkpointed, kept, frame_no);
                    let local = durability::LocalHistory {
                        last: last.frame_no,
                        checkpointed: checkpointed.0,
                        lineage: plan_lineage,
                        chain_at: &chain_at,
                    };
                    let look = durability::look_up_read_only(binding, &local, checkpointed.0 == 0 && db_len == 0);
                    info.durable_frame_no = look.durable_frame_no;
                    info.diverged = look.diverged;
                    info.notes.extend(look.note);
                    if let Some(error) = look.error {
                        info.failures = 1;
                        info.last_error = Some(error);
                        // What an open would start from until storage answers.
                        info.durable_frame_no = record.as_ref().and_then(durability::recorded_frame_no);
                    }
                }
            }
            Some(info)
        }
    };
    let recovery = plan.as_ref().map(recovery_lines).unwrap_or_default();
    Ok(LogInfo {
        segments,
        last_frame_no: last.frame_no,
        db_pages: last.db_size,
        db_file_pages: db_len / crate::format::PAGE_SIZE as u64,
        checkpoint_errors: 0,
        last_checkpoint_error: None,
        durability,
        checkpointed_frame_no: checkpointed.0,
        recovery,
        upstream: upstream_info(io, db_path, last.frame_no)?,
    })
}

/// What an open's recovery would change, one line each (nothing when the log is clean).
fn recovery_lines(plan: &crate::log::recovery::RecoveryPlan) -> Vec<String> {
    let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut lines = Vec::new();
    for segment in &plan.covered {
        lines.push(format!("{}: already in the database file, removed at open", name(&segment.path)));
    }
    for (i, segment) in plan.kept.iter().enumerate() {
        let newest = i + 1 == plan.kept.len();
        if plan.seal.contains(&i) {
            lines.push(format!("{}: full, sealed at open", name(&segment.path)));
        }
        let (kept, len) = (crate::format::frame_offset(segment.committed_frames()), segment.file_len());
        if newest && !segment.is_sealed() && len > kept && !segment.zeros_after_commits() {
            lines.push(format!(
                "{}: {} bytes after the last commit frame (an unfinished transaction), cut at open",
                name(&segment.path),
                len - kept
            ));
        }
    }
    if let Some(reason) = &plan.cut_reason {
        lines.push(format!("the log ends early ({reason}): {} file(s) removed at open", plan.cut.len()));
    }
    lines
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

/// Checks a database and its log without changing anything, ever: every file is opened for
/// reading only. The log is read exactly as an open would recover it (the same planner,
/// `recovery::plan_recovery`): each segment's header, checksums, seal and index, the chain
/// between segments and from the database file's checkpoint mark, and what an open would
/// cut (reported as warnings) or refuse (errors). Then SQLite's `integrity_check` runs on a
/// scratch copy of what an open would show (database file plus the log's committed pages),
/// in the system's temporary directory, removed afterwards. While another connection holds
/// the log, verify refuses (`Error::InUse`): it reads a log only while nobody writes it.
pub fn verify(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<VerifyReport> {
    let db_path = db_path.as_ref();
    let io = manager.io().as_ref();
    let mut report = VerifyReport::default();
    let db_file = io.open_read_only(db_path).map_err(Error::io(IoAction::Open, db_path))?;
    // The database file's own lock first, as an owner takes it: it covers every name of the
    // file (a holder through a hard link too), and is held until verify is done.
    if !db_file.try_lock_exclusive().map_err(Error::io(IoAction::Lock, db_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir: ownership::log_dir_of(db_path) });
    }
    let db_lock = ReadLock(db_file);
    let db_len = db_lock.0.size().map_err(Error::io(IoAction::Read, db_path))?;
    let mark = match ownership::read_db_header(db_lock.0.as_ref(), db_path) {
        Ok(mark) => mark,
        Err(e) => {
            report.error(format!("database file: {e}"));
            return Ok(report);
        }
    };
    match mark {
        _ if db_len == 0 => report.ok("database file: empty (a new database)".into()),
        Some(m) => report.ok(format!(
            "database file: SQLite, 4096-byte pages, checkpointed up to frame_no {} ({} pages)",
            m.frame_no, m.db_pages
        )),
        None => report.warn("database file: the checkpoint mark is unreadable (torn or foreign)".into()),
    }
    if let Some(other) = ownership::log_under_another_name(db_path)? {
        report.error(ownership::other_name_error(db_path, &other).to_string());
        report.lines.push("integrity_check skipped: the file's log is under another name".into());
        return Ok(report);
    }
    let log_dir = ownership::log_dir_of(db_path);
    let plan = match io.kind(&log_dir).map_err(Error::io(IoAction::Open, &log_dir))? {
        None => {
            report.ok("no log: a plain SQLite database".into());
            None
        }
        Some(FileKind::File { len }) => {
            report.warn(format!("{} is SQLite's own -wal file ({len} bytes)", log_dir.display()));
            report.lines.push("integrity_check skipped: SQLite's own -wal file may hold commits".into());
            return Ok(report);
        }
        Some(FileKind::Dir) => {
            let _lock = lock_for_reading(io, db_path, &log_dir)?;
            // An open reads the durable record too, and refuses one it cannot read.
            if let Err(e) = crate::storage::durability::read_record_read_only(io, &log_dir) {
                report.error(format!("durable record: {e}"));
            }
            match crate::log::recovery::plan_recovery(io, &log_dir, mark, true) {
                Ok(plan) => {
                    report_plan(&plan, &mut report);
                    Some(plan)
                }
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => {
                    report.error(e.to_string());
                    report.lines.push("integrity_check skipped: the log is damaged".into());
                    return Ok(report);
                }
            }
        }
    };
    match scratch_integrity_check(db_path, plan.as_ref()) {
        Ok(Some(lines)) if lines == ["ok"] => report.ok("integrity_check: ok".into()),
        Ok(Some(lines)) => lines.into_iter().for_each(|line| report.error(format!("integrity_check: {line}"))),
        Ok(None) => report.warn(format!(
            "integrity_check skipped: its scratch copy of the database does not fit in {}",
            std::env::temp_dir().display()
        )),
        Err(e) => report.error(format!("integrity_check could not run: {e}")),
    }
    Ok(report)
}

/// Holds the log's lock (taken on a read-only handle) while verify reads it, so no process
/// of ours writes it meanwhile. `None` when the directory has no lock file (nobody ever
/// finished taking it).
fn lock_for_reading(io: &dyn crate::io::Io, db_path: &Path, log_dir: &Path) -> Result<Option<ReadLock>> {
    let lock_path = log_dir.join("lock");
    if io.kind(&lock_path).map_err(Error::io(IoAction::Open, &lock_path))?.is_none() {
        return Ok(None);
    }
    let file = io.open_read_only(&lock_path).map_err(Error::io(IoAction::Open, &lock_path))?;
    if !file.try_lock_exclusive().map_err(Error::io(IoAction::Lock, &lock_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir: log_dir.into() });
    }
    Ok(Some(ReadLock(file)))
}

struct ReadLock(Box<dyn crate::io::IoFile>);

impl Drop for ReadLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// One line per segment of the plan: what an open keeps, removes, cuts.
fn report_plan(plan: &crate::log::recovery::RecoveryPlan, report: &mut VerifyReport) {
    let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for segment in &plan.covered {
        report.ok(format!(
            "{}: frames {}..={}, already in the database file (removed at open)",
            name(&segment.path),
            segment.start_frame_no,
            segment.last_committed_frame_no()
        ));
    }
    for (i, segment) in plan.kept.iter().enumerate() {
        let state = match (segment.is_sealed(), plan.seal.contains(&i)) {
            (true, _) => "sealed",
            (false, true) => "full, not sealed yet (sealed at open)",
            (false, false) => "current",
        };
        report.ok(format!(
            "{}: {state}, frames {}..={} ({} frames), checksums ok",
            name(&segment.path),
            segment.start_frame_no,
            segment.last_committed_frame_no(),
            segment.committed_frames()
        ));
        if segment.index_rebuilt {
            report.warn(format!("{}: damaged index (rebuilt from the frames at open)", name(&segment.path)));
        }
        let (kept, len) = (crate::format::frame_offset(segment.committed_frames()), segment.file_len());
        if !segment.is_sealed() && len > kept && !segment.zeros_after_commits() {
            report.warn(format!(
                "{}: {} bytes after the last commit frame (a torn or unfinished transaction, cut at open)",
                name(&segment.path),
                len - kept
            ));
        }
    }
    if let Some(reason) = &plan.cut_reason {
        report.warn(format!(
            "the log ends early: {reason}; {} file(s) from there on hold no promised commit and are removed at open",
            plan.cut.len()
        ));
    }
    if plan.kept.is_empty() && plan.covered.is_empty() && plan.cut.is_empty() {
        report.ok("log directory: no segment".into());
    }
}

/// Runs `integrity_check` on a private copy of what an open would show: the database file,
/// then the newest committed version of every page the log holds, cut to the last commit's
/// size. Nothing of the database or its log is opened for writing. The copy is a file in the
/// temporary directory, unlinked as soon as SQLite has it open (so only a kill during the
/// copy itself can leave it behind); `None` when the temporary directory has no room for it.
fn scratch_integrity_check(
    db_path: &Path,
    plan: Option<&crate::log::recovery::RecoveryPlan>,
) -> Result<Option<Vec<String>>> {
    use std::os::unix::fs::FileExt;
    let page_size = crate::format::PAGE_SIZE as u64;
    let kept = plan.map(|p| p.kept.as_slice()).unwrap_or_default();
    let db_len = std::fs::metadata(db_path).map_err(Error::io(IoAction::Read, db_path))?.len();
    let log_pages: u64 = kept.iter().map(|s| s.latest_pages().len() as u64).sum();
    let size = match kept.iter().rev().find(|s| s.committed_frames() > 0) {
        Some(newest) => newest.committed_size_after() as u64 * page_size,
        None => db_len,
    };
    if size.max(db_len).saturating_add(log_pages * page_size) > free_temp_space()? {
        return Ok(None);
    }
    let (path, mut copy) = scratch_file()?;
    let _remove = RemoveOnDrop(&path);
    let mut source = std::fs::File::open(db_path).map_err(Error::io(IoAction::Open, db_path))?;
    std::io::copy(&mut (&mut source).take(size), &mut copy).map_err(Error::io(IoAction::Copy, db_path))?;
    let mut page = vec![0u8; crate::format::PAGE_SIZE];
    for segment in kept {
        for (page_no, position) in segment.latest_pages() {
            segment.read_page(position, &mut page)?;
            copy.write_all_at(&page, (page_no as u64 - 1) * page_size)
                .map_err(Error::io(IoAction::Write, "scratch copy"))?;
        }
    }
    copy.set_len(size).map_err(Error::io(IoAction::Truncate, "scratch copy"))?;
    drop(copy);
    // immutable: SQLite reads the file as it is, with no journal, WAL or lock files of its own.
    let mut uri = b"file:".to_vec();
    uri.extend(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()));
    uri.extend_from_slice(b"?immutable=1");
    let uri =
        String::from_utf8(uri).map_err(|_| Error::CannotOpen { path: path.clone(), reason: "not UTF-8".into() })?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = libsql_sys::rusqlite::Connection::open_with_flags(&uri, flags)?;
    // SQLite holds the file open now: its name can go.
    let _ = std::fs::remove_file(&path);
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
    Ok(Some(lines))
}

/// Removes a scratch file however verify returns.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// A new file of ours in the temporary directory.
fn scratch_file() -> Result<(PathBuf, std::fs::File)> {
    loop {
        let name = format!("libsql-wal-verify-{}-{:08x}.db", std::process::id(), fastrand::u32(..));
        let path = std::env::temp_dir().join(name);
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(IoAction::Create, &path)(e)),
        }
    }
}

/// Bytes free for us in the temporary directory.
fn free_temp_space() -> Result<u64> {
    let dir = std::env::temp_dir();
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).map_err(|_| {
        Error::CannotOpen { path: dir.clone(), reason: "a NUL in the temporary directory's path".into() }
    })?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `path` is a NUL-terminated string
    // that outlives the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(Error::io(IoAction::Read, dir)(std::io::Error::last_os_error()));
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Where the log of `db_path` is: its last commit's frame_no, lineage and chain value (a
/// replica resumes from its own).
pub fn log_position(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<Position> {
    let shared = acquire(manager, db_path.as_ref())?;
    let position = shared.position();
    registry::release(&shared, false);
    position
}

/// The position of the commit `frame_no` in the history of `db_path`, if its log can still
/// tell that commit's chain value: `None` past the last commit, or for a frame checkpointed
/// out of the log (only the checkpointed frame itself is then known). A puller that holds
/// an image of the database at that commit continues from it with [`Follower::frames_after`].
pub fn position_at(db_path: impl AsRef<Path>, manager: &LibsqlWalManager, frame_no: u64) -> Result<Option<Position>> {
    let shared = acquire(manager, db_path.as_ref())?;
    let position = shared.position_at(frame_no);
    registry::release(&shared, false);
    position
}

/// Registers a replica streaming the log of `db_path` from `frame_no` (its position): while
/// the [`Follower`] lives, checkpoints keep the frames after what it was last sent.
pub fn follow(db_path: impl AsRef<Path>, manager: &LibsqlWalManager, frame_no: u64) -> Result<Follower> {
    let shared = acquire(manager, db_path.as_ref())?;
    let id = shared.register_follower(frame_no);
    Ok(Follower { shared, id })
}

/// A replica streaming a primary's log (see [`follow`]); unregistered when dropped.
pub struct Follower {
    shared: std::sync::Arc<crate::log::SharedWal>,
    id: u64,
}

impl Follower {
    /// The replica was sent everything up to `frame_no`: older frames may go.
    pub fn advance(&self, frame_no: u64) {
        self.shared.advance_follower(self.id, frame_no);
    }

    /// Committed frames after `from`, whole transactions, about `max_bytes` of them.
    pub fn frames_after(&self, from: Position, max_bytes: usize) -> Result<FramesAfter> {
        self.shared.frames_after(from, max_bytes)
    }

    /// The position of the commit `frame_no`, if the log can still tell it (see
    /// [`position_at`]).
    pub fn position_at(&self, frame_no: u64) -> Result<Option<Position>> {
        self.shared.position_at(frame_no)
    }

    /// Where the log is: its last commit.
    pub fn position(&self) -> Result<Position> {
        self.shared.position()
    }

    /// Changes whenever a transaction commits (to the commit's frame_no). Closed when the
    /// log is, so a waiter never waits on a log no longer written.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.commits()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shared.unregister_follower(self.id);
        registry::release(&self.shared, false);
    }
}

/// Streams a consistent image of `db_path` at its last commit to `sink` (page 1 carrying
/// that commit's checkpoint mark): the file a replica starts from. `None` when the
/// database has no page yet.
pub fn export_image(
    db_path: impl AsRef<Path>,
    manager: &LibsqlWalManager,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Position>> {
    let shared = acquire(manager, db_path.as_ref())?;
    let result = shared.export_image(sink);
    registry::release(&shared, false);
    result
}

/// Puts the image at `image` (from [`export_image`], complete and synced by the caller) in
/// place as the database `db_path`, a replica of the image's primary, which must not exist
/// (nor its log): stamped for its mark, so that its first open continues the primary's
/// history rather than taking it for a file changed outside, with its upstream record
/// naming the image's position. The rename is synced.
pub fn install_image(
    image: impl AsRef<Path>,
    db_path: impl AsRef<Path>,
    manager: &LibsqlWalManager,
) -> Result<Position> {
    let (image, db_path) = (image.as_ref(), db_path.as_ref());
    let io = manager.io();
    let log_dir = ownership::log_dir_of(db_path);
    for path in [db_path, log_dir.as_path()] {
        if io.kind(path).map_err(Error::io(IoAction::Read, path))?.is_some() {
            return Err(Error::CannotOpen {
                path: db_path.into(),
                reason: format!("{} exists already", path.display()),
            });
        }
    }
    let (mark, _) = image_mark(io.as_ref(), image)?;
    let position = Position { lineage: mark.lineage, frame_no: mark.frame_no, chain: mark.chain };
    // No file there yet: the record may come first, so the file is never there without it.
    crate::upstream::Upstream::create_fresh(io.as_ref(), db_path, position)?;
    put_image_in_place(io.as_ref(), image, db_path)?;
    Ok(position)
}

/// Replaces the replica `db_path` (its file, its log, its upstream record) with the image at
/// `image` (from [`export_image`], complete and synced by the caller): the replica's own
/// history is dropped whole and it continues the image's. For a replica whose primary no
/// longer serves its position (another history, frames checkpointed away).
///
/// No connection sees a mix: the swap runs with the log closed and every open in the
/// process waiting (the registry's lock), and is refused with [`Error::LogInUse`], changing
/// nothing, while a connection or a follower holds the log (close them, then call again).
/// Crash-safe in this order: the upstream record goes first (a replica without one starts
/// again from an image), then the log is moved aside (the file alone is the state of its
/// last checkpoint), then the image is renamed over the file, then the new record written.
pub fn replace_with_image(
    image: impl AsRef<Path>,
    db_path: impl AsRef<Path>,
    manager: &LibsqlWalManager,
) -> Result<Position> {
    let (image, db_path) = (image.as_ref(), db_path.as_ref());
    let io = manager.io().as_ref();
    let (mark, _) = image_mark(io, image)?;
    let position = Position { lineage: mark.lineage, frame_no: mark.frame_no, chain: mark.chain };
    let aside = replaced_log_dir(db_path);
    let marker = replacing_marker(db_path);
    let kind = |path: &Path| io.kind(path).map_err(Error::io(IoAction::Read, path));
    // A database of its own (never a replica: no upstream record, no replacement of ours
    // cut short) is never replaced: that would destroy it.
    if kind(db_path)?.is_some() && kind(&crate::upstream::record_path(db_path))?.is_none() && kind(&marker)?.is_none() {
        return Err(Error::CannotOpen {
            path: db_path.into(),
            reason: "it is not a replica (no upstream record): a database of its own is never replaced by an \
                     image (move it away to make this a replica)"
                .into(),
        });
    }
    drop(io.open(&marker, true).map_err(Error::io(IoAction::Create, &marker))?);
    sync_parent(io, db_path)?;
    registry::with_log_closed(io, db_path, || {
        crate::upstream::remove(io, db_path)?;
        remove_log_dir(io, &aside)?;
        let log_dir = ownership::log_dir_of(db_path);
        if io.kind(&log_dir).map_err(Error::io(IoAction::Read, &log_dir))?.is_some() {
            std::fs::rename(&log_dir, &aside).map_err(Error::io(IoAction::Rename, &log_dir))?;
            sync_parent(io, db_path)?;
        }
        put_image_in_place(io, image, db_path)?;
        crate::upstream::Upstream::create_fresh(io, db_path, position)
    })?;
    if let Err(e) = remove_log_dir(io, &aside) {
        tracing::warn!(db = %db_path.display(), "the replaced log stays at {}: {e}", aside.display());
    }
    // The new record is in place: the marker has done its work (a stale one only lets a
    // replica be replaced again, which a replica may be).
    if let Err(e) = io.remove_file(&marker) {
        tracing::warn!(db = %db_path.display(), "{} stays: {e}", marker.display());
    }
    Ok(position)
}

/// Present while [`replace_with_image`] runs: a database found without an upstream record
/// but with it was a replica whose replacement a crash cut short (replaced again safely).
fn replacing_marker(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-replacing");
    PathBuf::from(name)
}

/// Where [`replace_with_image`] moves a replaced log before removing it.
fn replaced_log_dir(db_path: &Path) -> PathBuf {
    let mut name = ownership::log_dir_of(db_path).into_os_string();
    name.push(".replaced");
    PathBuf::from(name)
}

/// Removes a log directory (its files, then itself), if there is one.
fn remove_log_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    if io.kind(dir).map_err(Error::io(IoAction::Read, dir))?.is_none() {
        return Ok(());
    }
    for file in io.list_dir(dir).map_err(Error::io(IoAction::Read, dir))? {
        io.remove_file(&file).map_err(Error::io(IoAction::Remove, &file))?;
    }
    io.remove_dir(dir).map_err(Error::io(IoAction::Remove, dir))
}

/// The checkpoint mark of an exported image, which must be whole (its length the mark's
/// pages) and name a lineage.
/// Returns it with its bytes as the image holds them (what the file's stamp is made of).
fn image_mark(io: &dyn Io, image: &Path) -> Result<(crate::format::CheckpointMark, [u8; DB_HEADER_MARK_SIZE])> {
    let file = io.open(image, false).map_err(Error::io(IoAction::Open, image))?;
    let mut mark_bytes = [0u8; DB_HEADER_MARK_SIZE];
    file.read_exact_at(&mut mark_bytes, crate::format::DB_HEADER_MARK_OFFSET)
        .map_err(Error::io(IoAction::Read, image))?;
    let mark = crate::format::CheckpointMark::decode(&mark_bytes)
        .filter(|m| m.lineage != 0)
        .ok_or_else(|| Error::corrupt(image, "the image carries no checkpoint mark: not an exported image"))?;
    let len = file.size().map_err(Error::io(IoAction::Read, image))?;
    if len != mark.db_pages as u64 * crate::format::PAGE_SIZE as u64 {
        let reason = format!("{len} bytes, but its mark says {} pages: cut short", mark.db_pages);
        return Err(Error::corrupt(image, reason));
    }
    Ok((mark, mark_bytes))
}

/// Stamps the image for its mark (its first open continues the primary's history rather
/// than taking it for a file changed outside) and renames it to `db_path`, synced.
fn put_image_in_place(io: &dyn Io, image: &Path, db_path: &Path) -> Result<()> {
    let (_, mark_bytes) = image_mark(io, image)?;
    crate::file_stamp::stamp(io, image, &mark_bytes, 0).map_err(Error::io(IoAction::SetTime, image))?;
    std::fs::rename(image, db_path).map_err(Error::io(IoAction::Rename, image))?;
    sync_parent(io, db_path)
}

fn sync_parent(io: &dyn Io, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))
}

/// The upstream record of the replica `db_path`, which must have one.
fn upstream_of(manager: &LibsqlWalManager, db_path: &Path) -> Result<crate::upstream::Upstream> {
    crate::upstream::Upstream::open(manager.io().as_ref(), db_path, false)?.ok_or_else(|| Error::Diverged {
        path: db_path.into(),
        reason: "it has no upstream record: it is not a replica (start one with install_image)".into(),
    })
}

/// Where the replica `db_path` is in its primary's history (what to ask the primary for).
pub fn replica_position(db_path: impl AsRef<Path>, manager: &LibsqlWalManager) -> Result<Position> {
    let db_path = db_path.as_ref();
    let upstream = upstream_of(manager, db_path)?;
    let shared = acquire(manager, db_path)?;
    let position = shared.upstream_position(&upstream);
    registry::release(&shared, false);
    position
}

/// Applies a primary's frames to the replica `db_path` (see [`Follower::frames_after`]):
/// whole transactions, each published once synced, its position recorded first. Returns
/// where the replica is then in its primary's history.
pub fn apply_frames(db_path: impl AsRef<Path>, manager: &LibsqlWalManager, frames: &[u8]) -> Result<Position> {
    let db_path = db_path.as_ref();
    let mut upstream = upstream_of(manager, db_path)?;
    let shared = acquire(manager, db_path)?;
    let position = shared.apply_frames(&mut upstream, frames);
    registry::release(&shared, false);
    position
}
